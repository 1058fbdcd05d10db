"""The experiments file (configs/reproduce/experiments.yaml): which suites train which methods on
which task sequences, at which scale.

The file's schema is typed dataclasses read by the library's strict loader
(:func:`factlearn.config.from_dict`): an unknown key, a missing one or a value of the wrong type
is a one-line :class:`UserError` naming the file and the key. Per scale the file names a base
config (model, train, ...: a factlearn config whose method section the methods file completes),
and one methods file gives, per scale and method, the method section's keys::

    scales:
      quick: {world: {preset: small, seed: 0}, config: quick.yaml}
    methods_file: methods.yaml
    split_seed: 0
    methods: [finetune, mas]
    suites:
      two-task: {split: random, tasks: 2}
      topic: {split: random, tasks: 4, group: colour, methods: [finetune, mas], importance: [mas]}
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


from ..config import Config, from_dict, read_yaml
from ..errors import UserError

SUITES = ("two-task", "four-task", "semantic", "adaptation", "topic")


@dataclass
class WorldSpec:
    """The built-in world of a scale: ``factlearn synth --preset PRESET --seed SEED``."""

    preset: str
    seed: int


@dataclass
class ScaleSpec:
    """A scale (quick, full): its world and its base config file (relative to the experiments file)."""

    world: dict  # a WorldSpec, read with its own keys checked
    config: str


@dataclass
class SuiteSpec:
    """A suite: its task sequence (split kind and number of tasks) and the methods it trains."""

    split: str
    tasks: int
    methods: list[str] | None = None  # default: the file's methods
    importance: list[str] = field(default_factory=list)  # adaptation, topic: also run with --importance-data
    group: str | None = None  # topic: the monitored group


@dataclass
class ExperimentsFile:
    """The top level of experiments.yaml."""

    scales: dict  # scale -> a ScaleSpec
    methods_file: str
    split_seed: int  # of the task files and of the train/test draw, the same for every run
    methods: list[str]
    suites: dict  # suite -> a SuiteSpec


@dataclass(frozen=True)
class Experiments:
    """The experiments file and the files it names, read and checked."""

    path: Path
    world: dict[str, WorldSpec]  # scale -> its world
    base_config: dict[str, dict]  # scale -> the YAML mapping of model/train/... (method section completed per method)
    method_defaults: dict[str, dict]  # scale -> method -> the method section's keys
    split_seed: int
    suites: dict[str, SuiteSpec]
    methods_path: Path

    def scale_config(self, scale: str) -> Config:
        """The base config of a scale, typed (checked when the file was read)."""
        return from_dict(Config, copy.deepcopy(self.base_config[scale]))


def load_experiments(path: Path) -> Experiments:
    """Read experiments.yaml and the files it names; a bad key or value is a UserError naming
    the file and the key."""
    doc = _load(ExperimentsFile, read_yaml(path), path)
    methods_path = path.parent / doc.methods_file
    method_defaults = read_yaml(methods_path)
    world, base = {}, {}
    for scale, raw in doc.scales.items():
        spec = _load(ScaleSpec, raw, path, f"scales.{scale}")
        world[scale] = _load(WorldSpec, spec.world, path, f"scales.{scale}.world")
        base[scale] = read_yaml(path.parent / spec.config)
        _load(Config, base[scale], path.parent / spec.config)
        if scale not in method_defaults:
            raise UserError(f"{methods_path}: no section {scale!r} (scales of {path.name}: {', '.join(doc.scales)})")
    suites = {}
    for name, raw in doc.suites.items():
        if name not in SUITES:
            raise UserError(f"{path}: unknown suite {name!r} (known: {', '.join(SUITES)})")
        suite = _load(SuiteSpec, raw, path, f"suites.{name}")
        suites[name] = dataclasses.replace(suite, methods=list(doc.methods if suite.methods is None else suite.methods))
    if "topic" in suites and not suites["topic"].group:
        raise UserError(f"{path}: suites.topic needs a 'group'")
    for scale in world:
        for suite in suites.values():
            for m in suite.methods + suite.importance:
                if m not in (method_defaults[scale] or {}):
                    raise UserError(f"{methods_path}: {scale}: no entry for method {m!r}")
    return Experiments(path, world, base, method_defaults, doc.split_seed, suites, methods_path)


def method_config(exp: Experiments, scale: str, method: str) -> dict:
    """The config of one method's runs: the scale's base config, its method section completed with
    the method's defaults (the methods file), and split.seed; validated by factlearn.config."""
    cfg = copy.deepcopy(exp.base_config[scale])
    cfg.setdefault("method", {}).update({"name": method, **(exp.method_defaults[scale].get(method) or {})})
    cfg.setdefault("split", {})["seed"] = exp.split_seed
    try:
        from_dict(Config, cfg)
    except UserError as exc:
        raise UserError(f"{exp.path.parent}: {scale} config of {method}: {exc}") from None
    return cfg


def _load(cls: type, data: object, path: Path, where: str = ""):
    """``from_dict(cls, data, where)`` with the file named in its errors."""
    try:
        return from_dict(cls, data, where)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
