"""The interface every continual-learning method implements.

A method is an object with hooks called by the training loop (FACIL-style)::

    before_task(model, task)
    for every step:
        penalty(model, batch)   # a loss term added to the task loss (None = nothing)
        (backward)
        before_step(model)      # gradients are in p.grad, parameters not yet updated
        (optimizer step)
        after_step(model)       # parameters updated
    after_task(model, task)

Its state is a flat dict of tensors keyed ``"<kind>.<parameter name>"`` (names from
``model.named_parameters()``), saved with every checkpoint as safetensors and restored on resume.
A method whose ``rehearses_all`` is True (joint training) is trained on the union of the tasks
seen so far instead of the current task alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..config import MethodConfig


@dataclass
class TaskData:
    """What a method may see of a task: its training images (uint8, model size) and their facts.

    ``batches`` yields (normalised pixels (B, 3, H, W), fact tokens (B, 3, L), slot mask (B, 3))
    on the model's device, without augmentation, in a fixed order; importance is computed from it.
    """

    name: str
    num_samples: int
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    # The labels, for methods that need the task loss (EWC's Fisher). ``labeled`` yields
    # (pixels (B, 3, H, W), targets (B,) index into ``facts``, exclude (B, F_t) bool) over the same
    # samples in the same order as ``batches``; ``facts`` = the task's fact tokens (F_t, 3, L) and
    # slot mask (F_t, 3); ``loss(img_raw (B, 3, d), fact_raw (F_t, 3, d), targets, exclude)`` is the
    # training loss (factlearn.losses.fact_loss with the run's loss config). None for unlabeled data.
    labeled: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None
    facts: tuple[torch.Tensor, torch.Tensor] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class StepBatch:
    """What the ``penalty`` hook sees of one training step.

    pixels (B, 3, H, W) normalised; fact_tokens (F_t, 3, L) and fact_mask (F_t, 3) are the facts the
    step trains against. image_emb (B, 3, d) and fact_emb (F_t, 3, d) are the current model's raw
    embeddings of them, already computed by the loop (with gradients): a method reuses them instead
    of a second train-mode forward, which would also update batch-norm statistics twice.
    """

    pixels: torch.Tensor
    fact_tokens: torch.Tensor
    fact_mask: torch.Tensor
    image_emb: torch.Tensor | None = None
    fact_emb: torch.Tensor | None = None


class Method:
    """Finetuning: no protection. The base of every other method."""

    name = "finetune"
    rehearses_all = False  # True: train on every task seen so far (joint training)

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.state: dict[str, torch.Tensor] = {}
        self.tasks_seen = 0

    def before_task(self, model: nn.Module, task: TaskData) -> None:
        """Called before training on ``task``."""

    def penalty(self, model: nn.Module, batch: StepBatch | None = None) -> torch.Tensor | None:
        """A loss term added at every step (None = nothing to add)."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """Called after ``backward`` and before the optimizer step (``p.grad`` holds the gradient)."""

    def after_step(self, model: nn.Module) -> None:
        """Called right after the optimizer step."""

    def after_task(self, model: nn.Module, task: TaskData) -> None:
        """Called after training on ``task``, with the task's data still at hand."""
        self.tasks_seen += 1

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().cpu().contiguous() for k, v in self.state.items()}
        out["meta.tasks_seen"] = torch.tensor(self.tasks_seen)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        state = dict(state)
        self.tasks_seen = int(state.pop("meta.tasks_seen", torch.tensor(0)))
        self.state = {k: v.to(device) for k, v in state.items()}

    def _get(self, kind: str) -> dict[str, torch.Tensor]:
        prefix = kind + "."
        return {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)}

    def _set(self, kind: str, tensors: dict[str, torch.Tensor]) -> None:
        prefix = kind + "."
        self.state = {k: v for k, v in self.state.items() if not k.startswith(prefix)}
        self.state.update({prefix + name: t for name, t in tensors.items()})


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class QuadraticPenalty(Method):
    """Shared by MAS, EWC, SI and L2: ``lambda * sum_k Omega_k (theta_k - theta*_k)^2``.

    State: ``omega.<name>`` (importance) and ``anchor.<name>`` (theta*, parameters at the end of
    the previous task) — two copies of the parameters, however many tasks have passed.
    """

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_task(self, model: nn.Module, task: TaskData) -> None:
        self.accumulate(self.importance(model, task))
        self._set("anchor", {n: p.detach().clone() for n, p in trainable(model).items()})
        super().after_task(model, task)

    def accumulate(self, new: dict[str, torch.Tensor]) -> None:
        """Merge ``new`` importance into ``omega``; parameters absent from ``new`` keep theirs."""
        old = self._get("omega")
        self._set("omega", {**old, **{n: self.combine(old[n], t) if n in old else t for n, t in new.items()}})

    def combine(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Importance across tasks (``method.accumulate``)."""
        if self.cfg.accumulate == "blend":
            return self.cfg.alpha * old + (1 - self.cfg.alpha) * new
        return old + new  # sum, as the MAS authors' code does

    def penalty(self, model: nn.Module, batch: StepBatch | None = None) -> torch.Tensor | None:
        omega, anchor = self._get("omega"), self._get("anchor")
        if not omega:
            return None
        params = trainable(model)
        names = [n for n in omega if n in params]
        # MAS Eq. 3 / EWC Eq. 3: one fused sum over all parameters.
        diffs = torch._foreach_sub([params[n] for n in names], [anchor[n] for n in names])
        terms = [(omega[n] * d * d).sum() for n, d in zip(names, diffs)]
        return self.cfg.lam * torch.stack(terms).sum()
