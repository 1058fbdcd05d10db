"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) and online EWC (Schwarz et al. 2018).

Importance is the diagonal of the empirical Fisher of the TASK loss (EWC Eq. 3):

    F_k = 1/N * sum_n ( d L(x_n, y_n) / d theta_k )^2

with L the training loss of image x_n against its true fact y_n among the task's facts (the same
``fact_loss`` the loop trains with), squared per sample, then averaged; eval mode, no augmentation.
The penalty is ``lambda * sum_k F_k (theta_k - theta*_k)^2`` (EWC's 1/2 is folded into lambda).

Across tasks, memory stays at one Fisher and one anchor (the parameters after the latest task):
- ``ewc``: Fishers summed (``method.accumulate``), anchored at the latest parameters. This is the
  Laplace-propagation form Huszár (PNAS 2018, "Note on the quadratic penalties in EWC") argues for;
  the original keeps one Fisher and one anchor per task, i.e. memory that grows with the tasks.
- ``online_ewc``: ``F <- gamma * F + F_task`` (``method.gamma``), Schwarz et al.'s online EWC.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .base import QuadraticPenalty, TaskData, log_importance, mean_over_samples, trainable


def fisher_diagonal(model: nn.Module, task: TaskData, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of every trainable parameter of a FactModel over ``task``.

    Args:
        model: a :class:`factlearn.model.FactModel`.
        task: labeled task data (``labeled``, ``facts`` and ``loss`` set).
        batch_size: samples per vmap call (memory grows as batch_size x parameters).
    Returns:
        name -> mean over samples of the squared per-sample gradient of the task loss.
    """
    if task.labeled is None or task.facts is None or task.loss is None:
        raise ValueError(f"task {task.name}: EWC needs labeled task data (labeled, facts, loss)")
    tokens, mask = task.facts  # (F_t, 3, L), (F_t, 3)
    params = trainable(model)
    towers = {"image_tower": model.image_tower, "language_tower": model.language_tower}
    local = {t: {n[len(t) + 1 :]: p.detach() for n, p in params.items() if n.startswith(t + ".")} for t in towers}

    def sample_loss(p: dict[str, dict[str, torch.Tensor]], pixel, target, exclude) -> torch.Tensor:
        img = functional_call(towers["image_tower"], p["image_tower"], (pixel.unsqueeze(0),))  # (1, 3, d)
        fact = functional_call(towers["language_tower"], p["language_tower"], (tokens, mask))  # (F_t, 3, d)
        return task.loss(img, fact, target.unsqueeze(0), exclude.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0))

    def per_batch(pixels: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor):
        grads = per_sample(local, pixels, targets, exclude)  # tower -> name -> (B, *shape)
        for t, named in grads.items():
            for n, g in named.items():
                yield f"{t}.{n}", g.pow(2).sum(0)  # squared per sample (EWC Eq. 3), summed over the batch

    return mean_over_samples(model, task, per_batch, params, batch_size, labeled=True, what="the Fisher")


class EWC(QuadraticPenalty):
    """EWC with the Fishers of all tasks accumulated and one anchor (see the module docstring).

    Options (``method.*``):
        lam: penalty strength lambda (EWC Eq. 3, its 1/2 folded in).
        accumulate, alpha: Fishers across tasks, ``sum`` (Huszár's form) or ``blend``
            (``alpha * old + (1 - alpha) * new``).
        penalty: ``loss`` (a loss term) or ``decoupled`` (a pull after the optimizer's step).
        importance_norm: ``none`` or ``mean`` (each task's Fisher divided by its mean per tower).
        importance_power: each task's Fisher raised to it first (a diagnostic of concentration).
        importance_batch_size: samples per vmap call of the Fisher.
        max_importance_samples: a seeded subset of the task's samples (None = all).
        importance_images, importance_facts: which images and facts the Fisher comes from (the
            task's training images by default; see :class:`factlearn.config.MethodConfig`).
    """

    name = "ewc"
    options = QuadraticPenalty.options + ("importance_batch_size", "max_importance_samples", "importance_images",
                                          "importance_facts")

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        """The task's empirical Fisher diagonal (EWC Eq. 3)."""
        fisher = fisher_diagonal(model, task, self.cfg.importance_batch_size)
        log_importance(f"{self.name} Fisher", task.name, fisher)
        return fisher


class OnlineEWC(EWC):
    """Online EWC (Schwarz et al. 2018): the running Fisher decays by ``gamma`` before each task's
    Fisher is added.

    Options (``method.*``): ``lam``, ``penalty``, ``importance_norm``, ``importance_power``, ``importance_batch_size`` and
    ``max_importance_samples`` as :class:`EWC`; ``gamma`` in [0, 1], the decay (1.0 = :class:`EWC`
    with ``accumulate: sum``), which replaces ``accumulate`` and ``alpha``; ``importance_images``
    and ``importance_facts`` as :class:`EWC`.
    """

    name = "online_ewc"
    options = ("lam", "penalty", "importance_norm", "importance_power", "gamma", "importance_batch_size",
               "max_importance_samples", "importance_images", "importance_facts")

    def combine(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``F <- gamma * F + F_task``."""
        return self.cfg.gamma * old + new
