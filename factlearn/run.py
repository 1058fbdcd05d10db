"""The run directory: everything ``evaluate`` and ``query`` need, written as training goes.

Layout::

    RUN_DIR/
      run.json            version, data directory, method, seed, tasks completed, epochs per task
      config.yaml         the resolved configuration
      facts.json          the fact table (ids = positions) with semantic groups
      vocab.json          the language tower's words
      split.json          the task sequence (fact ids per task)
      data.json           the fingerprint of the data trained on (factlearn.data.fingerprint: the
                          manifest's hash, the fact table's, each image's size and modification
                          time); `train --resume` refuses data that differs from it
      metrics.json        accuracy matrix and final per-task numbers (after every task)
      checkpoints/<TASK>/ after each task: model.safetensors, method.safetensors,
                          trainer.safetensors (RNG state), state.json (metric rows so far)
      partial/<TASK>-step<N>/  mid-task (train.checkpoint_every, Ctrl-C): the same files, and
                          trainer.safetensors also holds the optimizer state; state.json adds the
                          position in the task (epoch, batch), the optimizer's non-tensor
                          values and the plateau's state (train.val_fraction). Only the
                          newest is kept, removed once the task's checkpoint is.
      diverged.json       only when training diverged (a non-finite loss): the task and the message
      .lock               held (flock) by the process training into the directory; taking it
                          removes the temporaries a killed writer left (factlearn.io)

A checkpoint folder is complete once its ``state.json`` is written: every file is written
atomically (:mod:`factlearn.io`) and state.json last, so a folder cut short by a crash has none
and is ignored (the tasks completed are those with a complete checkpoint, in split order).

Weights are safetensors and everything else JSON/YAML: loading never unpickles. Weights that are
not finite are refused when loaded.

Versions: run.json and every safetensors file record ``factlearn_version``; a run is read by
any factlearn of the same MAJOR version (the major version goes up when the layout or the
checkpoint format changes incompatibly). Another major version is a UserError naming both.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import torch
import yaml
from safetensors import SafetensorError, safe_open

from . import __version__
from .config import Config, from_dict
from .data.fingerprint import check_fingerprint, fingerprint_text
from .data.splits import Task, load_split
from .errors import UserError
from .facts import FactTable
from .io import (atomic_save_tensors, atomic_write_json, atomic_write_text, read_json, read_yaml_document,
                 remove_stale_temporaries)
from .model import FactModel, Vocabulary, create_model


STATE = "state.json"  # written last into a checkpoint folder: marks it complete
DATA = "data.json"  # the fingerprint of the data trained on
DIVERGED = "diverged.json"  # training stopped at a non-finite loss (RunDir.mark_diverged)
RUN_FILES = ("config.yaml", "facts.json", "vocab.json", "split.json", DATA)  # written before run.json


class MethodState(Protocol):
    """What a checkpoint keeps of a continual-learning method (:class:`factlearn.continual.Method`):
    its name and its tensors. A protocol, so the run directory does not depend on the methods."""

    name: str

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The method's tensors to checkpoint."""
        ...


def check_version(version: object, where: Path) -> None:
    """A run or checkpoint is readable when written by the same major version of factlearn."""
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        raise UserError(f"{where}: no valid factlearn_version ({version!r}); not written by factlearn")
    if version.split(".")[0] != __version__.split(".")[0]:
        raise UserError(f"{where} was written by factlearn {version}, which this factlearn {__version__} "
                        f"cannot read (runs are compatible within a major version)")


class RunDir:
    """A run directory (layout above): paths, the lock, JSON files, checkpoints and loading the model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- paths -----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Path of a file at the top of the run directory."""
        return self.path / name

    def checkpoint(self, task: str) -> Path:
        """Folder of the checkpoint after ``task``."""
        return self.path / "checkpoints" / task

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` in the directory (created if missing) while writing to it: a second process
        training into the same run directory is refused instead of mixing its files in. The lock
        goes with the process, however it ends. Once it is held, the temporaries of writers that
        were killed are removed (:func:`factlearn.io.remove_stale_temporaries`). A directory that
        cannot be written is a UserError. (No locking where fcntl is missing, e.g. Windows.)"""
        try:
            import fcntl
        except ImportError:
            fcntl = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / ".lock", "w")
        except OSError as exc:
            if not isinstance(exc, (PermissionError, NotADirectoryError, FileExistsError)) and exc.errno != errno.EROFS:
                raise
            raise UserError(f"cannot write to {self.path}: {os.strerror(exc.errno).lower()}") from None
        with f:
            if fcntl is not None:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise UserError(f"{self.path} is in use by another factlearn process; wait for it to end") from None
            remove_stale_temporaries(self.path, recursive=True)
            yield

    def is_run(self) -> bool:
        """Whether the directory holds a run (its run.json)."""
        return self.file("run.json").is_file()

    def require(self) -> dict:
        """Check that this is a run directory of a compatible factlearn; returns run.json."""
        if not self.path.exists():
            raise UserError(f"run directory not found: {self.path}")
        if not self.path.is_dir() or not self.is_run():
            raise UserError(f"{self.path} is not a factlearn run directory (no run.json)")
        info = self.read_json("run.json")
        if not isinstance(info, dict):
            raise UserError(f"{self.file('run.json')} is malformed: expected a JSON object")
        check_version(info.get("factlearn_version"), self.file("run.json"))
        return info

    def data_dir(self) -> str:
        """The data directory the run was trained on (from run.json)."""
        data = self.require().get("data")
        if not isinstance(data, str):
            raise UserError(f"{self.file('run.json')} names no data directory: give --data")
        return data

    # --- json ------------------------------------------------------------------------------
    def read_json(self, name: str) -> dict | list:
        """A JSON file of the run directory (missing or corrupt: a UserError naming it)."""
        return read_json(self.file(name))

    def write_json(self, name: str, obj: object) -> None:
        """Write a JSON file of the run directory atomically."""
        atomic_write_json(self.file(name), obj)

    def write_config(self, cfg: Config) -> None:
        """Write the resolved configuration to config.yaml atomically."""
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def config(self) -> Config:
        """The run's configuration, checked as strictly as a user's."""
        path = self.file("config.yaml")
        try:
            data = read_yaml_document(path)
        except FileNotFoundError:
            raise UserError(f"missing {path}") from None
        if not data:  # training writes every section: an empty file is a damaged one, not the defaults
            raise UserError(f"{path} is malformed: it is empty")
        try:
            return from_dict(Config, data)
        except UserError as exc:
            raise UserError(f"{exc} [in {path}]") from None

    def facts(self) -> FactTable:
        """The run's fact table (ids are positions), checked to hold every fact split.json names."""
        data = self.read_json("facts.json")
        try:
            table = FactTable.from_json([row["fact"] for row in data])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.file('facts.json')} is malformed: {exc}") from None
        top = max((f for task in self.tasks() for f in task.facts), default=-1)
        if top >= len(table):
            raise UserError(f"{self.file('facts.json')} is malformed: it holds {len(table)} facts, but "
                            f"{self.file('split.json')} names fact {top}")
        return table

    def write_data_fingerprint(self, fingerprint: dict) -> None:
        """Write data.json (:func:`factlearn.data.fingerprint.data_fingerprint`) atomically."""
        atomic_write_text(self.file(DATA), fingerprint_text(fingerprint))

    def data_fingerprint(self) -> dict | None:
        """The fingerprint of the data the run trained on; None for a run written before it was recorded."""
        if not self.file(DATA).is_file():
            return None
        return check_fingerprint(self.read_json(DATA), self.file(DATA))

    def tasks(self) -> list[Task]:
        """The run's task sequence (split.json)."""
        return load_split(self.file("split.json"))

    def mark_diverged(self, task: str, message: str) -> None:
        """Record that training diverged in ``task`` (``diverged.json``): a result of its own (a
        lambda or learning rate too large for the optimizer), which experiment tools report instead
        of training the run again. Removed by :meth:`clear_diverged` once the run goes on."""
        atomic_write_json(self.file(DIVERGED), {"task": task, "message": message})

    def diverged(self) -> dict | None:
        """``diverged.json`` (the task and the message), or None when the run has not diverged."""
        path = self.file(DIVERGED)
        if not path.is_file():
            return None
        doc = read_json(path)
        return doc if isinstance(doc, dict) else {"task": None, "message": "diverged"}

    def clear_diverged(self) -> None:
        """Forget a divergence (a resumed run that trains on)."""
        self.file(DIVERGED).unlink(missing_ok=True)

    def completed(self) -> list[str]:
        """Names of the tasks whose checkpoint is complete (has its state.json), in training order."""
        done = []
        for task in self.tasks():
            if not (self.checkpoint(task.name) / STATE).is_file():
                break
            done.append(task.name)
        return done

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, task: str, model: FactModel, method: MethodState, state: dict,
                        trainer: dict[str, torch.Tensor] | None = None) -> Path:
        """The checkpoint after ``task`` (state: JSON, the metric rows so far); returns its folder."""
        folder = self.checkpoint(task)
        _write_checkpoint(folder, model, method, state, trainer)
        return folder

    def save_partial(self, task: str, step: int, model: FactModel, method: MethodState, state: dict,
                     trainer: dict[str, torch.Tensor]) -> Path:
        """A mid-task checkpoint after ``step`` steps of ``task``; once it is complete, older ones go."""
        folder = self.path / "partial" / f"{task}-step{step:06d}"
        if not (folder / STATE).is_file():  # complete already: the same position, resumed from
            _remove_checkpoint(folder)
            _write_checkpoint(folder, model, method, state, trainer)
        for old in self.partials():
            if old != folder:
                _remove_checkpoint(old)
        return folder

    def partials(self) -> list[Path]:
        """Every mid-task checkpoint folder, complete or not."""
        root = self.path / "partial"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def latest_partial(self) -> tuple[Path, dict] | None:
        """The newest complete mid-task checkpoint and its state.json (task index, position), or None."""
        best = None
        for folder in self.partials():
            if not (folder / STATE).is_file():
                continue
            state = read_json(folder / STATE)
            try:
                key = (int(state["task"]), int(state["step"]))
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{folder / STATE} is malformed: no task or step") from None
            if best is None or key > best[0]:
                best = (key, folder, state)
        return None if best is None else best[1:]

    def clear_partials(self) -> None:
        """Remove every mid-task checkpoint (once the task's own checkpoint is complete)."""
        for folder in self.partials():
            _remove_checkpoint(folder)
        if (self.path / "partial").is_dir() and not any((self.path / "partial").iterdir()):
            (self.path / "partial").rmdir()

    def load_model(self, task: str | None = None, device: str | torch.device = "cpu") -> tuple[FactModel, str]:
        """The model after ``task`` (default: the last completed task) and that task's name."""
        self.require()
        done = self.completed()
        if not done:
            raise UserError(f"{self.path} has no completed task yet")
        if task is None:
            task = done[-1]
        elif task not in done:
            raise UserError(f"--after {task}: not a completed task of {self.path} (completed: {', '.join(done)})")
        cfg = self.config()
        words = self.read_json("vocab.json")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise UserError(f"{self.file('vocab.json')} is malformed: expected a list of words")
        vocab = Vocabulary(words)
        model = create_model(cfg.model, vocab, from_checkpoint=True)  # word vectors come from the checkpoint
        load_weights(model, self.checkpoint(task) / "model.safetensors")
        return model.to(device).eval(), task


def _write_checkpoint(folder: Path, model: FactModel, method: MethodState, state: dict,
                      trainer: dict[str, torch.Tensor] | None) -> None:
    meta = {"factlearn_version": __version__}
    atomic_save_tensors(folder / "model.safetensors", model.state_dict(), meta)
    atomic_save_tensors(folder / "method.safetensors", method.state_dict(), {**meta, "method": method.name})
    if trainer is not None:
        atomic_save_tensors(folder / "trainer.safetensors", trainer, meta)
    atomic_write_json(folder / STATE, state)  # written last: marks the checkpoint complete


def _remove_checkpoint(folder: Path) -> None:
    # The marker goes first: a removal cut short never leaves a complete-looking folder behind.
    (folder / STATE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on CPU); missing, corrupt or of another major version of
    factlearn (its ``factlearn_version`` metadata, when it has one) is a UserError."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint file not found: {path}")
    try:  # safe_open's error would not tell a permission problem from a damaged file
        with open(path, "rb"):
            pass
    except PermissionError:
        raise UserError(f"cannot read checkpoint file {path}: permission denied") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint file {path} is corrupt: {exc}") from None
    if "factlearn_version" in meta:
        check_version(meta["factlearn_version"], path)
    return tensors


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights; a key or shape mismatch names the first offending tensor, and so
    does a weight that is not finite (NaN or inf: a damaged checkpoint)."""
    tensors = read_tensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise UserError(
            f"checkpoint {path} does not match the model config: {what} "
            f"({len(missing)} missing, {len(extra)} unexpected tensors)"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise UserError(
                f"checkpoint {path} does not match the model config: {name} has shape "
                f"{tuple(t.shape)}, the model expects {tuple(expected[name].shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"checkpoint {path} holds non-finite weights ({name} has NaN or inf values); "
                            "it cannot be used")
    model.load_state_dict(tensors)


def load(path: str | Path, task: str | None = None, device: str = "cpu") -> FactModel:
    """The trained model of a run directory (after ``task``, default the last completed one).

    The model has ``encode_images`` / ``encode_facts`` (normalised float32 embeddings) and its
    vocabulary; ``RunDir(path).facts()`` gives the fact table.
    """
    return RunDir(path).load_model(task, device)[0]
