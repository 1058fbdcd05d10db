"""Training losses. They take embeddings from the model; the model knows nothing of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossConfig, ModelConfig
from .errors import UserError
from .model.two_tower import normalize_slots


def slot_distance(img: torch.Tensor, fact: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference (Sherlock) loss: wildcard-masked squared distance per slot, mean over images.

    img (B, 3, d) and fact (B, 3, d) are each image's own fact, both slot-normalised
    (``loss.distance: normalized``) or both raw (``raw``); mask (B, 3) holds the flags (w_s, w_p,
    w_o). A missing slot contributes nothing.
    """
    per_slot = (img - fact).pow(2).sum(-1)  # (B, 3)
    return (per_slot * mask).sum(1).mean()


def contrastive(
    img_vec: torch.Tensor, fact_vec: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each image over the task's facts, by cosine similarity.

    img_vec (B, D), fact_vec (F, D): slot-normalised vectors. targets (B,) index into the F facts.
    exclude (B, F) bool marks candidates that are also true of the image under the wildcard rule
    (e.g. <star> for a <star, red> image); they are neither positives nor negatives.
    """
    logits = F.normalize(img_vec, dim=1) @ F.normalize(fact_vec, dim=1).T / temperature  # (B, F)
    logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, targets)


def fact_loss(
    img_raw: torch.Tensor,
    fact_raw: torch.Tensor,
    fact_mask: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor,
    cfg: LossConfig,
) -> torch.Tensor:
    """The configured sum: ``distance_weight * slot_distance + contrastive_weight * contrastive``.

    img_raw (B, 3, d) from the image tower; fact_raw (F, 3, d) and fact_mask (F, 3) for the task's
    facts; targets (B,) the index of each image's fact among them; exclude (B, F) see contrastive.
    ``cfg.distance``: the distance between slot-normalised vectors (normalized) or between the raw
    outputs themselves (raw: Sherlock's regression onto the fact vector).
    """
    loss = img_raw.new_zeros(())
    if cfg.distance_weight:
        if cfg.distance == "raw":
            img, fact = img_raw, fact_raw * fact_mask.unsqueeze(-1)  # (B, 3, d), (F, 3, d)
        else:
            img = F.normalize(img_raw, dim=-1, eps=1e-8)  # (B, 3, d)
            fact = F.normalize(fact_raw, dim=-1, eps=1e-8) * fact_mask.unsqueeze(-1)  # (F, 3, d)
        loss = loss + cfg.distance_weight * slot_distance(img, fact[targets], fact_mask[targets])
    if cfg.contrastive_weight:
        loss = loss + cfg.contrastive_weight * contrastive(
            normalize_slots(img_raw), normalize_slots(fact_raw, fact_mask), targets, exclude, cfg.temperature
        )
    return loss


def check_loss(loss: LossConfig, model: ModelConfig) -> None:
    """Refuse a loss that has a trivial minimum: the raw distance between two trainable towers
    with no contrastive term is smallest when both map everything to one point (NOTES: the
    prototype's collapse). Sherlock's raw distance needs fixed fact vectors."""
    if loss.distance == "raw" and loss.distance_weight and not loss.contrastive_weight and not model.freeze_language:
        raise UserError("config loss.distance: raw with loss.contrastive_weight: 0 and a trainable language tower "
                        "collapses (both towers map everything to one point); set model.freeze_language: true "
                        "(fixed fact vectors, as Sherlock) or loss.contrastive_weight > 0")
