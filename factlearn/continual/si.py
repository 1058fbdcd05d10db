"""Synaptic Intelligence (Zenke, Poole, Ganguli, ICML 2017, arXiv 1703.04200).

During a task, every optimizer step adds to a per-parameter path integral (SI Eq. 3, discretised):

    w_k += -g_k * (theta_k(after step) - theta_k(before step))

g is the gradient of the TASK loss only, without the SI penalty, as in the authors' code (their
``unreg_grads``): the penalty's own pull towards the anchor would otherwise count as "work done
for the task". The loop's ``p.grad`` holds the gradient of task loss + penalty; the penalty's part
is known in closed form, ``2 * lambda * Omega * (theta - theta*)``, and is subtracted. With
``method.penalty: decoupled`` ``p.grad`` is the task loss's alone; the step's parameter change
then includes the decoupled pull, as with ``loss`` it includes the penalty's share of the step.

At the end of the task (SI Eq. 5), with Delta_k the parameter's total change over the task:

    Omega_k += max(0, w_k / (Delta_k^2 + xi))

The max(0, .) is ours: with momentum optimisers the path integral of a parameter can come out
negative, and a negative Omega would turn the penalty into a reward for drifting away.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import MethodConfig
from .base import QuadraticPenalty, TaskData, trainable


class SI(QuadraticPenalty):
    """Synaptic Intelligence: importance from the path integral of the task loss (SI Eq. 3, 5).

    State: ``omega``/``anchor`` as every quadratic penalty. During a task also the running path
    integral (``si_path``) and the parameters at the task's start (``si_start``), so that a mid-task
    checkpoint continues the integral exactly; between tasks they are empty.

    Options (``method.*``):
        lam: penalty strength (SI's c).
        accumulate, alpha: importance across tasks, ``sum`` (SI Eq. 5) or ``blend``.
        penalty: ``loss`` (a loss term) or ``decoupled`` (a pull after the optimizer's step).
        importance_norm: ``none`` or ``mean`` (each task's Omega divided by its mean per tower).
        importance_power: each task's Omega raised to it first (a diagnostic of concentration).
        xi: the damping in Eq. 5, > 0.
    """

    name = "si"
    first_task_as_finetune = False  # the path integral runs during the first task too
    options = QuadraticPenalty.options + ("xi",)

    def __init__(self, cfg: MethodConfig):
        super().__init__(cfg)
        self._start: dict[str, torch.Tensor] = {}  # theta at the start of the task
        self._w: dict[str, torch.Tensor] = {}  # path integral
        self._step: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None  # (theta, g) before a step

    def before_task(self, model: nn.Module, task: TaskData) -> None:
        """Start the task's path integral at the current parameters."""
        params = trainable(model)
        self._start = {n: p.detach().clone() for n, p in params.items()}
        self._w = {n: torch.zeros_like(p) for n, p in params.items()}
        super().before_task(model, task)

    def before_step(self, model: nn.Module) -> None:
        """Keep theta and the task loss's gradient (the penalty's part removed) before the step."""
        params = trainable(model)
        omega, anchor = self._get("omega"), self._get("anchor")
        grads = {}
        for n, p in params.items():
            g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            if n in omega and self.cfg.penalty == "loss":  # remove the penalty's gradient: task loss only
                g -= 2 * self.cfg.lam * omega[n] * (p.detach() - anchor[n])
            grads[n] = g
        self._step = ({n: p.detach().clone() for n, p in params.items()}, grads)

    def after_step(self, model: nn.Module, lr: float) -> None:
        """Apply the decoupled pull if any, then add the step's contribution to the path integral (SI Eq. 3)."""
        super().after_step(model, lr)
        if self._step is None:
            return
        before, grads = self._step
        for n, p in trainable(model).items():
            self._w[n] -= grads[n] * (p.detach() - before[n])  # SI Eq. 3
        self._step = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The quadratic penalty's state plus the running path integral and the task's start."""
        out = super().state_dict()
        for kind, tensors in (("si_start", self._start), ("si_path", self._w)):
            out.update({f"{kind}.{n}": t.detach().cpu().contiguous() for n, t in tensors.items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict`'s output, the running path integral included."""
        rest = dict(state)
        taken: dict[str, dict[str, torch.Tensor]] = {"si_start": {}, "si_path": {}}
        for name in list(rest):
            kind, _, param = name.partition(".")
            if kind in taken:
                taken[kind][param] = rest.pop(name).to(device)
        self._start, self._w = taken["si_start"], taken["si_path"]
        super().load_state_dict(rest, device)

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        """Omega of the task (SI Eq. 5, clamped at 0); ends the path integral."""
        if not self._w:
            raise RuntimeError("SI.after_task without before_task: the path integral was never started")
        params = trainable(model)
        omega = {n: (self._w[n] / ((p.detach() - self._start[n]) ** 2 + self.cfg.xi)).clamp(min=0)  # SI Eq. 5
                 for n, p in params.items()}
        self._w, self._start = {}, {}
        return omega
