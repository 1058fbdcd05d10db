"""The plan of a reproduction: which task sequences, views and runs the suites need, and where
each of them lives in the results folder. Making a plan touches no file.

Layout of the results folder OUT (of the scratch protocol; every other protocol P has the same
layout in OUT/P/, but for the data and the backbone, shared by the protocols of a scale)::

    OUT/data/world/                      the built-in world (unless --data names one)
    OUT/data/world-<style>/              the same world in another rendering style (the shift suite)
    OUT/data/world-topic/                the world with a small distinctive group (topic-distinct)
    OUT/data/base/, OUT/pretrained/      the base world and the backbone pretrained on it (faithful, modern)
    OUT/tasks/<sequence>.json            task files (``factlearn split``), e.g. random2.json
    OUT/views/<view>/                    small data directories: an adaptation half, a group's images
    OUT/configs/<name>.yaml              each method's config
    OUT/runs/<sequence>/seed<k>/<variant>/   factlearn run directories
    OUT/probes/<run id>/<view>.json      evaluations of every checkpoint of a run on a view
    OUT/logs/                            prepare.log and one log per run
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..continual import METHODS
from ..errors import UserError
from .config import BUILTIN_WORLD_SUITES, Experiments, WorldSpec
from .protocols import SCRATCH_PROTOCOL, Protocol

HALVES = ("B11", "B12")  # B1's adaptation halves, as `factlearn split --adaptation[-images]` names them
FACT_HALVES = "-facts"  # the suffix of a sequence split with `--adaptation` (fact-level halves)
GROUP_HALVES = "-groups"  # the same with `--adaptation-by group` (halves of whole semantic groups)
FACT_HALF_SUITES = {"adaptation-facts": FACT_HALVES, "adaptation-groups": GROUP_HALVES}
TOPIC_WORLD = "-topic"  # the suffix of a sequence of the topic world (topic-distinct), and that world's


@dataclass(frozen=True)
class View:
    """A small data directory holding some of the data's rows: an importance source or a probe set."""

    name: str
    # "half": an adaptation half's images in the task file (--adaptation-images: half of the first
    # task's training images; --adaptation: the held-out images of half of its facts); "halves": both
    # halves' held-out images; "half-test": the test images of a fact-level half's facts;
    # "group-train", "group-test": a group's training or test images; "style-train": the first
    # task's training images, "style-test": every test image, both as the world in ``style`` shows them
    kind: str
    sequence: str | None = None  # its task file; its rows are of that sequence's data (Plan.data_of)
    half: str | None = None  # "B11" / "B12"
    group: str | None = None
    style: str | None = None  # the view's images come from the world rendered in this style


@dataclass(frozen=True)
class RunSpec:
    """One training run: a method (with its importance source) on a task sequence, with a seed."""

    sequence: str  # task file id, e.g. "random2"
    variant: str  # method, or method + importance source: "mas-imp-B11"
    method: str
    seed: int
    importance: str | None = None  # name of the View given as --importance-data
    probes: tuple[str, ...] = ()  # Views every checkpoint is evaluated on
    config: str | None = None  # name of its config file (default: the method's; Plan.config_keys: its keys)
    parent: str | None = None  # id of the finetune run whose first task it starts from (:func:`assign_parents`)

    @property
    def id(self) -> str:
        """``<sequence>/seed<k>/<variant>``: its place under OUT/runs/ and OUT/probes/."""
        return f"{self.sequence}/seed{self.seed}/{self.variant}"


@dataclass(frozen=True)
class Entry:
    """A row of a suite's tables: a label and the variant whose runs (one per seed) it averages."""

    label: str
    variant: str


@dataclass
class Plan:
    """Everything a reproduction (or a sweep) trains, and the paths of its files under ``out``."""

    scale: str
    out: Path
    data: Path
    world: WorldSpec | None  # the world to generate, None with --data
    seeds: list[int]
    split_seed: int  # of the task files and of the train/test draw for rows without a split
    test_fraction: float
    sequences: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (kind, tasks); FACT_HALVES: see split_options
    views: dict[str, View] = field(default_factory=dict)
    runs: dict[str, RunSpec] = field(default_factory=dict)  # by id; shared runs merged
    suites: dict[str, tuple[str, list[Entry]]] = field(default_factory=dict)  # suite -> (sequence, entries)
    # suite -> the views its tables read probes of (a run shared by suites is probed on all of theirs)
    suite_probes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # variants of the built-in world, by the suffix of their folder (world_dir): a style, "topic"
    worlds: dict[str, WorldSpec] = field(default_factory=dict)
    sequence_worlds: dict[str, str] = field(default_factory=dict)  # sequence -> the world variant it is cut from
    split_extra: dict[str, list[str]] = field(default_factory=dict)  # sequence -> more `factlearn split` options
    # config name -> (method, its method section's keys over the method's): variants a suite defines
    config_keys: dict[str, tuple[str, dict]] = field(default_factory=dict)
    protocol: Protocol = SCRATCH_PROTOCOL
    root: Path | None = None  # the folder of the scale's protocols: ``out``, or its parent (default: out)
    base: WorldSpec | None = None  # the base world to pretrain on (protocols with a pretrained tower)
    pretrain_epochs: int | None = None

    @property
    def pretrained(self) -> Path | None:
        """The pretrained backbone the runs start from (``factlearn pretrain``), None without one."""
        return None if self.base is None else (self.root or self.out) / "pretrained"

    @property
    def base_dir(self) -> Path:
        """The base world's data directory."""
        return (self.root or self.out) / "data" / "base"

    def world_dir(self, variant: str) -> Path:
        """The data directory of a variant of the built-in world (:attr:`worlds`), next to it."""
        return self.data.with_name(f"{self.data.name}-{variant}")

    def data_of(self, sequence: str | None) -> Path:
        """The data directory a sequence is cut from and trained on: the plan's, or a world variant's."""
        variant = self.sequence_worlds.get(sequence) if sequence else None
        return self.data if variant is None else self.world_dir(variant)

    def run_dir(self, run: RunSpec) -> Path:
        """The factlearn run directory of a run."""
        return self.out / "runs" / run.id

    def tasks_file(self, sequence: str) -> Path:
        """The task file of a sequence (``factlearn split``)."""
        return self.out / "tasks" / f"{sequence}.json"

    def view_dir(self, name: str) -> Path:
        """The data directory of a view."""
        return self.out / "views" / name

    def config_file(self, name: str) -> Path:
        """A run config, by name: the method's (or a sweep's ``<method>-lam<lambda>``)."""
        return self.out / "configs" / f"{name}.yaml"

    def probe_file(self, run: RunSpec, view: str) -> Path:
        """The probe of a run on a view (:mod:`.probe`)."""
        return self.out / "probes" / run.id / f"{view}.json"

    def log_file(self, name: str) -> Path:
        """A log of OUT/logs: ``prepare``, or a run's id."""
        return self.out / "logs" / f"{name.replace('/', '__')}.log"


def protocol_plan(exp: Experiments, protocol: Protocol, scale: str, seeds: int, root: Path, data: Path) -> Plan:
    """An empty plan of ``protocol`` at ``scale`` in the folder ``root`` (its results in ``root`` for
    scratch, ``root/<protocol>`` otherwise) on ``data``, with the base world and pretraining epochs
    of the scale when the protocol starts from a pretrained tower."""
    root = root.resolve()
    out = root if protocol.path is None else root / protocol.name
    plan = Plan(scale, out, data, None, list(range(seeds)), exp.split_seed,
                exp.scale_config(scale).split.test_fraction, protocol=protocol, root=root)
    if protocol.pretrained:
        if exp.base_world[scale] is None or exp.pretrain_epochs[scale] is None:
            raise UserError(f"{exp.path}: scales.{scale} needs 'base' and 'pretrain_epochs' for the "
                            f"{protocol.name} protocol (it starts from a pretrained image tower)")
        plan.base, plan.pretrain_epochs = exp.base_world[scale], exp.pretrain_epochs[scale]
    return plan


def make_plan(exp: Experiments, suites: list[str], scale: str, seeds: int, out: Path,
              data: Path | None = None, protocol: Protocol = SCRATCH_PROTOCOL) -> Plan:
    """Which task files, views and runs ``suites`` need at ``scale`` with training seeds
    0..``seeds``-1 under ``protocol``, in the results folder ``out`` (``out/<protocol>`` but for
    scratch), on ``data`` (default: the built-in world, ``out/data/world``)."""
    plan = protocol_plan(exp, protocol, scale, seeds, out,
                         data.resolve() if data else out.resolve() / "data" / "world")
    plan.world = None if data else exp.world[scale]
    for suite in suites:
        if suite not in exp.suites:
            raise UserError(f"suite {suite!r} is not in {exp.path}")
        sc = exp.suites[suite]
        seq = (f"{sc.split}{sc.tasks}" + FACT_HALF_SUITES.get(suite, "")
               + (TOPIC_WORLD if sc.topic_world else ""))
        plan.sequences[seq] = (sc.split, sc.tasks)
        if suite in BUILTIN_WORLD_SUITES and data is not None:
            raise UserError(f"suite {suite} makes a variant of the built-in world; it cannot run on --data {data}")
        probes: tuple[str, ...] = ()
        sources: list[tuple[str, str]] = []  # (label, view name) of the --importance-data variants
        keyed: list[tuple[str, str, dict]] = []  # (label, name, method keys) of the variants by config keys
        own = "own"  # label of importance from the task's own images
        if suite == "adaptation":
            for half in HALVES:
                plan.views[f"{seq}-{half}"] = View(f"{seq}-{half}", "half", sequence=seq, half=half)
            probes = tuple(f"{seq}-{h}" for h in HALVES)
            sources = [(h, f"{seq}-{h}") for h in HALVES]
            own = "all of B1"
        elif suite in FACT_HALF_SUITES:
            # The MAS paper's adaptation (Table 4): B11 and B12 are halves of B1's facts; importance
            # from unlabeled held-out images of one half, of both, or (own) B1's training images;
            # measured on the test images of each half's facts
            for half in HALVES:
                plan.views[f"{seq}-{half}"] = View(f"{seq}-{half}", "half", sequence=seq, half=half)
                plan.views[f"{seq}-{half}-test"] = View(f"{seq}-{half}-test", "half-test", sequence=seq, half=half)
            plan.views[f"{seq}-B1"] = View(f"{seq}-B1", "halves", sequence=seq)
            probes = tuple(f"{seq}-{h}-test" for h in HALVES)
            sources = [(f"held-out images of {h}", f"{seq}-{h}") for h in HALVES]
            sources.append(("held-out images of all of B1", f"{seq}-B1"))
            own = "B1's training images"
        elif suite == "topic":
            train_view, test_view = f"group-{sc.group}-train", f"group-{sc.group}-test"
            plan.views[train_view] = View(train_view, "group-train", group=sc.group)
            plan.views[test_view] = View(test_view, "group-test", group=sc.group)
            probes = (test_view,)
            sources = [(f"{sc.group} images only", train_view)]
            own = "each task's images"
        elif suite == "shift":
            # A test-condition shift (MAS paper, Sec. 5: importance from unlabeled data of the conditions
            # of use): the same world rendered in another style; importance from B1's training images
            # as that style shows them (the very scenes MAS otherwise sees clean), B1 measured in it;
            # one world, view pair and importance variant per style
            for style in sc.styles:
                plan.worlds[style] = dataclasses.replace(plan.world, style=style)
                train_view, test_view = f"{seq}-{style}-B1", f"test-{style}"
                plan.views[train_view] = View(train_view, "style-train", sequence=seq, style=style)
                plan.views[test_view] = View(test_view, "style-test", style=style)
                probes += (test_view,)
                sources.append((f"B1's training images, {style}", train_view))
            own = "B1's training images, clean"
        elif suite == "topic-distinct":
            # The MAS paper's sports facts (Fig. 4): a small, visually distinctive group (the world made
            # with --topic); importance after every task from the held-out images of the group's facts
            # learned so far (method.importance_facts, importance_images: held_out), never of later ones
            plan.worlds[TOPIC_WORLD[1:]] = dataclasses.replace(plan.world, topic=True)
            plan.sequence_worlds[seq] = TOPIC_WORLD[1:]
            plan.split_extra[seq] = ["--held-out", str(sc.held_out), "--monitor", sc.group]
            test_view = f"{seq}-group-{sc.group}-test"
            plan.views[test_view] = View(test_view, "group-test", sequence=seq, group=sc.group)
            probes = (test_view,)
            keyed = [(f"held-out images of the {sc.group} facts learned so far", f"{sc.group}-held-out",
                      {"importance_images": "held_out", "importance_facts": sc.group})]
            own = "each task's images"
        # (label, variant, method, importance view) per table row
        rows = [(f"{m} (importance: {own})" if m in sc.importance else m, m, m, None) for m in sc.methods]
        rows += [(f"{m} (importance: {label})", f"{m}-imp-{view.removeprefix(seq + '-')}", m, view)
                 for m in sc.importance for label, view in sources]
        for m in sc.importance:
            for label, name, keys in keyed:
                rows.append((f"{m} (importance: {label})", f"{m}-imp-{name}", m, None))
                plan.config_keys[f"{m}-imp-{name}"] = (m, keys)
        rows += [(v, v, spec.method, None) for v, spec in protocol.variants.items()
                 if suite in spec.suites and spec.method in sc.methods]
        entries = [Entry(label, variant) for label, variant, _, _ in rows]
        own_config = set(protocol.variants) | set(plan.config_keys)
        specs = [RunSpec(seq, variant, m, s, view, probes, config=variant if variant in own_config else None)
                 for _, variant, m, view in rows for s in plan.seeds]
        for spec in specs:
            old = plan.runs.get(spec.id)
            if old is not None:  # the same run serves several suites: evaluate it on every suite's views
                spec = dataclasses.replace(spec, probes=tuple(dict.fromkeys(old.probes + spec.probes)))
            plan.runs[spec.id] = spec
        plan.suites[suite] = (seq, entries)
        plan.suite_probes[suite] = probes
    return assign_parents(plan)


PARENT_VARIANT = "finetune"  # the run of a sequence and seed that the others take their first task from


def assign_parents(plan: Plan) -> Plan:
    """Give every run that may start from another's first task (``factlearn train --start-from``:
    its method trains the first task as finetuning does) the plan's finetune run of the same
    sequence and seed as its parent: each seed's first task is then trained once, not once per
    method, lambda and variant (issue 17). Bit-identical to training it (tests/test_fork.py)."""
    for run_id, run in plan.runs.items():
        parent = f"{run.sequence}/seed{run.seed}/{PARENT_VARIANT}"
        if run.variant != PARENT_VARIANT and parent in plan.runs and METHODS[run.method].first_task_as_finetune:
            plan.runs[run_id] = dataclasses.replace(run, parent=parent)
    return plan
