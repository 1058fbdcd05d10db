"""The experiments file (configs/reproduce/experiments.yaml): which suites train which methods on
which task sequences, at which scale.

The file's schema is typed dataclasses read by the library's strict loader
(:func:`factlearn.config.from_dict`): an unknown key, a missing one or a value of the wrong type
is a one-line :class:`UserError` naming the file and the key. Per scale the file names a base
config (model, train, ...: a factlearn config whose method section the methods file completes),
and one methods file gives, per scale and method, the method section's keys::

    scales:
      quick: {world: {preset: small, seed: 0}, config: quick.yaml,
              base: {preset: base, seed: 1000, facts: 100, images_per_fact: 20}, pretrain_epochs: 2}
    methods_file: methods.yaml
    protocols: {faithful: faithful.yaml, modern: modern.yaml}
    split_seed: 0
    methods: [finetune, mas]
    suites:
      two-task: {split: random, tasks: 2}
      topic: {split: random, tasks: 4, group: colour, methods: [finetune, mas], importance: [mas]}
      shift: {split: random, tasks: 2, styles: [dark], methods: [finetune, mas], importance: [mas]}
      topic-distinct: {split: random, tasks: 4, group: topic, topic_world: true, held_out: 0.2,
                       methods: [finetune, mas], importance: [mas]}

A scale's ``base`` world and ``pretrain_epochs`` serve the protocols that start from a pretrained
image tower (:mod:`.protocols`); ``protocols`` names each protocol's file.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, from_dict, read_yaml
from ..data.synth.styles import STYLES
from ..data.synth.vocabulary import TOPIC
from ..errors import UserError

SUITES = ("two-task", "four-task", "semantic", "adaptation", "adaptation-facts", "adaptation-groups", "topic", "topic-distinct", "shift")
TOPIC_SUITES = ("topic", "topic-distinct")  # the suites of a monitored group: its curve after every task
BUILTIN_WORLD_SUITES = ("shift", "topic-distinct")  # they make a variant of the built-in world: not with --data


@dataclass
class WorldSpec:
    """A built-in world: ``factlearn synth --preset PRESET --seed SEED`` (and, when given,
    ``--facts``, ``--images-per-fact``, ``--size``, ``--style``, ``--topic``; the preset's otherwise)."""

    preset: str
    seed: int
    facts: int | None = None
    images_per_fact: int | None = None
    size: int | None = None
    style: str | None = None  # a rendering style (data.synth.styles): the same facts, ids and splits
    topic: bool = False  # a small, visually distinctive group "topic" (about a tenth of the facts)

    def synth_options(self) -> list[str]:
        """The options of the ``factlearn synth`` that generates it."""
        given = {"--facts": self.facts, "--images-per-fact": self.images_per_fact, "--size": self.size,
                 "--style": self.style}
        return ["--preset", self.preset, "--seed", str(self.seed),
                *(a for k, v in given.items() if v is not None for a in (k, str(v))), *(["--topic"] if self.topic else [])]


@dataclass
class ScaleSpec:
    """A scale (quick, full): its world and its base config file (relative to the experiments file);
    for the protocols that start from a pretrained image tower, the base world to pretrain on (it
    shares no fact with the world: ``--exclude``) and the epochs of ``factlearn pretrain``."""

    world: dict  # a WorldSpec, read with its own keys checked
    config: str
    base: dict | None = None  # a WorldSpec
    pretrain_epochs: int | None = None


@dataclass
class SuiteSpec:
    """A suite: its task sequence (split kind and number of tasks) and the methods it trains."""

    split: str
    tasks: int
    methods: list[str] | None = None  # default: the file's methods
    importance: list[str] = field(default_factory=list)  # adaptation, topic: also run with --importance-data
    group: str | None = None  # topic, topic-distinct: the monitored group
    # topic-distinct: the suite's own world, the scale's with --topic (its regular facts are the world's,
    # plus a small distinctive group "topic"), and the share of each fact's training images held out of
    # training as unlabeled images for importance (factlearn split --held-out)
    topic_world: bool = False
    held_out: float | None = None
    styles: list[str] = field(default_factory=list)  # shift: test conditions, rendering styles of the world (synth --style)


@dataclass
class ExperimentsFile:
    """The top level of experiments.yaml."""

    scales: dict  # scale -> a ScaleSpec
    methods_file: str
    split_seed: int  # of the task files and of the train/test draw, the same for every run
    methods: list[str]
    suites: dict  # suite -> a SuiteSpec
    protocols: dict = field(default_factory=dict)  # protocol -> its file (scratch, the default, has none)


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
    config_path: dict[str, Path]  # scale -> its base config file
    base_world: dict[str, WorldSpec | None]  # scale -> the world its backbone is pretrained on
    pretrain_epochs: dict[str, int | None]
    protocols: dict[str, Path]  # protocol -> its file

    def scale_config(self, scale: str) -> Config:
        """The base config of a scale, typed (checked when the file was read)."""
        return from_dict(Config, copy.deepcopy(self.base_config[scale]))


def load_experiments(path: Path) -> Experiments:
    """Read experiments.yaml and the files it names; a bad key or value is a UserError naming
    the file and the key."""
    doc = load_section(ExperimentsFile, read_yaml(path), path)
    methods_path = path.parent / doc.methods_file
    method_defaults = read_yaml(methods_path)
    world, base, config_path, base_world, epochs = {}, {}, {}, {}, {}
    for scale, raw in doc.scales.items():
        spec = load_section(ScaleSpec, raw, path, f"scales.{scale}")
        world[scale] = load_section(WorldSpec, spec.world, path, f"scales.{scale}.world")
        base_world[scale] = None if spec.base is None else load_section(WorldSpec, spec.base, path, f"scales.{scale}.base")
        epochs[scale] = spec.pretrain_epochs
        if epochs[scale] is not None and epochs[scale] < 1:
            raise UserError(f"{path}: scales.{scale}.pretrain_epochs must be at least 1")
        config_path[scale] = path.parent / spec.config
        base[scale] = read_yaml(config_path[scale])
        load_section(Config, base[scale], config_path[scale])
        if scale not in method_defaults:
            raise UserError(f"{methods_path}: no section {scale!r} (scales of {path.name}: {', '.join(doc.scales)})")
    suites = {}
    for name, raw in doc.suites.items():
        if name not in SUITES:
            raise UserError(f"{path}: unknown suite {name!r} (known: {', '.join(SUITES)})")
        suite = load_section(SuiteSpec, raw, path, f"suites.{name}")
        suites[name] = dataclasses.replace(suite, methods=list(doc.methods if suite.methods is None else suite.methods))
    for name in TOPIC_SUITES:
        if name in suites and not suites[name].group:
            raise UserError(f"{path}: suites.{name} needs a 'group'")
    for name, suite in suites.items():
        if suite.topic_world != (name == "topic-distinct"):
            raise UserError(f"{path}: suites.{name}: topic_world is for topic-distinct, which needs it")
        if suite.topic_world and (suite.group != TOPIC or suite.held_out is None or not 0 < suite.held_out < 1):
            raise UserError(f"{path}: suites.{name} needs group: {TOPIC} (the --topic world's group) and a "
                            f"held_out share between 0 and 1")
    if "shift" in suites:
        styles = suites["shift"].styles
        if not styles or any(s == "clean" or s not in STYLES for s in styles) or len(set(styles)) < len(styles):
            raise UserError(f"{path}: suites.shift needs 'styles', a list of distinct styles other than clean: "
                            f"of {', '.join(s for s in STYLES if s != 'clean')}")
    for scale in world:
        for suite in suites.values():
            for m in suite.methods + suite.importance:
                if m not in (method_defaults[scale] or {}):
                    raise UserError(f"{methods_path}: {scale}: no entry for method {m!r}")
    protocols = {name: path.parent / file for name, file in doc.protocols.items()}
    return Experiments(path, world, base, method_defaults, doc.split_seed, suites, methods_path, config_path,
                       base_world, epochs, protocols)


def method_config(exp: Experiments, scale: str, method: str, base: dict | None = None, keys: dict | None = None,
                  name: str | None = None) -> dict:
    """The config of one method's runs: ``base`` (default: the scale's base config), its method
    section completed with the method's defaults (the methods file) and then ``keys``, and
    split.seed; validated by factlearn.config (a UserError names the run config, ``name``)."""
    cfg = copy.deepcopy(exp.base_config[scale] if base is None else base)
    cfg.setdefault("method", {}).update({"name": method, **(exp.method_defaults[scale].get(method) or {}),
                                         **(keys or {})})
    cfg.setdefault("split", {})["seed"] = exp.split_seed
    try:
        from_dict(Config, cfg)
    except UserError as exc:
        raise UserError(f"{exp.path.parent}: {scale} config of {name or method}: {exc}") from None
    return cfg


def load_section(cls: type, data: object, path: Path, where: str = ""):
    """``from_dict(cls, data, where)``: a section of the file ``path`` as the dataclass ``cls``,
    with the file named in its errors."""
    try:
        return from_dict(cls, data, where)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
