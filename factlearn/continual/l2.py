"""L2 baseline: every parameter equally important (Omega = 1).

``lambda * sum_k (theta_k - theta*_k)^2`` with theta* the parameters after the previous task: the
quadratic penalty of MAS/EWC without importance, which shows what the importance buys.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import QuadraticPenalty, TaskData, trainable


class L2(QuadraticPenalty):
    name = "l2"

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        return {n: torch.ones_like(p) for n, p in trainable(model).items()}

    def combine(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return new  # stays 1: summing would make the anchor stiffer with every task
