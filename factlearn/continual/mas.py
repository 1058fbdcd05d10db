"""Memory Aware Synapses (Aljundi et al., ECCV 2018, arXiv 1711.09601).

Importance of parameter k after a task (MAS Eq. 2, with the squared L2 norm of Eq. 4):

    Omega_k = 1/N * sum_n | d ||F(x_n)||_2^2 / d theta_k |

F is the raw embedding output: the image tower on image x_n and the language tower on its fact.
No labels are used. The absolute value is taken per sample, then averaged over the N samples
(also when the last batch is short). The model is in eval mode and sees no augmentation.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .base import QuadraticPenalty, TaskData, trainable

logger = logging.getLogger(__name__)


def _tower_importance_exact(
    tower: nn.Module, prefix: str, inputs: tuple[torch.Tensor, ...], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Sum over the batch of per-sample |d ||tower(x_n)||^2 / d theta| (vmap over samples)."""
    local = {n[len(prefix) :]: p.detach() for n, p in params.items() if n.startswith(prefix)}
    buffers = {n: b for n, b in tower.named_buffers()}

    def sq_norm(p: dict[str, torch.Tensor], *sample: torch.Tensor) -> torch.Tensor:
        out = functional_call(tower, (p, buffers), tuple(s.unsqueeze(0) for s in sample))
        return out.pow(2).sum()

    per_sample = vmap(grad(sq_norm), in_dims=(None,) + (0,) * len(inputs))(local, *inputs)  # name -> (B, *shape)
    return {prefix + n: g.abs().sum(0) for n, g in per_sample.items()}


def _tower_importance_batch(
    tower: nn.Module, prefix: str, inputs: tuple[torch.Tensor, ...], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """|d sum_n ||tower(x_n)||^2 / d theta|: a cheaper lower bound of the per-sample sum."""
    local = {n: p for n, p in params.items() if n.startswith(prefix)}
    grads = torch.autograd.grad(tower(*inputs).pow(2).sum(), list(local.values()), allow_unused=True)
    return {n: (g.abs() if g is not None else torch.zeros_like(p)) for (n, p), g in zip(local.items(), grads)}


def mas_importance(model: nn.Module, task: TaskData, batch_size: int = 64, exact: bool = True) -> dict[str, torch.Tensor]:
    """MAS importance of every trainable parameter of a FactModel over ``task``'s samples.

    Args:
        model: a :class:`factlearn.model.FactModel`.
        task: the samples (images and their facts), iterated once in fixed order.
        batch_size: samples per vmap call (memory grows as batch_size x parameters).
        exact: per-sample absolute gradients (the method); False = |gradient of the batch sum|.
    Returns:
        name -> importance tensor shaped like the parameter, on the parameter's device.
    """
    params = trainable(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    fn = _tower_importance_exact if exact else _tower_importance_batch
    was_training = model.training
    model.eval()  # deterministic function: dropout off, batch-norm running statistics
    n_samples = 0
    try:
        for pixels, tokens, mask in task.batches(batch_size):
            n_samples += pixels.shape[0]
            for part in (
                fn(model.image_tower, "image_tower.", (pixels,), params),
                fn(model.language_tower, "language_tower.", (tokens, mask), params),
            ):
                for n, g in part.items():
                    total[n] += g
    finally:
        model.train(was_training)
    if n_samples == 0:
        raise ValueError(f"task {task.name} has no samples to compute importance from")
    return {n: t / n_samples for n, t in total.items()}


class MAS(QuadraticPenalty):
    """Global MAS: importance from the embedding outputs of both towers, summed across tasks."""

    name = "mas"

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        omega = mas_importance(model, task, self.cfg.importance_batch_size, exact=self.cfg.importance == "exact")
        logger.info("MAS importance on %s: mean %.3g, max %.3g", task.name,
                    torch.stack([o.mean() for o in omega.values()]).mean(), max(o.max() for o in omega.values()))
        return omega
