"""Resume: what a checkpoint holds besides the weights, and restoring a run from its checkpoints.

Mid-task checkpoints hold the optimizer's per-parameter state and the RNG (trainer.safetensors),
the position in the task (state.json) and the method's state; the epoch order is drawn from a
generator seeded by (seed, task, epoch) (:mod:`factlearn.training.task`), so a run resumed from
any checkpoint takes exactly the steps an uninterrupted one takes (bit-identical on CPU).

Resume continues only on the run's own data: the run records its data's fingerprint when it starts
(data.json, :mod:`factlearn.data.fingerprint`) and :func:`check_resume` refuses data that differs
from it, naming what changed. A fresh start that fails before anything was trained leaves nothing
behind (:func:`discard_start`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..data.fingerprint import fingerprint_difference
from ..data.manifest import Dataset
from ..errors import UserError
from ..io import read_json
from ..results import METRICS, PROTOCOLS
from ..results import FILE as METRICS_FILE
from ..run import RUN_FILES, STATE, RunDir, load_weights, read_tensors
from .logs import LOG_DIR
from .session import Session

logger = logging.getLogger(__name__)

TOKENIZER = "tokenizer.json"  # the language tower's tokenizer, for other tools (factlearn.model.vocab)


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
        _check_can_create(run.path)
        return True
    if not run.path.is_dir():
        raise UserError(f"--out {run.path} exists and is not a directory")
    if not os.access(run.path, os.W_OK | os.X_OK):
        raise UserError(f"--out {run.path}: permission denied (this user cannot write there)")
    names = {p.name for p in run.path.iterdir()}
    if all(n in RUN_FILES or n in ("run.json", TOKENIZER, LOG_DIR) or n.startswith(".") for n in names):
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


def _check_can_create(path: Path) -> None:
    """The nearest existing folder above ``path`` is one this user can create ``path`` in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: cannot create it, permission denied in {parent}")


# Keys that may differ on --resume: they change how often a run is saved or what it logs, not what it computes.
RESUME_MAY_CHANGE = {"train.checkpoint_every", "train.log"}


def check_resume(run: RunDir, cfg: Config, seed: int, dataset: Dataset, fingerprint: dict,
                 data_dir: str | Path) -> None:
    """``--resume``: config (but RESUME_MAY_CHANGE), seed and data must be the run's own. The data's
    fingerprint must equal data.json's (a run written before the fingerprint existed is not
    checked, with a warning) and its facts those of facts.json; otherwise a one-line UserError says
    what differs. Cheap: called before the images are decoded; :func:`restore` checks the rest."""
    num_facts = len(dataset.facts.facts)
    saved_cfg = comparable_config(run.config(), num_facts)
    for key, value in comparable_config(cfg, num_facts).items():
        if key not in RESUME_MAY_CHANGE and saved_cfg.get(key) != value:
            raise UserError(f"--resume: config {key} is {value!r} here but {saved_cfg.get(key)!r} in "
                            f"{run.file('config.yaml')}; resume with the run's own config")
    info = run.require()
    if info.get("seed") != seed:
        raise UserError(f"--resume: --seed {seed} differs from the run's seed {info.get('seed')}")
    saved = run.data_fingerprint()
    if saved is None:
        logger.warning("%s has no %s (written by an older factlearn): --resume cannot check that %s is the "
                       "data the run trained on", run.path, run.file("data.json").name, data_dir)
    else:
        changed = fingerprint_difference(saved, fingerprint)
        if changed is not None:
            raise UserError(f"--resume: {data_dir} is not the data the run trained on: {changed} (recorded in "
                            f"{run.file('data.json')}); resume with the run's own data or start a new run")
    if run.facts().facts != dataset.facts.facts:
        raise UserError(f"--resume: the facts of {data_dir} differ from the run's ({run.file('facts.json')}); "
                        "resume with the run's own data or start a new run")


def discard_start(run: RunDir, created: bool) -> None:
    """After a fresh start failed: remove what it wrote, unless a checkpoint (a task's or mid-task)
    is complete, which ``--resume`` can continue. ``created``: the directory did not exist before,
    and goes too; otherwise only the run's files go and the (user's) directory stays."""
    if any(run.path.glob(f"checkpoints/*/{STATE}")) or any(run.path.glob(f"partial/*/{STATE}")):
        return
    if created:
        shutil.rmtree(run.path, ignore_errors=True)
        return
    for name in (*RUN_FILES, TOKENIZER, "run.json", METRICS_FILE, ".lock"):
        run.file(name).unlink(missing_ok=True)
    for folder in ("checkpoints", "partial", LOG_DIR):
        shutil.rmtree(run.file(folder), ignore_errors=True)


def restore(run: RunDir, s: Session) -> tuple[int, dict, dict[str, int], Partial | None]:
    """Load the last complete checkpoint (after :func:`check_resume`): the saved split and
    vocabulary must match the session's. Reads only (every rank loads the same files; the caller
    rewrites what a crash may have left stale).

    Returns the first task to train, the metric rows so far, the epochs each completed task trained
    (:func:`epochs_trained`), and the mid-task checkpoint to continue that task from (None: from its
    start).
    """
    tasks = run.tasks()
    if [(t.name, t.facts) for t in tasks] != [(t.name, t.facts) for t in s.tasks]:
        raise UserError(f"--resume: the data's split differs from {run.file('split.json')}")
    words = run.read_json("vocab.json")
    if words != s.vocab.words[2:]:
        what = "is malformed" if not isinstance(words, list) else "differs from the words of the data's facts"
        raise UserError(f"--resume: {run.file('vocab.json')} {what}")
    names = [task.name for task in s.tasks]
    done = run.completed()
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    epochs: dict[str, int] = {}
    if done:
        folder = run.checkpoint(done[-1])
        state = checkpoint_state(folder)  # checked before the weights are touched
        rows, epochs = metric_rows(state, folder, names, len(done)), epochs_trained(state, folder)
        s.validation.update(validation_curves(state, folder))
        load_weights(s.model, folder / "model.safetensors")
        s.method.load_state_dict(read_tensors(folder / "method.safetensors"), s.device)
        if (folder / "trainer.safetensors").is_file():  # runs from before it existed: no RNG to restore
            set_rng_state(trainer_tensors(folder), s.device)
    t, found = len(done), run.latest_partial()
    if found is None or t == len(s.tasks) or found[1].get("task") != t or found[1].get("name") != s.tasks[t].name:
        return t, rows, epochs, None
    folder, state = found
    try:
        epoch, batch, optimizer = int(state["epoch"]), int(state["batch"]), dict(state["optimizer"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / STATE} is malformed: no epoch, batch or optimizer") from None
    if not 0 <= epoch <= s.cfg.train.epochs or batch < 0 or not all(
            isinstance(k, str) and (v is None or isinstance(v, (int, float))) for k, v in optimizer.items()):
        raise UserError(f"{folder / STATE} is malformed: a position or optimizer value out of range")
    rows = metric_rows(state, folder, names, t)
    load_weights(s.model, folder / "model.safetensors")
    partial = Partial(folder, epoch, batch, read_tensors(folder / "method.safetensors"),
                      trainer_tensors(folder), optimizer, state.get("plateau"))
    logger.info("resuming task %s at epoch %d, batch %d from %s", state["name"], epoch + 1, batch, folder)
    return t, rows, epochs, partial


def checkpoint_state(folder: Path) -> dict:
    """A checkpoint folder's state.json (position, metric rows, epochs); malformed is a UserError."""
    state = read_json(folder / STATE)
    if not isinstance(state, dict):
        raise UserError(f"{folder / STATE} is malformed: expected a JSON object")
    return state


def trainer_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """trainer.safetensors, its RNG states checked (a wrong one would fail inside torch)."""
    path = folder / "trainer.safetensors"
    tensors = read_tensors(path)
    for key in ("rng.cpu", "rng.cuda"):
        if key in tensors and (tensors[key].dtype != torch.uint8 or tensors[key].dim() != 1):
            raise UserError(f"{path} is malformed: {key} is not an RNG state")
    if "rng.cpu" in tensors and tensors["rng.cpu"].shape != torch.get_rng_state().shape:
        raise UserError(f"{path} is malformed: rng.cpu is not an RNG state")
    return tensors


def metric_rows(state: object, folder: Path, tasks: list[str], trained: int) -> dict[str, list[dict]]:
    """The metric rows so far from a checkpoint's state.json: per protocol, one row per task
    trained (``trained`` rows), each holding the metrics of every task of the sequence (``tasks``).
    Malformed is a UserError naming the file."""
    rows = state.get("rows") if isinstance(state, dict) else None
    where = folder / STATE
    if not isinstance(rows, dict) or set(rows) != set(PROTOCOLS) or not all(isinstance(r, list) for r in rows.values()):
        raise UserError(f"{where} is malformed: no metric rows")
    for proto, per_task in rows.items():
        if len(per_task) != trained:
            raise UserError(f"{where} is malformed: {len(per_task)} {proto} metric rows for {trained} tasks trained")
        for row in per_task:
            if not isinstance(row, dict) or not all(
                    isinstance(row.get(name), dict) and all(isinstance(row[name].get(m), (int, float)) for m in METRICS)
                    for name in tasks):
                raise UserError(f"{where} is malformed: a {proto} metric row lacks a task's {', '.join(METRICS)}")
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


def comparable_config(cfg: Config, num_facts: int) -> dict:
    """The flat config (:func:`flatten_config`) as runs over a data set of ``num_facts`` facts
    compare it (``--resume``, ``--start-from``, a reproduction's existing runs): ``loss.negatives``
    as what it does for a stage of at most that many facts, so that ``auto`` (the default since
    the crossover was measured) and the ``all`` a run saved before then agree where they train alike."""
    flat = flatten_config(cfg.to_dict())
    flat["loss.negatives"] = cfg.loss.negatives_for(num_facts)
    return flat
