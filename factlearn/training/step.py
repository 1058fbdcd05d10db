"""One optimizer step: the task loss, the method's penalty and hooks, and the divergence check.

The step is the unit :mod:`factlearn.training.task` repeats and ``scripts/bench.py`` times, so
both measure the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import LossConfig
from ..continual import Method, StepBatch
from ..distributed import SINGLE, Context
from ..errors import UserError
from ..losses import fact_loss


class Diverged(UserError):
    """The loss or the parameters are no longer finite."""


@dataclass
class StepInput:
    """What one step trains on: this rank's share of the global batch against the step's facts.

    The step's facts are the stage's (``loss.negatives: all``), or the global batch's own plus the
    ones drawn for this step (``sampled``, :func:`factlearn.training.task.sample_facts`).
    ``x``: pixels (b, 3, H, W) from :func:`factlearn.data.images.to_model_input`; ``targets`` (b,):
    each image's fact as an index into the step's F facts; ``exclude`` (b, F) bool: candidates
    neither positive nor negative under the wildcard rule; ``fact_tokens`` (F, 3, L) and
    ``fact_mask`` (F, 3): the step's facts (only these go through the language tower); ``weight``: the share's weight in the global batch
    (:meth:`factlearn.distributed.Context.share`, 1 in a single process).
    """

    x: torch.Tensor
    targets: torch.Tensor
    exclude: torch.Tensor
    fact_tokens: torch.Tensor
    fact_mask: torch.Tensor
    weight: float = 1.0


def train_step(model: torch.nn.Module, method: Method, opt: torch.optim.Optimizer, forward: Callable,
               batch: StepInput, loss_cfg: LossConfig, dist: Context = SINGLE, where: str = "a step"
               ) -> tuple[float, float]:
    """One optimizer step; returns the global batch's (loss, penalty).

    ``forward``: both towers, ``model`` itself or its DDP wrapper with several ranks; ``where``
    names the step in the error raised (:class:`Diverged`) when any rank's loss is not finite, in
    which case no parameter is changed.
    """
    x = batch.x
    img, fact = forward(x, batch.fact_tokens, batch.fact_mask)  # (b, 3, d), (F, 3, d)
    if len(x):
        loss = fact_loss(img, fact, batch.fact_mask, batch.targets, batch.exclude, loss_cfg)
        penalty = method.penalty(model, StepBatch(x, batch.fact_tokens, batch.fact_mask, image_emb=img,
                                                  fact_emb=fact))
    else:  # a short last batch left this rank no image: it joins DDP's gradient average with weight 0
        loss, penalty = (img.sum() + fact.sum()) * 0.0, None
    total = loss if penalty is None else loss + penalty
    opt.zero_grad(set_to_none=True)
    (total if batch.weight == 1 else total * batch.weight).backward()
    # Every rank learns whether any rank's loss is not finite, so that all of them stop here.
    local = loss.item(), 0.0 if penalty is None else penalty.item()
    loss_sum, penalty_sum, bad = dist.all_sum([batch.weight * local[0], batch.weight * local[1],
                                               not math.isfinite(sum(local))])
    loss_value, penalty_value = loss_sum / dist.world, penalty_sum / dist.world
    if bad:
        raise Diverged(f"training diverged on {where}: the loss is {loss_value + penalty_value}; "
                       "lower train.lr or method.lam.")
    method.before_step(model)
    opt.step()
    method.after_step(model, opt.param_groups[0]["lr"])
    return loss_value, penalty_value


def check_finite(model: torch.nn.Module, method: Method, where: str) -> None:
    """Refuse parameters (or method state) that are no longer finite: a step can turn them into
    inf/NaN before any loss shows it, and such a model must never be checkpointed."""
    tensors = [*model.named_parameters(), *method.state.items()]
    bad = next((n for n, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise Diverged(f"training diverged at {where}: {bad} is no longer finite; lower train.lr or method.lam.")
