"""The two towers. Both return raw slot-structured embeddings of shape (N, 3, slot_dim).

Raw (unnormalised) outputs matter: MAS measures importance from the squared norm of the embedding
output, which is constant after normalisation. Retrieval and the losses use
:func:`factlearn.model.two_tower.normalize_slots` on top of these.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .vocab import Vocabulary

logger = logging.getLogger(__name__)


def _family(kind: str) -> tuple[type, type, dict, dict]:
    """(config class, model class, config defaults factlearn sets, model keyword arguments) of a
    backbone family."""
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    if kind == "resnet":
        return ResNetConfig, ResNetModel, {"layer_type": "basic"}, {}
    return ViTConfig, ViTModel, {}, {"add_pooling_layer": False}


def pretrained_architecture(cfg: ModelConfig) -> dict:
    """The architecture of the backbone in ``cfg.pretrained``: the keys of its config.json that its
    transformers config class defines (ResNetConfig: embedding_size, hidden_sizes, depths, ...).

    Every key ``cfg.backbone_config`` gives (and ``image_size`` for a ViT) must agree with the
    folder's. A folder that is not a pretrained backbone of ``cfg.backbone``'s family, or one that
    disagrees with the config, is a one-line UserError naming it.
    """
    from transformers import PretrainedConfig

    folder, (config_cls, *_) = Path(cfg.pretrained), _family(cfg.backbone)
    where = f"model.pretrained: {folder}"
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{where} is not a pretrained image tower (no config.json; `factlearn pretrain` "
                        "writes one)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: its config.json is unreadable: {exc}") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind != cfg.backbone:
        raise UserError(f"{where} holds a {kind!r} backbone, but model.backbone is {cfg.backbone!r}")
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{where} has no safetensors weights (model.safetensors)")
    own = set(inspect.signature(config_cls.__init__).parameters) - set(
        inspect.signature(PretrainedConfig.__init__).parameters) - {"kwargs"}
    arch = {k: data[k] for k in sorted(own) if k in data}
    given = {**({"image_size": cfg.image_size} if cfg.backbone == "vit" else {}), **cfg.backbone_config}
    for key, value in given.items():
        if key in arch and json.loads(json.dumps(value)) != arch[key]:  # tuples compare as JSON lists
            name = "model.image_size" if key == "image_size" and key not in cfg.backbone_config \
                else f"model.backbone_config.{key}"
            raise UserError(f"{where}: its backbone has {key} {arch[key]!r}, but {name} is {value!r}; "
                            "use the model section it was pretrained with")
    return arch


def resolve_pretrained(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``backbone_config`` completed from the ``pretrained`` folder's architecture
    (checked by :func:`pretrained_architecture`), so that a run's config.yaml records what its
    checkpoints need and ``create_model(..., from_checkpoint=True)`` builds the backbone without the
    folder. Without ``pretrained``: ``cfg`` itself."""
    if not cfg.pretrained:
        return cfg
    return dataclasses.replace(cfg, backbone_config={**cfg.backbone_config, **pretrained_architecture(cfg)})


# The sizes and counts of a backbone's config (ResNetConfig, ViTConfig): whole numbers >= 1.
_SIZES = {"resnet": ("embedding_size", "num_channels"),
          "vit": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                  "num_channels", "encoder_stride")}
_SIZE_LISTS = {"resnet": ("hidden_sizes", "depths"), "vit": ()}


def check_backbone_config(cfg: ModelConfig) -> None:
    """Check ``model.backbone_config`` (over its family's defaults) before a backbone is built from
    it: sizes and counts are whole numbers >= 1, a ResNet has as many ``hidden_sizes`` as
    ``depths``, a ViT's ``hidden_size`` divides into its heads, and the images have 3 channels.
    Otherwise a one-line UserError names the key (transformers would fail later, at the first
    step, or with a traceback)."""
    config_cls, _, extra, _ = _family(cfg.backbone)
    defaults = config_cls(**extra)
    keys = _SIZES[cfg.backbone] + _SIZE_LISTS[cfg.backbone]
    values = {**{k: getattr(defaults, k) for k in keys}, **cfg.backbone_config}
    where = "config model.backbone_config"

    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for key in _SIZES[cfg.backbone]:
        if not whole(values[key]):
            raise UserError(f"{where}.{key}: expected a whole number >= 1, got {values[key]!r}")
    for key in _SIZE_LISTS[cfg.backbone]:
        value = values[key]
        if not (isinstance(value, (list, tuple)) and value and all(whole(v) for v in value)):
            raise UserError(f"{where}.{key}: expected a list of whole numbers >= 1, got {value!r}")
    if cfg.backbone == "resnet" and len(values["hidden_sizes"]) != len(values["depths"]):
        raise UserError(f"{where}: hidden_sizes has {len(values['hidden_sizes'])} stages but depths has "
                        f"{len(values['depths'])}; give one size and one depth per stage")
    if cfg.backbone == "vit" and values["hidden_size"] % values["num_attention_heads"]:
        raise UserError(f"{where}: hidden_size {values['hidden_size']} is not a multiple of num_attention_heads "
                        f"{values['num_attention_heads']}")
    if values["num_channels"] != 3:
        raise UserError(f"{where}.num_channels: images have 3 channels (RGB), got {values['num_channels']}")


def build_backbone(cfg: ModelConfig, from_checkpoint: bool = False) -> tuple[nn.Module, int]:
    """A transformers vision backbone from its config (random init) or a local pretrained folder.

    Returns the module and its output channel count. No network access: ``pretrained`` must be a
    local directory saved with ``save_pretrained`` (safetensors weights; nothing is unpickled).
    ``from_checkpoint``: weights are loaded next, so the backbone is built from ``backbone_config``
    (a run records the pretrained folder's architecture there: :func:`resolve_pretrained`) and the
    folder is not read: a run loads after it is gone.
    """
    config_cls, model_cls, extra, kwargs = _family(cfg.backbone)
    if cfg.backbone == "vit":
        extra = {**extra, "image_size": cfg.image_size}
    if cfg.pretrained and not from_checkpoint:
        pretrained_architecture(cfg)  # the folder is a backbone of this family, and agrees with the config
        try:
            # safetensors only: a pytorch_model.bin would be unpickled
            backbone = model_cls.from_pretrained(cfg.pretrained, local_files_only=True, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"model.pretrained: cannot load a {cfg.backbone} backbone from {cfg.pretrained}: "
                            f"{first}") from None
    else:
        check_backbone_config(cfg)
        try:
            from huggingface_hub.errors import StrictDataclassError  # transformers 5 checks its configs' types
        except ImportError:
            StrictDataclassError = ValueError
        try:
            config = config_cls(**{**extra, **cfg.backbone_config})
        except (TypeError, ValueError, StrictDataclassError) as exc:
            first = " ".join(str(exc).split())
            raise UserError(f"config model.backbone_config: {first}") from None
        backbone = model_cls(config, **kwargs)
    channels = backbone.config.hidden_sizes[-1] if cfg.backbone == "resnet" else backbone.config.hidden_size
    return backbone, channels


def freeze_stages(backbone: nn.Module, kind: str, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first ``stages`` stages of a backbone (``model.freeze_stages``).

    ResNet: ``embedder`` + ``encoder.stages[:N]``; ViT: ``embeddings`` + ``layers[:N]`` (transformers 5 names).
    Returns the frozen modules (none when ``stages`` is 0).
    """
    if stages == 0:
        return []
    blocks = backbone.encoder.stages if kind == "resnet" else backbone.layers
    if stages > len(blocks):
        raise UserError(f"config model.freeze_stages: {stages} is more than the {len(blocks)} stages of the backbone")
    stem = backbone.embedder if kind == "resnet" else backbone.embeddings
    frozen = [stem, *blocks[:stages]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


class ImageTower(nn.Module):
    """Backbone trunk + two branches, as in Sherlock: one for S, one shared by P and O.

    The S branch pools globally (what the main object is); the P,O branch pools to a small grid
    first so that layout (left of / above) survives into the predicate and object slots.
    """

    def __init__(self, cfg: ModelConfig, from_checkpoint: bool = False):
        super().__init__()
        self.kind = cfg.backbone
        self.backbone, channels = build_backbone(cfg, from_checkpoint)
        self.frozen = freeze_stages(self.backbone, cfg.backbone, cfg.freeze_stages)
        hidden, d, g = cfg.text_hidden, cfg.slot_dim, cfg.po_grid
        self.s_branch = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.po_pool = nn.AdaptiveAvgPool2d(g)
        self.po_trunk = nn.Sequential(nn.Linear(channels * g * g, hidden), nn.ReLU())
        self.p_head = nn.Linear(hidden, d)
        self.o_head = nn.Linear(hidden, d)

    def train(self, mode: bool = True) -> "ImageTower":
        """Set the mode; frozen stages stay in eval mode."""
        # Frozen stages stay in eval mode: requires_grad=False alone would still let their
        # batch-norm running statistics drift with every training batch.
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        out = self.backbone(pixel_values=pixels).last_hidden_state
        if self.kind == "vit":  # (B, 1 + h*w, C): drop CLS, lay the patch tokens back on their grid
            tokens = out[:, 1:]
            side = int(tokens.shape[1] ** 0.5)
            out = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        return out

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> raw slot embeddings (B, 3, d): S from pooled features, P and O from the grid."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        fmap = self.feature_map(pixels)  # (B, C, h, w)
        s = self.s_branch(fmap.mean(dim=(2, 3)))  # (B, d)
        po = self.po_trunk(self.po_pool(fmap).flatten(1))  # (B, hidden)
        return torch.stack([s, self.p_head(po), self.o_head(po)], dim=1)  # (B, 3, d)


def _check_tokens(tokens: torch.Tensor) -> None:
    if tokens.dim() != 3 or tokens.shape[1] != 3:
        raise ValueError(f"expected tokens of shape (F, 3, L), got {tuple(tokens.shape)}")


def _mean_words(vectors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Word vectors (F, 3, L, w), present (F, 3, L) float -> phrase vectors (F, 3, w); 0 if none."""
    return (vectors * present.unsqueeze(-1)).sum(2) / present.sum(2, keepdim=True).clamp(min=1.0)


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
        _check_tokens(tokens)
        phrase = _mean_words(self.words(tokens), (tokens != 0).float())  # (F, 3, w)
        out = torch.stack([mlp(phrase[:, s]) for s, mlp in enumerate(self.slots)], dim=1)  # (F, 3, d)
        return out * mask.unsqueeze(-1)


class BertLanguageTower(nn.Module):
    """Each slot's phrase through a BertModel ([CLS] words [SEP]), pooled, then one linear head per slot.

    It takes the same (tokens, mask) as :class:`LanguageTower`. Without ``text_pretrained`` the
    vocabulary ids ARE the word-level token ids (0 pad, 1 unknown, then the run's words) and
    [CLS], [SEP] get the two ids after them. With a pretrained directory, its tokenizer splits
    every vocabulary word into word pieces once, at build time (buffer ``pieces``, (V, K)); a
    phrase is then the concatenation of its words' pieces. The F*3 phrases go through BERT as
    one batch, missing slots included ([CLS][SEP]): no data-dependent shapes, so torch.func
    (per-sample gradients for MAS/EWC) works; their outputs are zeroed by the mask.
    """

    def __init__(self, cfg: ModelConfig, vocab: Vocabulary):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.pooling = cfg.text_pooling
        if cfg.text_pretrained:
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(cfg.text_pretrained, local_files_only=True)
                self.bert = BertModel.from_pretrained(cfg.text_pretrained, local_files_only=True,
                                                      use_safetensors=True, add_pooling_layer=False)
            except (OSError, ValueError) as exc:
                raise UserError(f"model.text_pretrained: cannot load a BERT model and tokenizer from "
                                f"{cfg.text_pretrained}: {exc}") from None
            ids = [[tokenizer.pad_token_id], [tokenizer.unk_token_id]]
            ids += [tokenizer(w, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id] for w in vocab.words[2:]]
            cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        else:
            n = len(vocab)
            try:
                config = BertConfig(**{**cfg.text_config, "vocab_size": n + 2, "pad_token_id": 0})
            except (TypeError, ValueError) as exc:
                raise UserError(f"config model.text_config: {exc}") from None
            self.bert = BertModel(config, add_pooling_layer=False)
            ids = [[i] for i in range(n)]
            cls_id, sep_id, pad_id = n, n + 1, 0
        width = max(len(p) for p in ids)
        pieces = torch.full((len(ids), width), -1, dtype=torch.long)  # -1 = no piece
        for i, p in enumerate(ids):
            pieces[i, : len(p)] = torch.tensor(p)
        pieces[0] = -1  # padding words have no pieces
        self.register_buffer("pieces", pieces, persistent=False)  # derived from vocab + tokenizer
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        hidden = self.bert.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, cfg.slot_dim) for _ in range(3))

    def phrase_inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocabulary ids (N, L) -> BERT input ids and attention mask, both (N, L*K + 2)."""
        pieces = self.pieces[tokens].flatten(1)  # (N, L*K), -1 where no piece
        valid = pieces >= 0
        # move the valid pieces to the front, keeping their order (stable sort on "is padding")
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        pieces, valid = pieces.gather(1, order), valid.gather(1, order)
        n = pieces.shape[0]
        ids = torch.cat([torch.full((n, 1), self.cls_id, device=pieces.device),
                         torch.where(valid, pieces, self.pad_id),
                         torch.full((n, 1), self.pad_id, device=pieces.device)], dim=1)  # (N, L*K + 2)
        attention = torch.cat([torch.ones_like(valid[:, :1]), valid, torch.zeros_like(valid[:, :1])], dim=1)
        sep_at = attention.sum(1, keepdim=True)  # first position after the words
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        ids = torch.where(positions == sep_at, self.sep_id, ids)
        attention = attention | (positions == sep_at)
        return ids, attention.long()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (F, 3, L) long, mask (F, 3) -> (F, 3, d), zero where mask is 0."""
        _check_tokens(tokens)
        f, _, length = tokens.shape
        ids, attention = self.phrase_inputs(tokens.reshape(f * 3, length))  # (F*3, T)
        # An additive (F*3, 1, 1, T) mask is used as given; a 2-D one would make transformers test
        # `mask.all()` to skip masking, data-dependent control flow that torch.func.vmap rejects.
        bias = (1.0 - attention[:, None, None, :].to(self.bert.dtype)) * torch.finfo(self.bert.dtype).min
        hidden = self.bert(input_ids=ids, attention_mask=bias).last_hidden_state  # (F*3, T, h)
        if self.pooling == "cls":
            phrase = hidden[:, 0]
        else:  # mean over [CLS] words [SEP]
            phrase = _mean_words(hidden.unsqueeze(1), attention.unsqueeze(1).float()).squeeze(1)
        phrase = phrase.view(f, 3, -1)  # (F, 3, h)
        out = torch.stack([head(phrase[:, s]) for s, head in enumerate(self.heads)], dim=1)  # (F, 3, d)
        return out * mask.unsqueeze(-1)


def read_word_vectors(path: str | Path, words: list[str]) -> tuple[torch.Tensor, int]:
    """The rows of a word2vec/GloVe text file for ``words``.

    Args:
        path: text file, one ``word v1 ... vD`` per line; an optional first line ``count dim``
            (word2vec header) is checked against the rows and skipped.
        words: the words to keep (a file can hold millions of rows; only these are stored).
    Returns:
        (table (len(words), D) float32 with zero rows for words the file lacks, D). A malformed
        line is a UserError naming the file and line.
    """
    index = {w: i for i, w in enumerate(words)}
    table: torch.Tensor | None = None
    dim = None
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                parts = line.split()
                if not parts:
                    continue  # blank line
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    dim = int(parts[1])  # word2vec header: count dim
                    continue
                if dim is None:
                    dim = len(parts) - 1
                if len(parts) < dim + 1 or dim < 1:
                    raise UserError(f"{path}, line {number}: expected a word and {dim} numbers, got {len(parts) - 1} fields")
                word = " ".join(parts[: len(parts) - dim])  # GloVe 840B has a few words with spaces
                try:
                    values = [float(v) for v in parts[len(parts) - dim :]]
                except ValueError:
                    raise UserError(f"{path}, line {number}: not a number in the vector of {word!r}") from None
                if table is None:
                    table = torch.zeros((len(words), dim))
                if word in index:
                    table[index[word]] = torch.tensor(values)
    except FileNotFoundError:
        raise UserError(f"model.word_vectors: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"model.word_vectors: cannot read {path}: {exc}") from None
    if table is None:
        raise UserError(f"{path}: no word vectors in the file")
    return table, table.shape[1]


class VectorLanguageTower(nn.Module):
    """Fixed word vectors (mean over a phrase's words) and one trainable linear map per slot.

    The vectors are a buffer ``table`` (V, word_dim) aligned with the vocabulary ids: it is saved
    in the checkpoint, so ``from_checkpoint=True`` builds a zero table and skips the file. Words
    absent from the file (and the unknown-word id) have a zero row and are left out of the mean.
    """

    def __init__(self, cfg: ModelConfig, vocab: Vocabulary, from_checkpoint: bool = False):
        super().__init__()
        if not cfg.word_vectors:
            raise UserError("config model.word_vectors: text_encoder 'vectors' needs a word vectors file")
        if from_checkpoint:
            table = torch.zeros((len(vocab), cfg.word_dim))
        else:
            table, dim = read_word_vectors(cfg.word_vectors, vocab.words)
            if dim != cfg.word_dim:
                raise UserError(f"config model.word_dim: {cfg.word_dim}, but the vectors in {cfg.word_vectors} "
                                f"have {dim} dimensions; set model.word_dim to {dim}")
            missing = [w for w, row in zip(vocab.words[2:], table[2:]) if not row.any()]
            if missing:
                logger.warning("%d of %d words have no vector in %s (left out of phrase means): %s",
                               len(missing), len(vocab) - 2, cfg.word_vectors, ", ".join(missing[:10]))
        self.register_buffer("table", table)  # (V, w); persistent: loading needs no file
        self.slots = nn.ModuleList(nn.Linear(cfg.word_dim, cfg.slot_dim) for _ in range(3))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (F, 3, L) long, mask (F, 3) -> (F, 3, d), zero where mask is 0."""
        _check_tokens(tokens)
        known = self.table.ne(0).any(1)  # (V,): padding, unknown and missing words have zero rows
        phrase = _mean_words(self.table[tokens], known[tokens].float())  # (F, 3, w)
        out = torch.stack([lin(phrase[:, s]) for s, lin in enumerate(self.slots)], dim=1)  # (F, 3, d)
        return out * mask.unsqueeze(-1)


def build_language_tower(cfg: ModelConfig, vocab: Vocabulary, from_checkpoint: bool = False) -> nn.Module:
    """The language tower ``cfg.text_encoder`` names, frozen when ``cfg.freeze_language``.

    ``from_checkpoint``: weights will be loaded next, so files whose content the checkpoint holds
    (the word vectors) are not read.
    """
    if cfg.text_encoder == "bert":
        tower: nn.Module = BertLanguageTower(cfg, vocab)
    elif cfg.text_encoder == "vectors":
        tower = VectorLanguageTower(cfg, vocab, from_checkpoint)
    else:
        tower = LanguageTower(cfg, len(vocab))
    if cfg.freeze_language:
        tower.requires_grad_(False)
    return tower
