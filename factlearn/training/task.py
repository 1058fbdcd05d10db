"""Training one task: the epochs, the learning-rate schedule, mid-task checkpoints and stopping
(on Ctrl-C, or at a plateau of the validation top-1).

The epoch order is drawn from a generator seeded by (seed, task, epoch) and the learning rate is a
pure function of the step (:func:`factlearn.training.schedule.lr_at`), so a task continued from a
mid-task checkpoint takes exactly the steps an uninterrupted one takes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..continual.base import Method, QuadraticPenalty
from ..data.images import to_model_input
from ..distributed import data_parallel
from ..errors import Interrupted
from ..progress import phase, progress_bar
from .schedule import Plateau, lr_at, task_steps
from .session import Session, Wildcards
from .signals import StopRequest
from .state import Partial, load_optimizer, set_rng_state
from .step import StepInput, train_step

logger = logging.getLogger(__name__)


def train_task(
    s: Session,
    t: int,
    resume: Partial | None = None,
    save: Callable[[int, int, int, torch.optim.Optimizer, Plateau | None], Path] | None = None,
    stop: StopRequest | None = None,
    on_step: Callable[[int, float, float, float], None] | None = None,
) -> int:
    """Train task t of session ``s`` from its start, or from the mid-task checkpoint ``resume``;
    the method's ``before_task`` / ``after_task`` hooks frame it. Returns the epochs trained.

    ``save(epoch, batch, steps_done, optimizer, plateau)`` writes a mid-task checkpoint at that
    position (the next step to take). It is called every ``train.checkpoint_every`` steps, and when
    ``stop`` is requested (Ctrl-C), after which :class:`Interrupted` is raised.

    With ``train.val_fraction`` the task is trained to a plateau: after every epoch the validation
    top-1 (:meth:`Session.validate`) goes into a :class:`Plateau`, and the task ends once it has not
    improved for ``train.patience`` epochs (``train.epochs`` is the maximum). A checkpoint at the end
    of an epoch is taken after that epoch's validation and holds the plateau, so a resumed task
    stops at the same epoch.

    ``on_step(done, loss, penalty, lr)`` is called after every step (``done``: the steps of the task
    taken so far, 1-based), with values the step computed: logging (:mod:`.logs`) changes nothing.

    ``train.batch_size`` is the global batch: with several ranks each takes its share of it
    (``batch[rank::world]``) and DDP averages the gradients, so the steps are those of one process.
    """
    task, cfg, model = s.tasks[t], s.cfg.train, s.model
    stage = s.stage(t)  # the task itself, or the union so far for joint training
    rows = s.rows(stage, test=False)
    targets_all, wildcards = s.labels(stage.facts, rows)  # (N,), the rule: (B, F_t) rows per batch
    fact_tokens = s.tokens[stage.facts].to(s.device)
    fact_mask = s.slot_mask[stage.facts].to(s.device)
    opt = s.optimizer()
    s.method.before_task(model, s.task_data(task))
    first_epoch = first_batch = 0
    plateau = Plateau.from_state(cfg.patience, resume and resume.plateau, resume and resume.folder) \
        if cfg.val_fraction else None
    if resume is not None:
        # After before_task: the checkpoint holds the method's mid-task state (SI's path integral).
        s.method.load_state_dict(resume.method, s.device)
        load_optimizer(opt, resume.trainer, resume.optimizer, resume.folder)
        set_rng_state(resume.trainer, s.device)
        first_epoch, first_batch = resume.epoch, resume.batch
    model.train()
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total_steps = task_steps(len(rows), cfg.batch_size, cfg.epochs)
    done = first_epoch * steps_per_epoch + first_batch
    bar = progress_bar(total=total_steps, initial=done, desc=f"train {task.name}", unit="step", disable=not s.progress)

    def checkpoint(epoch: int, batch: int) -> None:
        """The position (epoch, batch) is reached: save there when asked to stop or when it is time."""
        if save is None:
            return
        if s.dist.any(stop is not None and stop.requested):
            folder = save(epoch, batch, done, opt, plateau)
            raise Interrupted(f"stopped in task {task.name} after step {done} of {total_steps}; "
                              f"checkpoint {folder}. Run the same command with --resume to continue "
                              "from there.")
        ending = plateau is not None and plateau.stopped  # the task ends here: its own checkpoint follows
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_steps and not ending:
            save(epoch, batch, done, opt, plateau)

    try:
        with data_parallel(model, s.dist, cfg.sync_batch_norm) as forward:
            for epoch in range(first_epoch, cfg.epochs):
                if plateau is not None and plateau.stopped:
                    break  # resumed from the checkpoint of the epoch it stopped after
                gen = torch.Generator().manual_seed(s.seed * 1_000_003 + t * 1009 + epoch)
                order = torch.randperm(len(rows), generator=gen)
                for batch in range(first_batch if epoch == first_epoch else 0, steps_per_epoch):
                    sel = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]  # the global batch
                    mine = s.dist.take(sel)
                    x = to_model_input(s.images[rows[mine.numpy()]].to(s.device))
                    lr = lr_at(done, total_steps, cfg.lr, cfg.lr_schedule)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    batch_in = step_input(s, x, targets_all[sel], targets_all[mine], wildcards, fact_tokens,
                                          fact_mask, step_generator(s.seed, t, done),
                                          s.dist.share(len(mine), len(sel)))
                    loss, penalty = train_step(model, s.method, opt, forward, batch_in, s.cfg.loss, s.dist,
                                               f"task {task.name} (step {done + 1})")
                    done += 1
                    if on_step is not None:
                        on_step(done, loss, penalty, lr)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", penalty=f"{penalty:.3f}")
                    if batch + 1 < steps_per_epoch:
                        checkpoint(epoch, batch + 1)
                if plateau is not None:
                    plateau.update(s.validate(stage))
                    bar.set_postfix(val_top1=f"{plateau.scores[-1]:.3f}", best=f"{plateau.best:.3f}")
                checkpoint(epoch + 1, 0)
    finally:
        bar.close()
    epochs = cfg.epochs if plateau is None else len(plateau.scores)
    if plateau is not None:
        s.validation[task.name] = list(plateau.scores)
    if epochs < cfg.epochs:
        logger.info("task %s stopped after epoch %d of %d: validation top-1 %.3f, no better than %.3f %d epochs "
                    "before", task.name, epochs, cfg.epochs, plateau.scores[-1], plateau.best, plateau.since_best)
    what = "importance" if isinstance(s.method, QuadraticPenalty) else "state"
    computes = type(s.method).after_task is not Method.after_task  # finetune has nothing to compute
    with phase(f"{s.method.name} {what} after {task.name}", s.progress and computes):
        s.method.after_task(model, s.importance_data(t))
    return epochs


def step_input(s: Session, x: torch.Tensor, global_targets: torch.Tensor, targets: torch.Tensor,
               wildcards: Wildcards, fact_tokens: torch.Tensor, fact_mask: torch.Tensor, gen: torch.Generator,
               share: float = 1.0) -> StepInput:
    """One step's input: the images ``x`` of this rank's ``targets`` (indices into the stage's facts)
    and the facts they are scored against, per ``loss.negatives`` (auto: by the stage's size):
    every fact of the stage (``fact_tokens``, ``fact_mask``), or the global batch's own
    (``global_targets``) plus K drawn by ``gen``, with the targets and the wildcard exclusion
    re-indexed into that set."""
    if s.cfg.loss.negatives_for(len(fact_tokens)) == "sampled":
        facts = sample_facts(global_targets, len(fact_tokens), s.cfg.loss.num_negatives, gen)
        exclude = wildcards.exclude(targets, facts)
        targets = torch.searchsorted(facts, targets)  # (b,) into the sampled facts
        step_facts = facts.to(s.device)
        tokens, mask = fact_tokens[step_facts], fact_mask[step_facts]
    else:
        exclude, tokens, mask = wildcards[targets], fact_tokens, fact_mask
    return StepInput(x, targets.to(s.device), exclude.to(s.device), tokens, mask, share)


def step_generator(seed: int, t: int, step: int) -> torch.Generator:
    """The generator of step ``step`` (0-based, within task t) of the run with ``seed``: a pure
    function of the step's position, so a resumed task draws what an uninterrupted one draws."""
    state = np.random.SeedSequence([seed, 13, t, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_facts(batch_targets: torch.Tensor, num_facts: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``loss.negatives: sampled``: the facts one step scores its batch against, as sorted indices
    into the stage's ``num_facts`` facts: those of ``batch_targets`` (the global batch's, so every
    rank takes the same set) and ``k`` others drawn uniformly without replacement by ``gen`` (all
    the others when fewer remain: then the set is the stage's facts in their order, as with ``all``)."""
    in_batch = torch.zeros(num_facts, dtype=torch.bool)
    in_batch[batch_targets] = True
    others = torch.randperm(num_facts, generator=gen)
    others = others[~in_batch[others]][:k]
    return torch.cat([torch.unique(batch_targets), others]).sort().values
