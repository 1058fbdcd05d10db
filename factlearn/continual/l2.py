"""L2 baseline: every parameter equally important (Omega = 1).

``lambda * sum_k (theta_k - theta*_k)^2`` with theta* the parameters after the previous task: the
quadratic penalty of MAS/EWC without importance, which shows what the importance buys.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import QuadraticPenalty, TaskData, trainable


class L2(QuadraticPenalty):
    """Omega = 1 for every parameter, after every task.

    Options (``method.*``): ``lam``, the penalty strength; ``penalty``, ``loss`` (a loss term) or
    ``decoupled`` (a pull after the optimizer's step). ``importance_norm`` is honoured and changes
    nothing (the mean of ones is 1). ``accumulate`` and ``alpha`` do not apply: the importance stays 1.
    """

    name = "l2"
    options = ("lam", "penalty", "importance_norm")

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        """Ones shaped like every trainable parameter."""
        return {n: torch.ones_like(p) for n, p in trainable(model).items()}

    def combine(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The new ones: Omega stays 1."""
        return new  # stays 1: summing would make the anchor stiffer with every task
