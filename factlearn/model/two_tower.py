"""The two-tower fact model: images and facts in one slot-structured space."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ModelConfig
from ..data.images import pil_to_array, to_model_input
from ..facts import Fact
from .towers import ImageTower, build_language_tower
from .vocab import Vocabulary


def normalize_slots(emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, d) raw -> (N, 3*d): each slot scaled to unit length, missing slots zero.

    The cosine of two such vectors weighs every present slot equally; a fact with wildcards only
    competes on the slots it names.
    """
    out = F.normalize(emb, dim=-1, eps=1e-8)
    if mask is not None:
        out = out * mask.unsqueeze(-1)
    return out.flatten(1)


class FactModel(nn.Module):
    """Image tower + language tower. ``embed_*`` return raw (N, 3, d) tensors with gradients (for
    training and importance); ``encode_*`` return normalised float32 vectors for retrieval."""

    def __init__(self, cfg: ModelConfig, vocab: Vocabulary, from_checkpoint: bool = False):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.image_tower = ImageTower(cfg, from_checkpoint)
        self.language_tower = build_language_tower(cfg, vocab, from_checkpoint)

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        """Width of an encoded (normalised, flattened) embedding: 3 slots of ``slot_dim``."""
        return 3 * self.cfg.slot_dim

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, H, W) -> raw slot embeddings (B, 3, d)."""
        return self.image_tower(pixels)

    def embed_facts(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (F, 3, L), slot mask (F, 3) -> raw slot embeddings (F, 3, d)."""
        return self.language_tower(tokens, mask)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor | Sequence[Image.Image], batch_size: int = 256) -> torch.Tensor:
        """uint8 tensors (B, 3, H, W) at the model's size, or PIL images -> (B, 3*d) float32 on CPU."""
        if not isinstance(images, torch.Tensor):
            # the file loader's conversion (alpha, pixel cap): a PIL image embeds as its file does
            images = torch.stack([torch.from_numpy(pil_to_array(im, self.cfg.image_size)).permute(2, 0, 1)
                                  for im in images]) if len(images) else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start : start + batch_size].to(self.device))
            out.append(normalize_slots(self.embed_images(x)).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, self.dim))

    @torch.no_grad()
    def encode_facts(self, facts: Sequence[Fact]) -> torch.Tensor:
        """Facts -> (F, 3*d) float32 on CPU; unknown words map to the shared unknown-word vector."""
        was_training = self.training
        self.eval()
        tokens, mask = self.vocab.encode(facts)
        emb = self.embed_facts(tokens.to(self.device), mask.to(self.device))
        self.train(was_training)
        return normalize_slots(emb, mask.to(self.device)).float().cpu()



def create_model(cfg: ModelConfig, vocab: Vocabulary, from_checkpoint: bool = False) -> FactModel:
    """The one way models get built.

    ``from_checkpoint=True`` when a checkpoint's weights are loaded next: data the checkpoint holds
    (the ``vectors`` tower's word-vector table, a ``pretrained`` backbone's weights) is then not
    read from its file; the backbone is built from ``cfg.backbone_config``.
    """
    return FactModel(cfg, vocab, from_checkpoint)
