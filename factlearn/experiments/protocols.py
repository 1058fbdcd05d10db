"""Training protocols (issue 17): the setting a reproduction's runs train under, and the lambda each
method reports under it.

- ``scratch`` (the default): the scale's config (configs/reproduce/quick.yaml, full.yaml) as it is:
  both towers from scratch, the contrastive loss, Adam. It has no file, and its results folder is
  OUT itself, so a results folder made before protocols existed resumes and skips as before.
- every other protocol (``faithful``, ``modern``) is a file named in experiments.yaml
  (``protocols:``), layered over the scale's config; its results go to ``OUT/<protocol>/``.

A protocol file::

    about: one line the results' pages show
    pretrained: true      # the runs start from the scale's pretrained image tower (model.pretrained)
    config: {model: {...}, loss: {...}, train: {...}, method: {...}}   # over the scale's config
    scales: {quick: {train: {epochs: 12}}}                             # per scale, over ``config``
    variants:             # curves of the lambda sweep, and more rows of the suites named (default two-task)
      mas-noise: {method: mas, keys: {importance_control: noise}, lam_from: mas}
      mas-cubed: {method: mas, keys: {importance_power: 3}, suites: []}                # the sweep's only
    sweep: {grid: [0.01, 0.1, 1], grids: {ewc: [1, 10, 100]}}          # lambdas the sweep tries

``lam_from``: the variant takes that method's lambda (a control at the same lambda); without it a
variant reports its own, picked from its own curve. The lambdas come from ``lambda-<protocol>.yaml``
next to the protocol file, which ``scripts/sweep_lambda.py --protocol P`` writes (the rule:
:func:`factlearn.experiments.tradeoff.pick_lambda`); a method it does not list keeps the methods
file's value, and the results' README says so.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..config import read_yaml
from ..errors import UserError
from ..io import atomic_write_text
from .config import Experiments, load_section, method_config

SCRATCH = "scratch"


@dataclass
class VariantSpec:
    """A variant of a method: its runs train ``method`` with the method section's ``keys`` on top."""

    method: str
    keys: dict = field(default_factory=dict)
    lam_from: str | None = None  # take this method's lambda (None: the variant's own)
    suites: list[str] = field(default_factory=lambda: ["two-task"])  # the suites it is a row of


@dataclass
class SweepSpec:
    """The lambdas a sweep tries: ``grid`` for every method, ``grids`` per method or variant."""

    grid: list[float] = field(default_factory=list)
    grids: dict = field(default_factory=dict)


@dataclass
class ProtocolFile:
    """The top level of a protocol file."""

    about: str
    pretrained: bool = False
    config: dict = field(default_factory=dict)
    scales: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # name -> a VariantSpec
    sweep: dict = field(default_factory=dict)  # a SweepSpec


@dataclass
class LambdaChoice:
    """One method's entry of a lambda file: the lambda picked, and how."""

    lam: float
    score: float  # the rule's score at lam: the validation mean over tasks, averaged over seeds
    metric: str
    seeds: list[int]
    grid: list[float]
    command: str
    written: str


@dataclass(frozen=True)
class Protocol:
    """A training protocol, read and checked (:func:`load_protocol`)."""

    name: str
    about: str
    path: Path | None = None  # its file (None: scratch)
    pretrained: bool = False
    config: dict = field(default_factory=dict)
    scales: dict = field(default_factory=dict)
    variants: dict[str, VariantSpec] = field(default_factory=dict)
    sweep: SweepSpec = field(default_factory=SweepSpec)
    lambdas: dict[str, dict[str, LambdaChoice]] = field(default_factory=dict)  # scale -> name -> choice

    @property
    def lambda_path(self) -> Path | None:
        """``lambda-<name>.yaml`` next to the protocol file (None for scratch)."""
        return None if self.path is None else self.path.with_name(f"lambda-{self.name}.yaml")

    def base_config(self, exp: Experiments, scale: str) -> dict:
        """The scale's config with the protocol's ``config`` and ``scales[scale]`` layered over it."""
        return deep_merge(exp.base_config[scale], self.config, self.scales.get(scale) or {})

    def lam(self, exp: Experiments, scale: str, name: str) -> tuple[float, str]:
        """The lambda of a method or variant at ``scale``, and where it comes from."""
        variant = self.variants.get(name)
        if variant is not None and variant.lam_from:
            lam, source = self.lam(exp, scale, variant.lam_from)
            return lam, f"{variant.lam_from}'s: {source}"
        choice = self.lambdas.get(scale, {}).get(name)
        if choice is not None:
            return choice.lam, f"swept ({self.lambda_path.name}: `{choice.command}`)"
        method = variant.method if variant else name
        lam = float(((exp.method_defaults[scale] or {}).get(method) or {}).get("lam", 1.0))
        return lam, (f"{exp.methods_path.name}" + ("" if self.path is None else ", not swept under this protocol"))


SCRATCH_PROTOCOL = Protocol(SCRATCH, "scratch: the scale's config as it is (both towers from scratch, the "
                                     "contrastive loss, Adam)")


def load_protocol(exp: Experiments, name: str) -> Protocol:
    """The protocol ``name`` of the experiments file (``scratch`` has no file) with its lambda file,
    if written; an unknown name or a bad file is a one-line UserError."""
    if name == SCRATCH:
        return SCRATCH_PROTOCOL
    if name not in exp.protocols:
        raise UserError(f"unknown protocol {name!r} (known: {', '.join([SCRATCH, *exp.protocols])}; "
                        f"{exp.path} names their files)")
    path = exp.protocols[name]
    if not path.is_file():
        raise UserError(f"protocol {name!r}: file not found: {path}")
    doc = load_section(ProtocolFile, read_yaml(path), path)
    variants = {v: load_section(VariantSpec, raw, path, f"variants.{v}") for v, raw in doc.variants.items()}
    for v, spec in variants.items():
        if any(v in (d or {}) for d in exp.method_defaults.values()) or "/" in v:
            raise UserError(f"{path}: variants.{v}: a variant needs a name of its own")
        for scale in exp.base_config:
            if spec.method not in (exp.method_defaults[scale] or {}):
                raise UserError(f"{path}: variants.{v}: no entry for method {spec.method!r} in {exp.methods_path}")
        if spec.lam_from is not None and spec.lam_from in variants:
            raise UserError(f"{path}: variants.{v}.lam_from must name a method, not a variant")
        for suite in spec.suites:
            if suite not in exp.suites:
                raise UserError(f"{path}: variants.{v}.suites: no suite {suite!r} in {exp.path.name}")
    for scale in doc.scales:
        if scale not in exp.base_config:
            raise UserError(f"{path}: scales.{scale}: no such scale in {exp.path.name}")
    protocol = Protocol(name, " ".join(doc.about.split()), path, doc.pretrained, doc.config, doc.scales, variants,
                        load_section(SweepSpec, doc.sweep, path, "sweep"))
    protocol = dataclasses.replace(protocol, lambdas=read_lambdas(protocol.lambda_path))
    try:  # every run config of the protocol, checked before anything runs
        for scale in exp.base_config:
            for v in [*(exp.method_defaults[scale] or {}), *variants]:
                run_config(exp, protocol, scale, v, Path("pretrained") if doc.pretrained else None)
    except UserError as exc:
        raise UserError(f"protocol {name} ({path.name}): {exc}") from None
    return protocol


def run_config(exp: Experiments, protocol: Protocol, scale: str, name: str, pretrained: Path | None) -> dict:
    """The config of a method's or a variant's runs under ``protocol`` at ``scale``: the scale's
    config, the protocol's layers, the method's keys (methods file), the variant's keys, the
    protocol's lambda (:meth:`Protocol.lam`) and ``model.pretrained``. Scratch: exactly
    :func:`~factlearn.experiments.config.method_config`."""
    if protocol.path is None:
        return method_config(exp, scale, name)
    variant = protocol.variants.get(name)
    keys = {**(variant.keys if variant else {}), "lam": protocol.lam(exp, scale, name)[0]}
    base = protocol.base_config(exp, scale)
    if protocol.pretrained:
        base.setdefault("model", {})["pretrained"] = str(pretrained)
    return method_config(exp, scale, variant.method if variant else name, base, keys, name)


def deep_merge(base: dict, *layers: dict) -> dict:
    """A copy of ``base`` with each layer's keys set over it, mappings merged key by key."""
    out = copy.deepcopy(base)
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


# --- the lambda file -----------------------------------------------------------------------------
def read_lambdas(path: Path | None) -> dict[str, dict[str, LambdaChoice]]:
    """scale -> method or variant -> :class:`LambdaChoice` of a lambda file; {} when there is none."""
    if path is None or not path.is_file():
        return {}
    doc = read_yaml(path)
    out: dict[str, dict[str, LambdaChoice]] = {}
    for scale, entries in doc.items():
        if scale in ("protocol", "rule"):
            continue
        if not isinstance(entries, dict):
            raise UserError(f"{path}: {scale}: expected a mapping of methods")
        out[scale] = {m: load_section(LambdaChoice, raw, path, f"{scale}.{m}") for m, raw in entries.items()}
    return out


def write_lambdas(protocol: Protocol, scale: str, choices: dict[str, LambdaChoice], rule: str) -> Path:
    """Record ``choices`` (method or variant -> choice) of ``scale`` in the protocol's lambda file,
    keeping the other scales' and methods' entries; written atomically."""
    path = protocol.lambda_path
    if path is None:
        raise UserError("the scratch protocol's lambdas live in methods.yaml: edit it by hand")
    doc = {scale: {m: dict(c.__dict__) for m, c in entries.items()} for scale, entries in read_lambdas(path).items()}
    doc.setdefault(scale, {}).update({m: dict(c.__dict__) for m, c in choices.items()})
    head = (f"# The lambda of each method under the {protocol.name} protocol, per scale: written by "
            "scripts/sweep_lambda.py\n# (each entry's command), read by scripts/reproduce.py. Do not edit by hand: "
            "sweep again.\n")
    body = yaml.safe_dump({"protocol": protocol.name, "rule": rule, **doc}, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, head + body)
    return path


def now() -> str:
    """The time stamp of the records: ``YYYY-MM-DD HH:MM UTC``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
