"""The interface every continual-learning method implements.

A method is an object with three hooks called by the training loop (FACIL-style):
``before_task`` → ``penalty`` (a loss term, every step) → ``after_task``. Its state is a flat dict
of tensors keyed ``"<kind>.<parameter name>"`` (names from ``model.named_parameters()``), saved
with every checkpoint as safetensors and restored on resume.
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


class Method:
    """Finetuning: no protection. The base of every other method."""

    name = "finetune"

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.state: dict[str, torch.Tensor] = {}
        self.tasks_seen = 0

    def before_task(self, model: nn.Module, task: TaskData) -> None:
        """Called before training on ``task``."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A loss term added at every step (None = nothing to add)."""
        return None

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
        new = self.importance(model, task)
        old = self._get("omega")
        if old and self.cfg.accumulate == "blend":
            a = self.cfg.alpha
            omega = {n: a * old[n] + (1 - a) * new[n] for n in new}
        else:  # sum, as the MAS authors' code does
            omega = {n: old[n] + new[n] if n in old else new[n] for n in new}
        self._set("omega", omega)
        self._set("anchor", {n: p.detach().clone() for n, p in trainable(model).items()})
        super().after_task(model, task)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        omega, anchor = self._get("omega"), self._get("anchor")
        if not omega:
            return None
        params = trainable(model)
        names = [n for n in omega if n in params]
        # MAS Eq. 3 / EWC Eq. 3: one fused sum over all parameters.
        diffs = torch._foreach_sub([params[n] for n in names], [anchor[n] for n in names])
        terms = [(omega[n] * d * d).sum() for n, d in zip(names, diffs)]
        return self.cfg.lam * torch.stack(terms).sum()
