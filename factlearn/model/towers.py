"""The two towers. Both return raw slot-structured embeddings of shape (N, 3, slot_dim).

Raw (unnormalised) outputs matter: MAS measures importance from the squared norm of the embedding
output, which is constant after normalisation. Retrieval and the losses use
:func:`factlearn.model.two_tower.normalize_slots` on top of these.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """A transformers vision backbone from its config (random init) or a local pretrained folder.

    Returns the module and its output channel count. No network access: ``pretrained`` must be a
    local directory saved with ``save_pretrained`` (safetensors weights; nothing is unpickled).
    """
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    if cfg.backbone == "resnet":
        config_cls, model_cls, extra = ResNetConfig, ResNetModel, {"layer_type": "basic"}
    else:
        config_cls, model_cls = ViTConfig, ViTModel
        extra = {"image_size": cfg.image_size, "add_pooling_layer": False}
    add_pooling = extra.pop("add_pooling_layer", None)
    kwargs = {} if add_pooling is None else {"add_pooling_layer": add_pooling}
    if cfg.pretrained:
        try:
            # safetensors only: a pytorch_model.bin would be unpickled
            backbone = model_cls.from_pretrained(cfg.pretrained, local_files_only=True, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise UserError(f"model.pretrained: cannot load a {cfg.backbone} backbone from {cfg.pretrained}: {exc}") from None
    else:
        try:
            config = config_cls(**{**extra, **cfg.backbone_config})
        except (TypeError, ValueError) as exc:
            raise UserError(f"config model.backbone_config: {exc}") from None
        backbone = model_cls(config, **kwargs)
    channels = backbone.config.hidden_sizes[-1] if cfg.backbone == "resnet" else backbone.config.hidden_size
    return backbone, channels


class ImageTower(nn.Module):
    """Backbone trunk + two branches, as in Sherlock: one for S, one shared by P and O.

    The S branch pools globally (what the main object is); the P,O branch pools to a small grid
    first so that layout (left of / above) survives into the predicate and object slots.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.backbone
        self.backbone, channels = build_backbone(cfg)
        hidden, d, g = cfg.text_hidden, cfg.slot_dim, cfg.po_grid
        self.s_branch = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.po_pool = nn.AdaptiveAvgPool2d(g)
        self.po_trunk = nn.Sequential(nn.Linear(channels * g * g, hidden), nn.ReLU())
        self.p_head = nn.Linear(hidden, d)
        self.o_head = nn.Linear(hidden, d)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        out = self.backbone(pixel_values=pixels).last_hidden_state
        if self.kind == "vit":  # (B, 1 + h*w, C): drop CLS, lay the patch tokens back on their grid
            tokens = out[:, 1:]
            side = int(tokens.shape[1] ** 0.5)
            out = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        return out

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        fmap = self.feature_map(pixels)  # (B, C, h, w)
        s = self.s_branch(fmap.mean(dim=(2, 3)))  # (B, d)
        po = self.po_trunk(self.po_pool(fmap).flatten(1))  # (B, hidden)
        return torch.stack([s, self.p_head(po), self.o_head(po)], dim=1)  # (B, 3, d)


class LanguageTower(nn.Module):
    """Per-slot phrase encoder: mean of word vectors, then one MLP per slot (S, P, O).

    Word vectors are shared between slots (a word means the same thing everywhere); the slot MLPs
    place the phrase in its slot's part of the space. A missing slot gives a zero vector.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)
        self.slots = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.word_dim, cfg.text_hidden), nn.ReLU(), nn.Linear(cfg.text_hidden, cfg.slot_dim))
            for _ in range(3)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (F, 3, L) long, mask (F, 3) -> (F, 3, d), zero where mask is 0."""
        if tokens.dim() != 3 or tokens.shape[1] != 3:
            raise ValueError(f"expected tokens of shape (F, 3, L), got {tuple(tokens.shape)}")
        present = (tokens != 0).float()  # (F, 3, L)
        vectors = self.words(tokens)  # (F, 3, L, w)
        phrase = (vectors * present.unsqueeze(-1)).sum(2) / present.sum(2, keepdim=True).clamp(min=1.0)  # (F, 3, w)
        out = torch.stack([mlp(phrase[:, s]) for s, mlp in enumerate(self.slots)], dim=1)  # (F, 3, d)
        return out * mask.unsqueeze(-1)
