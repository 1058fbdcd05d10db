"""The interface every continual-learning method implements.

A method is an object with hooks called by the training loop (FACIL-style)::

    before_task(model, task)
    for every step:
        penalty(model, batch)   # a loss term added to the task loss (None = nothing)
        (backward)
        before_step(model)      # gradients are in p.grad, parameters not yet updated
        (optimizer step)
        after_step(model, lr)   # parameters updated; lr = the step's learning rate
    after_task(model, task)

Its state is a flat dict of tensors keyed ``"<kind>.<parameter name>"`` (names from
``model.named_parameters()``), saved with every checkpoint as safetensors and restored on resume.
A method whose ``rehearses_all`` is True (joint training) is trained on the union of the tasks
seen so far instead of the current task alone.

The options a method reads from the config's ``method:`` section are listed in its ``options``
and explained in its docstring; :func:`factlearn.continual.create_method` checks them once
(:meth:`Method.check_config`). Importance-based methods share one eval-mode loop over a task's
samples, :func:`mean_over_samples`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from ..config import MethodConfig
from ..distributed import SINGLE, Context
from ..errors import UserError

logger = logging.getLogger(__name__)


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
    # Under torch.distributed: the rank whose shard of the samples ``batches``, ``labeled`` and
    # ``num_samples`` cover; ``mean`` combines the shards. SINGLE: one process, every sample.
    shard: Context = SINGLE
    # A subset that may have no sample yet (the held-out images of a group none of whose facts has
    # been learned): its importance is then zero instead of an error.
    may_be_empty: bool = False

    def mean(self, sums: dict[str, torch.Tensor], count: int, what: str = "importance") -> dict[str, torch.Tensor]:
        """Per-sample sums over this shard (``count`` samples) -> means over the samples of every
        shard: the sums and counts are all-reduced first, so N ranks give one process's value."""
        sums, count = self.shard.reduce(sums, count)
        if count == 0 and self.may_be_empty:
            logger.warning("%s: no samples to compute %s from; it is zero for this task", self.name, what)
            return {n: torch.zeros_like(t) for n, t in sums.items()}
        if count == 0:
            raise ValueError(f"task {self.name} has no samples to compute {what} from")
        return {n: t / count for n, t in sums.items()}


def mean_over_samples(
    model: nn.Module, task: TaskData, per_batch: Callable[..., Iterable[tuple[str, torch.Tensor]]],
    like: dict[str, torch.Tensor], batch_size: int, labeled: bool = False, what: str = "importance",
) -> dict[str, torch.Tensor]:
    """The mean over ``task``'s samples of a per-sample quantity, in eval mode: the one importance
    loop of MAS, l-MAS and EWC.

    Eval mode because importance describes the function the model computes at test time: dropout
    off, batch norm with its running statistics (left untouched). The model's mode is restored
    afterwards, also on an error.

    Args:
        model: the model ``per_batch`` computes with.
        task: the samples, iterated once in fixed order: ``task.batches(batch_size)``, or
            ``task.labeled(batch_size)`` when ``labeled``.
        per_batch: called with each batch's tensors; yields (name, sum over the batch's samples)
            pairs, added in the order given (a name may come several times).
        like: name -> a tensor shaped like the result (the sums start from zeros like it).
        batch_size: samples per batch.
        what: what is computed, for the error on a task without samples.
    Returns:
        name -> sum over all samples / number of samples (over every rank's shard under
        torch.distributed, :meth:`TaskData.mean`); a short last batch weighs by its samples.
    """
    total = {n: torch.zeros_like(p) for n, p in like.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in (task.labeled if labeled else task.batches)(batch_size):
            count += batch[0].shape[0]
            for name, s in per_batch(*batch):
                total[name] += s
    finally:
        model.train(was_training)
    return task.mean(total, count, what)


def log_importance(kind: str, where: str, omega: dict[str, torch.Tensor]) -> None:
    """One INFO line on new importance: the mean of the per-parameter means, and the largest value
    (nothing to say when no parameter is covered, e.g. a frozen tower)."""
    if not omega:
        logger.info("%s on %s: no trainable parameter", kind, where)
        return
    logger.info("%s on %s: mean %.3g, max %.3g", kind, where,
                torch.stack([o.mean() for o in omega.values()]).mean(), max(o.max() for o in omega.values()))


# Options a method that does not list them refuses when set away from the default (the value says
# whom they are for); other options a method does not list are ignored.
REFUSED = {
    "importance_data": "label-free importance (mas, lmas)",
    "importance_output": "mas",
    "importance_directions": "mas with method.importance_output: normalized",
    "importance_images": "importance-based methods (mas, lmas, ewc, online_ewc)",
    "importance_facts": "importance-based methods (mas, lmas, ewc, online_ewc)",
    "importance_control": "mas",
    "importance_power": "quadratic penalties with a measured importance (mas, lmas, ewc, online_ewc, si)",
}
_DEFAULTS = MethodConfig()


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
    """Finetuning: no protection, no options. The base of every other method."""

    name = "finetune"
    rehearses_all = False  # True: train on every task seen so far (joint training)
    # False where the method changes the first task's training or keeps state during it (SI's path
    # integral): such a run cannot start from another run's first task (training/fork.py).
    first_task_as_finetune = True
    # The MethodConfig fields this method reads (the others are ignored); each subclass explains
    # them in its docstring. MethodConfig itself is the flat union that config files fill.
    options: tuple[str, ...] = ()

    @classmethod
    def check_config(cls, cfg: MethodConfig) -> None:
        """Raise a one-line UserError naming the option if ``cfg`` cannot configure this method.

        Values are checked against the config's ranges and choices again (a MethodConfig built or
        changed in code never went through the YAML loader), and an option of :data:`REFUSED` set
        away from its default is refused by a method that cannot honour it (``importance_data`` by
        a method whose importance needs labels, ``importance_output`` by any but mas): silently
        ignoring it would train another experiment than the one asked for.
        """
        cfg.check()
        for option, meant_for in REFUSED.items():
            if option not in cls.options and getattr(cfg, option) != getattr(_DEFAULTS, option):
                raise UserError(f"method.{option} is for {meant_for}, not {cfg.name!r}")

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

    def after_step(self, model: nn.Module, lr: float) -> None:
        """Called right after the optimizer step, whose learning rate was ``lr``."""

    def after_task(self, model: nn.Module, task: TaskData) -> None:
        """Called after training on ``task``, with the task's data still at hand."""
        self.tasks_seen += 1

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state to checkpoint (on CPU), with ``meta.tasks_seen``."""
        out = {k: v.detach().cpu().contiguous() for k, v in self.state.items()}
        out["meta.tasks_seen"] = torch.tensor(self.tasks_seen)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        """Restore what :meth:`state_dict` returned, onto ``device``."""
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
    """The parameters the methods keep state for: frozen ones (requires_grad=False) cannot drift."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def quadratic_penalty(
    params: list[torch.Tensor], omega: list[torch.Tensor], anchor: list[torch.Tensor], lam: float
) -> torch.Tensor:
    """``lam * sum_k omega_k * (theta_k - anchor_k)^2`` over all parameters (MAS Eq. 3, EWC Eq. 3).

    The three lists are aligned (same shapes, same order). One flat computation instead of a few
    small ops per parameter: a step of a ~50-tensor model otherwise pays ~300 op dispatches here.
    Returns a scalar whose gradient is ``2 * lam * omega_k * (theta_k - anchor_k)``.
    """
    return _QuadraticPenalty.apply(torch.cat([o.reshape(-1) for o in omega]), torch.cat([a.reshape(-1) for a in anchor]),
                                   lam, *params)


class _QuadraticPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, omega: torch.Tensor, anchor: torch.Tensor, lam: float, *params: torch.Tensor) -> torch.Tensor:
        delta = torch.cat([p.detach().reshape(-1) for p in params]).sub_(anchor)  # (P,) theta - theta*
        weighted = omega * delta  # (P,)
        ctx.save_for_backward(weighted)
        ctx.lam, ctx.shapes = lam, [p.shape for p in params]
        with torch.autocast(delta.device.type, enabled=False):  # a float32 sum, also in a bf16 step
            return lam * torch.dot(weighted, delta)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weighted,) = ctx.saved_tensors
        flat = weighted * (2 * ctx.lam * grad_out)  # (P,) 2 lam omega (theta - theta*)
        grads = flat.split([s.numel() for s in ctx.shapes])
        return (None, None, None, *(g.view(s) for g, s in zip(grads, ctx.shapes)))


def normalize_importance(omega: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tower's importance divided by its mean over that tower's parameters
    (``method.importance_norm: mean``; factlearn's option, not in the MAS or EWC papers).

    MAS Eq. 2 (and EWC's Fisher, SI's Eq. 5) measure Omega in the units of the model's output or
    loss, so its scale follows the raw embedding norm, and a lambda tuned for one model or world
    means something else for another. Dividing each task's Omega by its mean, tower by tower (the
    towers train on different signals and their scales differ), keeps only the relative importance
    the penalty is about: then one lambda compares across models and worlds, and a lambda sweep can
    be done once. The papers' definition (``none``) is the default.

    Args:
        omega: name -> importance; a tower is the first component of the name (``image_tower``,
            ``language_tower``).
    Returns:
        the same names, each tower's tensors divided by their numel-weighted mean (the mean of every
        element of the tower), so that mean becomes 1; a tower whose importance is all zero stays.
    """
    towers: dict[str, list[str]] = {}
    for name in omega:
        towers.setdefault(name.split(".", 1)[0], []).append(name)
    out = dict(omega)
    for names in towers.values():
        total = torch.stack([omega[n].sum(dtype=torch.float64) for n in names]).sum()  # float64: many small terms
        mean = total / sum(omega[n].numel() for n in names)
        if mean > 0:
            out.update({n: omega[n] / mean.to(omega[n].dtype) for n in names})
    return out


class QuadraticPenalty(Method):
    """Shared by MAS, l-MAS, EWC, SI and L2: ``lambda * sum_k Omega_k (theta_k - theta*_k)^2``.

    State: ``omega.<name>`` (importance) and ``anchor.<name>`` (theta*, parameters at the end of
    the previous task) — two copies of the parameters, however many tasks have passed.

    Options: ``lam`` (lambda); ``accumulate`` (``sum`` or ``blend``) and ``alpha`` (the blend
    factor), how a task's importance joins the old one (:meth:`combine`); ``penalty``, how the
    pull acts: ``loss`` (a loss term, MAS Eq. 3; its gradient goes through the optimizer, with SGD
    before momentum as in the MAS authors' code) or ``decoupled`` (a step of its own after the
    optimizer's, :meth:`after_step`); ``importance_norm``, ``none`` (Omega as measured) or ``mean``
    (each task's Omega divided by its mean per tower before accumulating, :func:`normalize_importance`);
    ``importance_power``, each task's Omega raised to it first (a diagnostic of concentration).
    """

    options = ("lam", "accumulate", "alpha", "penalty", "importance_norm", "importance_power")

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        """Omega of the trainable parameters after ``task`` (name -> tensor shaped like it)."""
        raise NotImplementedError

    def after_task(self, model: nn.Module, task: TaskData) -> None:
        """Add the task's importance and move the anchor to the current parameters."""
        self.accumulate(self.importance(model, task))
        self._set("anchor", {n: p.detach().clone() for n, p in trainable(model).items()})
        super().after_task(model, task)

    def accumulate(self, new: dict[str, torch.Tensor]) -> None:
        """Merge ``new`` importance into ``omega`` (normalised first with ``method.importance_norm:
        mean``, after ``method.importance_power``); parameters absent from ``new`` keep theirs."""
        if self.cfg.importance_power != 1:
            new = {n: t.pow(self.cfg.importance_power) for n, t in new.items()}
        if self.cfg.importance_norm == "mean":
            new = normalize_importance(new)
        old = self._get("omega")
        self._set("omega", {**old, **{n: self.combine(old[n], t) if n in old else t for n, t in new.items()}})

    def combine(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Importance across tasks (``method.accumulate``)."""
        if self.cfg.accumulate == "blend":
            return self.cfg.alpha * old + (1 - self.cfg.alpha) * new
        return old + new  # sum, as the MAS authors' code does

    def penalty(self, model: nn.Module, batch: StepBatch | None = None) -> torch.Tensor | None:
        """``lam * sum_k omega_k (theta_k - anchor_k)^2`` (MAS Eq. 3); None before the first task ends.

        With ``method.penalty: decoupled`` the value is detached: a constant in the loss, for the
        logs only (the pull is :meth:`after_step`'s).
        """
        aligned = self._aligned(model)
        if aligned is None:
            return None
        if self.cfg.penalty == "decoupled":
            with torch.no_grad():
                return quadratic_penalty(*aligned, self.cfg.lam)
        return quadratic_penalty(*aligned, self.cfg.lam)

    def after_step(self, model: nn.Module, lr: float) -> None:
        """With ``method.penalty: decoupled``, the pull after the optimizer's step:
        ``theta <- theta - lr * 2 * lam * omega * (theta - anchor)``.

        This is a plain gradient step on the penalty of MAS Eq. 3, taken outside the optimizer's
        preconditioner, as AdamW decouples weight decay (Loshchilov & Hutter, ICLR 2019): Adam divides
        a loss term's gradient by its running RMS, so where the penalty dominates every parameter
        stays about one learning rate from its anchor whatever its importance; the decoupled pull
        stays proportional to Omega. ``lr`` is the step's learning rate. Nothing to do with
        ``penalty: loss``, whose gradient the optimizer has already used.
        """
        if self.cfg.penalty != "decoupled":
            return
        aligned = self._aligned(model)
        if aligned is None:
            return
        params, omega, anchor = aligned
        with torch.no_grad():
            # torch._foreach_*: a few multi-tensor ops (as torch.optim's steps) instead of four per parameter
            pull = torch._foreach_sub(params, anchor)  # theta - theta*
            torch._foreach_mul_(pull, omega)
            torch._foreach_mul_(pull, 2 * lr * self.cfg.lam)
            torch._foreach_sub_(params, pull)

    def _aligned(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None:
        """(parameters, omega, anchor), aligned lists over the trainable parameters with importance;
        None before the first task ends."""
        omega, anchor = self._get("omega"), self._get("anchor")
        if not omega:
            return None
        params = trainable(model)
        names = [n for n in omega if n in params]
        if not names:
            return None
        return [params[n] for n in names], [omega[n] for n in names], [anchor[n] for n in names]
