"""Resume: what a checkpoint holds besides the weights, and restoring a run from its checkpoints.

Mid-task checkpoints hold the optimizer's per-parameter state and the RNG (trainer.safetensors),
the position in the task (state.json) and the method's state; the epoch order is drawn from a
generator seeded by (seed, task, epoch) (:mod:`factlearn.training.task`), so a run resumed from
any checkpoint takes exactly the steps an uninterrupted one takes (bit-identical on CPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..errors import UserError
from ..io import read_json
from ..results import PROTOCOLS
from ..run import RUN_FILES, RunDir, load_weights, read_tensors
from .session import Session

logger = logging.getLogger(__name__)


@dataclass
class Partial:
    """A mid-task checkpoint to continue from: the position (the next step) and the states."""

    folder: Path
    epoch: int
    batch: int
    method: dict[str, torch.Tensor]
    trainer: dict[str, torch.Tensor]  # optimizer.<param index>.<key>, rng.cpu, rng.cuda
    optimizer: dict  # "<param index>.<key>" -> the optimizer state's non-tensor values
    plateau: dict | None = None  # train.val_fraction: the validation scores so far (Plateau.state_dict)


def trainer_state(
    device: torch.device, opt: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """The RNG state and the optimizer's per-parameter state, split into tensors (safetensors) and
    non-tensor values (JSON). Param groups are not saved: they follow from the (checked) config."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    scalars: dict = {}
    for idx, values in (opt.state_dict()["state"] if opt is not None else {}).items():
        for key, v in values.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = v
            else:
                scalars[f"{idx}.{key}"] = v
    return tensors, scalars


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict, where: Path) -> None:
    """Restore what :func:`trainer_state` saved of ``opt``; shapes are checked against the parameters."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    try:
        for name, t in tensors.items():
            if name.startswith("optimizer."):
                _, idx, key = name.split(".", 2)
                state.setdefault(int(idx), {})[key] = t
        for name, v in scalars.items():
            idx, key = name.split(".", 1)
            state.setdefault(int(idx), {})[key] = v
    except ValueError:
        raise UserError(f"{where}: malformed optimizer state") from None
    for idx, values in state.items():
        if not 0 <= idx < len(params) or any(
            isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != params[idx].shape for v in values.values()
        ):
            raise UserError(f"{where}: the optimizer state does not match the model config")
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def set_rng_state(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore the RNG state :func:`trainer_state` saved (CUDA's only on a CUDA device)."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def check_out_dir(run: RunDir, resume: bool) -> bool:
    """True when the run starts from scratch; refuses to write into anything that is not ours.

    A run directory holding only the files written at the start (a run that failed or was
    stopped before its first checkpoint) has nothing to lose: it starts again without --resume.
    """
    if not run.path.exists():
        return True
    if not run.path.is_dir():
        raise UserError(f"--out {run.path} exists and is not a directory")
    names = {p.name for p in run.path.iterdir()}
    if all(n in RUN_FILES or n == "run.json" or n.startswith(".") for n in names):
        if resume and run.is_run():
            run.require()
            return False  # nothing trained yet, but its config and split are checked all the same
        return True  # empty, or cut short before run.json: nothing trained yet
    if not resume:
        raise UserError(f"--out {run.path} exists and is not empty (use --resume to continue a run)")
    if not run.is_run():
        raise UserError(f"--resume: {run.path} is not a factlearn run directory (no run.json)")
    run.require()
    return False


# Keys that may differ on --resume: they change how often a run is saved, not what it computes.
RESUME_MAY_CHANGE = {"train.checkpoint_every"}


def restore(run: RunDir, s: Session, cfg: Config, seed: int) -> tuple[int, dict, dict[str, int], Partial | None]:
    """Load the last complete checkpoint: the saved config, split and seed must match. Reads only
    (every rank loads the same files; the caller rewrites what a crash may have left stale).

    Returns the first task to train, the metric rows so far, the epochs each completed task trained
    (:func:`epochs_trained`), and the mid-task checkpoint to continue that task from (None: from its
    start).
    """
    saved = flatten_config(run.config().to_dict())
    for key, value in flatten_config(cfg.to_dict()).items():
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            raise UserError(f"--resume: config {key} is {value!r} here but {saved.get(key)!r} in "
                            f"{run.file('config.yaml')}; resume with the run's own config")
    tasks = run.tasks()
    if [(t.name, t.facts) for t in tasks] != [(t.name, t.facts) for t in s.tasks]:
        raise UserError(f"--resume: the data's split differs from {run.file('split.json')}")
    info = run.require()
    if info.get("seed") != seed:
        raise UserError(f"--resume: --seed {seed} differs from the run's seed {info.get('seed')}")
    done = run.completed()
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    epochs: dict[str, int] = {}
    if done:
        folder = run.checkpoint(done[-1])
        load_weights(s.model, folder / "model.safetensors")
        s.method.load_state_dict(read_tensors(folder / "method.safetensors"), s.device)
        if (folder / "trainer.safetensors").is_file():  # runs from before it existed: no RNG to restore
            set_rng_state(read_tensors(folder / "trainer.safetensors"), s.device)
        state = read_json(folder / "state.json")
        rows, epochs = metric_rows(state, folder), epochs_trained(state, folder)
        s.validation.update(validation_curves(state, folder))
    t, found = len(done), run.latest_partial()
    if found is None or t == len(s.tasks) or found[1].get("task") != t or found[1].get("name") != s.tasks[t].name:
        return t, rows, epochs, None
    folder, state = found
    try:
        epoch, batch, optimizer = int(state["epoch"]), int(state["batch"]), dict(state["optimizer"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / 'state.json'} is malformed: no epoch, batch or optimizer") from None
    load_weights(s.model, folder / "model.safetensors")
    partial = Partial(folder, epoch, batch, read_tensors(folder / "method.safetensors"),
                      read_tensors(folder / "trainer.safetensors"), optimizer, state.get("plateau"))
    logger.info("resuming task %s at epoch %d, batch %d from %s", state["name"], epoch + 1, batch, folder)
    return t, metric_rows(state, folder), epochs, partial


def metric_rows(state: object, folder: Path) -> dict[str, list[dict]]:
    """The metric rows so far from a checkpoint's state.json; malformed is a UserError naming it."""
    rows = state.get("rows") if isinstance(state, dict) else None
    if not isinstance(rows, dict) or set(rows) != set(PROTOCOLS):
        raise UserError(f"{folder / 'state.json'} is malformed: no metric rows")
    return rows


def epochs_trained(state: object, folder: Path) -> dict[str, int]:
    """Task name -> epochs it trained (fewer than train.epochs when it stopped at a plateau), from a
    checkpoint's state.json; empty for checkpoints written before it was recorded."""
    epochs = state.get("epochs", {}) if isinstance(state, dict) else None
    if not isinstance(epochs, dict) or not all(isinstance(v, int) for v in epochs.values()):
        raise UserError(f"{folder / 'state.json'} is malformed: epochs is not a task -> count mapping")
    return epochs


def validation_curves(state: object, folder: Path) -> dict[str, list[float]]:
    """Task name -> its validation top-1 after each epoch (``train.val_fraction``), from a
    checkpoint's state.json; empty when there was no validation or it was not recorded."""
    curves = state.get("validation", {}) if isinstance(state, dict) else None
    if not isinstance(curves, dict) or not all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
                                               for v in curves.values()):
        raise UserError(f"{folder / 'state.json'} is malformed: validation is not a task -> scores mapping")
    return {k: [float(x) for x in v] for k, v in curves.items()}


def flatten_config(cfg: dict) -> dict:
    """Config.to_dict() -> {"section.key": value}."""
    return {f"{section}.{key}": v for section, values in cfg.items() for key, v in values.items()}
