"""Memory Aware Synapses (Aljundi et al., ECCV 2018, arXiv 1711.09601).

Importance of parameter k after a task (MAS Eq. 2, with the squared L2 norm of Eq. 4):

    Omega_k = 1/N * sum_n | d ||F(x_n)||_2^2 / d theta_k |

F is the raw embedding output: the image tower on image x_n and the language tower on its fact.
No labels are used. The absolute value is taken per sample, then averaged over the N samples
(also when the last batch is short). The model is in eval mode and sees no augmentation. The
per-sample sums come from :mod:`factlearn.continual.per_sample`; the penalty after each task is
``lambda * sum_k Omega_k (theta_k - theta*_k)^2`` (MAS Eq. 3).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .base import TaskData, log_importance, mean_over_samples
from .per_sample import per_sample_abs_grad_sum
from .unlabeled import IMAGE_TOWER, TOWERS, DataImportance


def batch_abs_grad(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """|d sum_n ||module(x_n)||^2 / d theta| (``method.importance: batch``): one backward pass per
    batch, a lower bound of :func:`~factlearn.continual.per_sample.per_sample_abs_grad_sum` (the
    triangle inequality), kept as a cheaper approximation of MAS Eq. 2."""
    params = dict(module.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad] if names is None else list(names)
    grads = torch.autograd.grad(module(*inputs).pow(2).sum(), [params[n] for n in names], allow_unused=True)
    return {n: (g.abs() if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, grads)}


def mas_importance(
    model: nn.Module, task: TaskData, batch_size: int = 64, exact: bool = True, towers: tuple[str, ...] = TOWERS
) -> dict[str, torch.Tensor]:
    """MAS importance of the trainable parameters of ``towers`` of a FactModel over ``task``'s samples.

    Args:
        model: a :class:`factlearn.model.FactModel`.
        task: the samples (images and their facts), iterated once in fixed order.
        batch_size: samples per batched pass (memory grows with it: activations, and per-sample
            gradients of vmap-fallback parameters).
        exact: per-sample absolute gradients (the method); False = |gradient of the batch sum|.
        towers: which towers (``"image_tower"``, ``"language_tower"``).
    Returns:
        name -> importance tensor shaped like the parameter, on the parameter's device.
    """
    fn = per_sample_abs_grad_sum if exact else batch_abs_grad
    own = {t: {n: p for n, p in getattr(model, t).named_parameters() if p.requires_grad} for t in towers}

    def per_batch(pixels: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        for tower in towers:
            inputs = (pixels,) if tower == IMAGE_TOWER else (tokens, mask)
            for n, g in fn(getattr(model, tower), inputs, list(own[tower])).items():
                yield f"{tower}.{n}", g  # sum over the batch of |per-sample gradient|

    like = {f"{t}.{n}": p for t in towers for n, p in own[t].items()}
    return mean_over_samples(model, task, per_batch, like, batch_size)


class MAS(DataImportance):
    """Global MAS: importance from the embedding outputs of both towers, accumulated across tasks.

    Options (``method.*``):
        lam: penalty strength lambda (MAS Eq. 3).
        accumulate, alpha: importance across tasks, ``sum`` (the MAS authors' code) or
            ``blend`` (``alpha * old + (1 - alpha) * new``).
        importance: ``exact`` per-sample |gradient| (MAS Eq. 2) or ``batch`` (|gradient of the
            batch sum|: faster, a lower bound).
        importance_batch_size: samples per batched pass.
        max_importance_samples: a seeded subset of the task's samples (None = all).
        importance_data: unlabeled images for the image tower's importance (MAS Sec. 5).
    """

    name = "mas"
    options = DataImportance.options + ("importance",)

    def tower_importance(self, model: nn.Module, data: TaskData, towers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """:func:`mas_importance` of ``towers`` over ``data`` (exact or batch, as ``method.importance``)."""
        omega = mas_importance(model, data, self.cfg.importance_batch_size, self.cfg.importance == "exact", towers)
        log_importance(f"MAS importance ({', '.join(towers)})", data.name, omega)
        return omega
