"""Starting a run from another run's first task: ``factlearn train --start-from PARENT``.

Training the first task is the same for most methods: none of them protects anything yet, and
their state is made only after the task (MAS's and EWC's importance, LwF's old model, the anchor).
So the variants of an experiment that differ only after the first task (every lambda of a sweep,
every method but SI, the adaptation and control variants of MAS) can share one trained first task
per seed instead of each training it again (issue 17: "reuse one B1 checkpoint per seed").

A forked run takes the parent's checkpoint after the first task (the weights, the RNG state, the
metric rows, the epochs and the validation curve), lets its own method compute its state from the
first task's data as if it had trained it (``after_task``), saves that as its own first
checkpoint, and trains the remaining tasks. It ends bit-identical to the same run trained from
scratch (tests/test_fork.py), provided that:

- the parent's method keeps no state and draws no random number in the first task or after it
  (finetune, joint: :data:`PARENTS`), so its checkpoint is what any method holds before its own
  ``after_task``;
- the child's method trains the first task as finetuning does (``Method.first_task_as_finetune``:
  every method but SI, whose path integral runs during every task);
- the two runs share the data (fingerprint), the task sequence, the seed and every configuration
  key outside ``method`` (and those :data:`RESUME_MAY_CHANGE` allows).

Anything else is refused with one line saying what differs. The forked run's train.log starts at
its second task; run.json names the parent (``started_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..continual import METHODS
from ..data.fingerprint import fingerprint_difference
from ..errors import UserError
from ..run import STATE, RunDir, load_weights
from .session import Session
from .state import (RESUME_MAY_CHANGE, checkpoint_state, comparable_config, epochs_trained, metric_rows, set_rng_state,
                    trainer_tensors, validation_curves)

PARENTS = ("finetune", "joint")  # methods whose first-task checkpoint holds nothing of their own


@dataclass
class FirstTask:
    """What a forked run takes from its parent: the checkpoint after the first task and its rows."""

    parent: Path  # the parent run directory
    folder: Path  # its checkpoint after the first task
    rows: dict[str, list[dict]]  # metric rows (one per protocol: the first task's)
    epochs: dict[str, int]
    validation: dict[str, list[float]]


def check_parent(parent_dir: str | Path, cfg: Config, seed: int, fingerprint: dict, s: Session) -> FirstTask:
    """The parent's checkpoint after the first task, once everything the bit-identity rests on is
    checked (see the module's doc); a one-line UserError naming the difference otherwise."""
    parent = RunDir(parent_dir)
    info = parent.require()
    where = f"--start-from {parent.path}"
    child = METHODS[cfg.method.name]
    if not child.first_task_as_finetune:
        raise UserError(f"{where}: method {cfg.method.name!r} trains its first task differently from finetuning "
                        "(its state runs during every task); train it from the start")
    parent_cfg = parent.config()
    if parent_cfg.method.name not in PARENTS:
        raise UserError(f"{where}: its method is {parent_cfg.method.name!r}; the parent must be a run of "
                        f"{' or '.join(PARENTS)} (their first checkpoint holds no state of their own)")
    if len(s.tasks) < 2:
        raise UserError(f"{where}: the task sequence has one task; there is nothing to train after it")
    num_facts = len(s.dataset.facts.facts)
    mine, theirs = comparable_config(cfg, num_facts), comparable_config(parent_cfg, num_facts)
    for key, value in mine.items():
        if not key.startswith("method.") and key not in RESUME_MAY_CHANGE and theirs.get(key) != value:
            raise UserError(f"{where}: config {key} is {theirs.get(key)!r} there but {value!r} here; only the "
                            "method section may differ")
    if info.get("seed") != seed:
        raise UserError(f"{where}: its seed is {info.get('seed')}, here --seed {seed}")
    saved = parent.data_fingerprint()
    changed = "it records no fingerprint" if saved is None else fingerprint_difference(saved, fingerprint)
    if changed is not None:
        raise UserError(f"{where}: it was trained on other data ({changed})")
    if [(t.name, t.facts) for t in parent.tasks()] != [(t.name, t.facts) for t in s.tasks]:
        raise UserError(f"{where}: its task sequence differs from this run's")
    first = s.tasks[0].name
    folder = parent.checkpoint(first)
    if first not in parent.completed() or not (folder / STATE).is_file():
        raise UserError(f"{where}: it has no complete checkpoint after {first} yet")
    state = checkpoint_state(folder)
    return FirstTask(parent.path, folder, metric_rows(state, folder, [t.name for t in s.tasks], 1),
                     epochs_trained(state, folder), validation_curves(state, folder))


def take_first_task(first: FirstTask, s: Session) -> None:
    """Put the parent's first task into the session (weights, RNG state, validation curve) and let
    the method compute its state from the first task's data, as a run that trained it would."""
    load_weights(s.model, first.folder / "model.safetensors")
    set_rng_state(trainer_tensors(first.folder), s.device)
    s.validation.update(first.validation)
    s.method.before_task(s.model, s.task_data(s.tasks[0]))  # e.g. importance_data decoded, as in training
    s.method.after_task(s.model, s.importance_data(0))
