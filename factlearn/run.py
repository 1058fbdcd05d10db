"""The run directory: everything ``evaluate`` and ``query`` need, written as training goes.

Layout::

    RUN_DIR/
      run.json            version, data directory, method, seed, tasks completed
      config.yaml         the resolved configuration
      facts.json          the fact table (ids = positions) with semantic groups
      vocab.json          the language tower's words
      split.json          the task sequence (fact ids per task)
      metrics.json        accuracy matrix and final per-task numbers (after every task)
      checkpoints/<TASK>/ model.safetensors, method.safetensors, state.json

Weights are safetensors and everything else JSON/YAML: loading never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import __version__
from .config import Config, from_dict
from .continual import Method
from .data.splits import Task, load_split
from .errors import UserError
from .facts import FactTable
from .io import atomic_save_tensors, atomic_write_json, atomic_write_text
from .model import FactModel, Vocabulary, create_model


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- paths -----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint(self, task: str) -> Path:
        return self.path / "checkpoints" / task

    def is_run(self) -> bool:
        return self.file("run.json").is_file()

    def require(self) -> None:
        if not self.path.is_dir():
            raise UserError(f"run directory not found: {self.path}")
        if not self.is_run():
            raise UserError(f"{self.path} is not a factlearn run directory (no run.json)")

    # --- json ------------------------------------------------------------------------------
    def read_json(self, name: str) -> dict | list:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"missing {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is corrupt: {exc}") from None

    def write_json(self, name: str, obj: object) -> None:
        atomic_write_json(self.file(name), obj)

    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def config(self) -> Config:
        path = self.file("config.yaml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"missing {path}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is corrupt: {exc}") from None
        try:
            return from_dict(Config, data)
        except UserError as exc:
            raise UserError(f"{exc} [in {path}]") from None

    def facts(self) -> FactTable:
        data = self.read_json("facts.json")
        try:
            return FactTable.from_json([row["fact"] for row in data])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.file('facts.json')} is malformed: {exc}") from None

    def tasks(self) -> list[Task]:
        return load_split(self.file("split.json"))

    def completed(self) -> list[str]:
        """Names of the tasks whose checkpoint is complete, in training order."""
        return list(self.read_json("run.json").get("completed", []))

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, task: str, model: FactModel, method: Method, state: dict) -> None:
        folder = self.checkpoint(task)
        meta = {"factlearn_version": __version__}
        atomic_save_tensors(folder / "model.safetensors", model.state_dict(), meta)
        atomic_save_tensors(folder / "method.safetensors", method.state_dict(), {**meta, "method": method.name})
        atomic_write_json(folder / "state.json", state)  # written last: marks the checkpoint complete

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
        vocab = Vocabulary(self.read_json("vocab.json"))
        model = create_model(cfg.model, vocab)
        load_weights(model, self.checkpoint(task) / "model.safetensors")
        return model.to(device).eval(), task


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"checkpoint file not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint file {path} is corrupt: {exc}") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights; a key or shape mismatch names the first offending tensor."""
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
    model.load_state_dict(tensors)


def load(path: str | Path, task: str | None = None, device: str = "cpu") -> FactModel:
    """The trained model of a run directory (after ``task``, default the last completed one).

    The model has ``encode_images`` / ``encode_facts`` (normalised float32 embeddings) and its
    vocabulary; ``RunDir(path).facts()`` gives the fact table.
    """
    return RunDir(path).load_model(task, device)[0]
