#!/usr/bin/env python
"""Reproduce the experiments of issue 7 with one command: tables and plots from scratch.

    scripts/reproduce.py --suite {two-task,four-task,semantic,adaptation,topic,all} [SUITE ...] [--quick]
                         [--seeds N] [--out DIR] [--data DIR] [--jobs J] [--device D] [--dry-run]

Suites (configs/reproduce/experiments.yaml says which methods and splits each uses):

- two-task    B1 -> B2, random split; every method. B1, B2 and their mean after B2.
- four-task   B1 -> ... -> B4, random split; accuracy matrix, final accuracy per task, mean.
- semantic    the same with a semantic split (whole groups of facts per task).
- adaptation  MAS importance from one half of B1's training images (B11), the other half (B12),
              or all of B1 (plain mas), with finetune as the baseline; after B2: accuracy on the
              B1 and B2 test images, and fact recognition on the B11 and B12 images themselves
              (training images of B1, never test images: how much of what the model learnt on
              each half it keeps, which is what importance on a half is meant to protect).
- topic       four tasks with a monitored semantic group (e.g. colour): its test images' accuracy
              after each task, over the group's facts trained so far; finetune, mas (importance
              from each task's images), mas with importance from the group's unlabeled training
              images only (every task's, as unlabeled data from the conditions of use), joint.

Every number is the standard protocol (a task's images ranked among that task's facts) and the
generalized one (among all facts seen so far), top-1 and top-5, mean ± std over the seeds
(``--seeds N``: training seeds 0..N-1; the split stays fixed). Results go to OUT (default
``results/full``, ``results/quick`` with ``--quick``): ``README.md`` (index and headline
tables), ``<suite>.md`` (all tables), ``plots/<suite>/`` (PNG; accuracy matrices and per-task
curves from :mod:`factlearn.compare`, of seed 0), and the work: ``data/world`` (the built-in
world when ``--data`` is not given: preset small with ``--quick``, 6ds otherwise), ``tasks/``
(task files), ``views/`` (small data directories: the adaptation halves and the group's images,
whose images are hard links, or copies, of the data's), ``configs/`` (each method's config),
``runs/<sequence>/seed<k>/<variant>/`` (factlearn run directories), ``probes/`` (evaluations of
every checkpoint on a view), ``logs/`` and ``timings.json``.

Runs go through the command line, ``sys.executable -m factlearn train``, with this environment
and ``OMP_NUM_THREADS=1``, from OUT/logs: ``python -m`` puts its working directory first on
sys.path, so a checkout there would shadow ``PYTHONPATH`` (e.g. ``PYTHONPATH=/tmp/fresh`` to run
a frozen copy); the script checks that its children import the same factlearn as itself.
``--jobs J`` runs J at a time. A run whose metrics.json covers every task is skipped, a started one continues with
``--resume``, so an interrupted reproduction continues where it stopped; a run made with another
config than the one asked for now is an error (use another ``--out``). Runs shared by suites
(mas on the two-task split serves two-task and adaptation) are trained once.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "reproduce"
SUITES = ("two-task", "four-task", "semantic", "adaptation", "topic")
SUITE_DOC = {
    "two-task": "B1 -> B2, random split: each task's accuracy after B2, their mean, and BWT (< 0: forgetting).",
    "four-task": "B1 -> B4, random split: each task's final accuracy, their mean, BWT, and the accuracy matrices.",
    "semantic": "B1 -> B4, semantic split (whole groups of facts per task): as four-task.",
    "adaptation": "MAS importance from one half of B1's training images (B11), the other half (B12), or all of B1, "
                  "finetune for reference. After B2: accuracy on the B1 and B2 test images, and fact recognition "
                  "on the B11 and B12 images themselves (training images of B1: how much of what was learnt on "
                  "each half is kept; the half the importance came from should keep more).",
    "topic": "Four tasks, random split, a monitored group of facts: accuracy on the test images of the group's "
             "facts trained so far, after each task. `importance: <group> images only` computes the image "
             "tower's importance on the group's unlabeled training images (of every task) instead of each "
             "task's own images.",
}
HEADLINE_TABLES = {"adaptation": 1}  # tables of a suite README.md shows (default 2: standard top-1 and top-5)
PROTOCOLS = ("standard", "generalized")
METRICS = ("top1", "top5")
METRIC_NAMES = {"top1": "top-1", "top5": "top-5"}


class SetupError(Exception):
    """A problem the user can fix (a bad config, a run made with another config): one line, exit 2."""


# ---- the experiments file ------------------------------------------------------------------------

@dataclass(frozen=True)
class SuiteConfig:
    split: str
    tasks: int
    methods: tuple[str, ...]
    importance: tuple[str, ...] = ()  # adaptation, topic: methods also run with --importance-data
    group: str | None = None  # topic: the monitored group


@dataclass(frozen=True)
class Experiments:
    path: Path
    world: dict  # scale -> {"preset": ..., "seed": ...}
    base_config: dict  # scale -> the YAML mapping of model/train/... (method section completed per method)
    method_defaults: dict  # scale -> method -> the method section's keys
    split_seed: int
    suites: dict  # suite name -> SuiteConfig


_SUITE_KEYS = {"split", "tasks", "methods", "importance", "group"}


def load_experiments(path: Path = CONFIG_DIR / "experiments.yaml") -> Experiments:
    """Read experiments.yaml and the files it names, checking every key (errors name file and key)."""
    doc = _read_yaml(path)
    _check_keys(doc, {"scales", "methods_file", "split_seed", "methods", "suites"}, path, "")
    methods_path = path.parent / _get(doc, "methods_file", str, path)
    method_defaults = _read_yaml(methods_path)
    world, base = {}, {}
    for scale, spec in _get(doc, "scales", dict, path).items():
        _check_keys(spec, {"world", "config"}, path, f"scales.{scale}")
        world[scale] = _get(spec, "world", dict, path, f"scales.{scale}")
        base[scale] = _read_yaml(path.parent / _get(spec, "config", str, path, f"scales.{scale}"))
        if scale not in method_defaults:
            raise SetupError(f"{methods_path}: no section {scale!r} (scales of {path.name}: {', '.join(world)})")
    methods = tuple(_get(doc, "methods", list, path))
    suites = {}
    for name, spec in _get(doc, "suites", dict, path).items():
        if name not in SUITES:
            raise SetupError(f"{path}: unknown suite {name!r} (known: {', '.join(SUITES)})")
        _check_keys(spec, _SUITE_KEYS, path, f"suites.{name}")
        suites[name] = SuiteConfig(
            split=_get(spec, "split", str, path, f"suites.{name}"),
            tasks=_get(spec, "tasks", int, path, f"suites.{name}"),
            methods=tuple(spec.get("methods", methods)),
            importance=tuple(spec.get("importance", ())),
            group=spec.get("group"),
        )
    if "topic" in suites and not suites["topic"].group:
        raise SetupError(f"{path}: suites.topic needs a 'group'")
    for scale in world:
        for suite in suites.values():
            for m in suite.methods + suite.importance:
                if m not in method_defaults[scale]:
                    raise SetupError(f"{methods_path}: {scale}: no entry for method {m!r}")
    return Experiments(path, world, base, method_defaults, _get(doc, "split_seed", int, path), suites)


def _read_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SetupError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SetupError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SetupError(f"{path}: expected a mapping at the top level")
    return doc


def _check_keys(doc: object, known: set, path: Path, where: str) -> None:
    if not isinstance(doc, dict):
        raise SetupError(f"{path}: {where or 'top level'}: expected a mapping")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SetupError(f"{path}: unknown key {'.'.join(filter(None, [where, unknown[0]]))!r} "
                         f"(known: {', '.join(sorted(known))})")


def _get(doc: dict, key: str, kind: type, path: Path, where: str = ""):
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SetupError(f"{path}: {'.'.join(filter(None, [where, key]))} must be a {kind.__name__}, got {value!r}")
    return value


def method_config(exp: Experiments, scale: str, method: str) -> dict:
    """The config of one method's runs: the scale's base config, its method section completed with
    the method's defaults (methods.yaml), and split.seed; validated by factlearn.config."""
    from factlearn.config import Config, from_dict
    from factlearn.errors import UserError

    cfg = copy.deepcopy(exp.base_config[scale])
    cfg.setdefault("method", {}).update({"name": method, **(exp.method_defaults[scale].get(method) or {})})
    cfg.setdefault("split", {})["seed"] = exp.split_seed
    try:
        from_dict(Config, cfg)
    except UserError as exc:
        raise SetupError(f"{exp.path.parent}: {scale} config of {method}: {exc}") from None
    return cfg


# ---- the plan: which runs, on which task sequences and views --------------------------------------

@dataclass(frozen=True)
class View:
    """A small data directory holding some of the data's rows: an importance source or a probe set."""

    name: str
    kind: str  # "half" (an adaptation half of `sequence`'s first task), "group-train", "group-test"
    sequence: str | None = None
    half: str | None = None  # "B11" / "B12"
    group: str | None = None


@dataclass(frozen=True)
class RunSpec:
    sequence: str  # task file id, e.g. "random2"
    variant: str  # method, or method + importance source: "mas-imp-B11"
    method: str
    seed: int
    importance: str | None = None  # name of the View given as --importance-data
    probes: tuple[str, ...] = ()  # Views every checkpoint is evaluated on
    config: str | None = None  # name of its config file (default: the method's)

    @property
    def id(self) -> str:
        return f"{self.sequence}/seed{self.seed}/{self.variant}"


@dataclass(frozen=True)
class Entry:
    """A row of a suite's tables: a label and the variant whose runs (one per seed) it averages."""

    label: str
    variant: str


@dataclass
class Plan:
    scale: str
    out: Path
    data: Path
    world: dict | None  # synth options when the world is generated, None with --data
    seeds: list[int]
    split_seed: int  # of the task files and of the train/test draw for rows without a split
    test_fraction: float
    sequences: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (kind, tasks)
    views: dict[str, View] = field(default_factory=dict)
    runs: dict[str, RunSpec] = field(default_factory=dict)  # by id; shared runs merged
    suites: dict[str, tuple[str, list[Entry]]] = field(default_factory=dict)  # suite -> (sequence, entries)

    def run_dir(self, run: RunSpec) -> Path:
        return self.out / "runs" / run.id

    def tasks_file(self, sequence: str) -> Path:
        return self.out / "tasks" / f"{sequence}.json"

    def view_dir(self, name: str) -> Path:
        return self.out / "views" / name

    def config_file(self, name: str) -> Path:
        return self.out / "configs" / f"{name}.yaml"

    def probe_file(self, run: RunSpec, view: str) -> Path:
        return self.out / "probes" / run.id / f"{view}.json"


def make_plan(exp: Experiments, suites: list[str], scale: str, seeds: int, out: Path,
              data: Path | None = None) -> Plan:
    """Which task files, views and runs the suites need; touches no file."""
    out = out.resolve()
    split = exp.base_config[scale].get("split", {})
    plan = Plan(scale, out, data.resolve() if data else out / "data" / "world", None if data else exp.world[scale],
                list(range(seeds)), exp.split_seed, split.get("test_fraction", 0.3))
    for suite in suites:
        if suite not in exp.suites:
            raise SetupError(f"suite {suite!r} is not in {exp.path}")
        sc = exp.suites[suite]
        seq = f"{sc.split}{sc.tasks}"
        plan.sequences[seq] = (sc.split, sc.tasks)
        probes: tuple[str, ...] = ()
        sources: list[tuple[str, str]] = []  # (label, view name) of the --importance-data variants
        own = "own"  # label of importance from the task's own images
        if suite == "adaptation":
            halves = ("B11", "B12")  # B1's halves, as `factlearn split --adaptation` names them
            for half in halves:
                plan.views[f"{seq}-{half}"] = View(f"{seq}-{half}", "half", sequence=seq, half=half)
            probes = tuple(f"{seq}-{h}" for h in halves)
            sources = [(h, f"{seq}-{h}") for h in halves]
            own = "all of B1"
        elif suite == "topic":
            train_view, test_view = f"group-{sc.group}-train", f"group-{sc.group}-test"
            plan.views[train_view] = View(train_view, "group-train", group=sc.group)
            plan.views[test_view] = View(test_view, "group-test", group=sc.group)
            probes = (test_view,)
            sources = [(f"{sc.group} images only", train_view)]
            own = "each task's images"
        # (label, variant, method, importance view) per table row
        rows = [(f"{m} (importance: {own})" if m in sc.importance else m, m, m, None) for m in sc.methods]
        rows += [(f"{m} (importance: {label})", f"{m}-imp-{view.removeprefix(seq + '-')}", m, view)
                 for m in sc.importance for label, view in sources]
        entries = [Entry(label, variant) for label, variant, _, _ in rows]
        specs = [RunSpec(seq, variant, m, s, view, probes) for _, variant, m, view in rows for s in plan.seeds]
        for spec in specs:
            old = plan.runs.get(spec.id)
            if old is not None:  # the same run serves several suites: evaluate it on every suite's views
                spec = dataclasses.replace(spec, probes=tuple(dict.fromkeys(old.probes + spec.probes)))
            plan.runs[spec.id] = spec
        plan.suites[suite] = (seq, entries)
    return plan


# ---- what each run needs: its config, its command, whether it is done ----------------------------

def train_command(plan: Plan, run: RunSpec, device: str) -> list[str]:
    """The ``factlearn train`` command of a run; ``--resume`` once the run directory holds a run."""
    cmd = [sys.executable, "-m", "factlearn", "train", "--data", str(plan.data),
           "--config", str(plan.config_file(run.config or run.method)), "--tasks-file", str(plan.tasks_file(run.sequence)),
           "--out", str(plan.run_dir(run)), "--seed", str(run.seed), "--device", device]
    if run.importance:
        cmd += ["--importance-data", str(plan.view_dir(run.importance))]
    if (plan.run_dir(run) / "run.json").is_file():
        cmd.append("--resume")
    return cmd


def run_complete(run_dir: Path) -> bool:
    """metrics.json has a row of the accuracy matrix for every task of the sequence."""
    doc = _read_json(run_dir / "metrics.json")
    try:
        return len(doc["matrix"]["top1"]) == len(doc["tasks"])
    except (TypeError, KeyError):
        return False


def probe_complete(plan: Plan, run: RunSpec, view: str) -> bool:
    """The probe covers every task, and is newer than the run's metrics."""
    path, metrics = plan.probe_file(run, view), plan.run_dir(run) / "metrics.json"
    doc = _read_json(path)
    tasks = (_read_json(metrics) or {}).get("tasks")
    return bool(doc and tasks and list(doc.get("after", {})) == tasks
                and path.stat().st_mtime >= metrics.stat().st_mtime)


def config_mismatch(plan: Plan, run: RunSpec, cfg: dict) -> str | None:
    """How an existing run's config.yaml differs from the one asked for (None: it does not)."""
    from factlearn.config import Config, from_dict

    saved_path = plan.run_dir(run) / "config.yaml"
    if not saved_path.is_file():
        return None
    want = from_dict(Config, cfg).to_dict()
    want["split"]["tasks_file"] = str(plan.tasks_file(run.sequence).resolve())
    want["method"]["importance_data"] = str(plan.view_dir(run.importance)) if run.importance else None
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    for section, values in want.items():
        for key, value in values.items():
            if saved.get(section, {}).get(key) != value:
                return f"{section}.{key} is {saved.get(section, {}).get(key)!r} there, {value!r} here"
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- preparation: world, task files, views, configs -----------------------------------------------

def child_env(image_cache: Path | None = None) -> dict:
    """This environment (PYTHONPATH included) with one OpenMP / MKL thread per process and, unless
    the caller's environment names one, ``image_cache`` as the decoded-image cache of the runs
    (every run decodes the same world: about 30 s each at full scale without it)."""
    from factlearn.data.images import CACHE_ENV

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if image_cache is not None:
        env.setdefault(CACHE_ENV, str(image_cache))
    return env


def child_cwd(log: Path) -> Path:
    """Where children run: the log folder, never the caller's directory, since ``python -m`` puts the
    working directory first on sys.path, and a checkout's factlearn/ there would shadow PYTHONPATH."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return log.parent


def check_child_factlearn(log: Path) -> str:
    """The factlearn package the children import, which must be this process's (one code for all)."""
    import factlearn

    mine = str(Path(factlearn.__file__).resolve().parent)
    code = "import factlearn, pathlib; print(pathlib.Path(factlearn.__file__).resolve().parent)"
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=child_cwd(log), capture_output=True,
                          text=True, check=False)
    theirs = done.stdout.strip()
    if theirs != mine:
        raise SetupError(f"training processes would import factlearn from {theirs or done.stderr.strip()!r}, "
                         f"this script from {mine!r}")
    return mine


def factlearn_cli(args: list[str], log: Path) -> None:
    """Run ``python -m factlearn ARGS``; output appended to ``log``; a failure is a SetupError."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ factlearn {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "factlearn", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=child_env(), cwd=child_cwd(log), check=False)
    if done.returncode != 0:
        raise SetupError(f"factlearn {args[0]} failed (exit {done.returncode}); see {log}")


def prepare(plan: Plan, exp: Experiments, jobs: int) -> None:
    """Make whatever is missing of the world, the task files, the views and the configs."""
    log = plan.out / "logs" / "prepare.log"
    check_child_factlearn(log)
    if plan.world is not None:
        ensure_world(plan.data, plan.world, jobs, log)
    write_tasks_files(plan, log)
    for view in plan.views.values():
        if not (plan.view_dir(view.name) / "manifest.jsonl").is_file():
            write_view(plan.data, view_rows(plan, view), plan.view_dir(view.name))
    for method in sorted({r.method for r in plan.runs.values()}):
        write_config(plan.config_file(method), method_config(exp, plan.scale, method), plan.scale)


def ensure_world(path: Path, world: dict, jobs: int, log: Path) -> None:
    """Generate the built-in world (``factlearn synth``) into ``path`` unless it is there."""
    if (path / "manifest.jsonl").is_file():
        return
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"generating the {world['preset']} world in {path}", flush=True)
    factlearn_cli(["synth", str(partial), "--preset", world["preset"], "--seed", str(world["seed"]),
                   "--workers", str(jobs)], log)
    partial.rename(path)


def write_tasks_files(plan: Plan, log: Path) -> None:
    """``factlearn split`` for every task sequence of the plan (with adaptation halves) not written yet."""
    for seq, (kind, tasks) in plan.sequences.items():
        if not plan.tasks_file(seq).is_file():
            factlearn_cli(["split", str(plan.data), "--kind", kind, "--tasks", str(tasks),
                           "--seed", str(plan.split_seed), "--adaptation", "--test-fraction", str(plan.test_fraction),
                           "--out", str(plan.tasks_file(seq))], log)


def write_config(path: Path, cfg: dict, scale: str) -> None:
    _write_text(path, f"# written by scripts/ ({scale} scale): do not edit, edit configs/reproduce/\n"
                + yaml.safe_dump(cfg, sort_keys=False))


def view_rows(plan: Plan, view: View) -> list[int]:
    """Record indices (rows of the data's manifest) of a view."""
    from factlearn.data.manifest import load_dataset
    from factlearn.data.splits import image_splits, load_tasks_file, monitored_facts

    dataset = load_dataset(plan.data)
    if view.kind == "half":
        halves = load_tasks_file(plan.tasks_file(view.sequence), dataset).adaptation
        if view.half not in halves:
            raise SetupError(f"{plan.tasks_file(view.sequence)} has no adaptation half {view.half}")
        return list(halves[view.half])
    facts = set(monitored_facts(dataset, view.group))  # a UserError names the groups the data has
    is_test = image_splits(dataset, plan.test_fraction, plan.split_seed)  # as training draws it
    want_test = view.kind == "group-test"
    return [i for i, f in enumerate(dataset.fact_ids()) if f in facts and bool(is_test[i]) == want_test]


def write_view(data: Path, rows: list[int], out: Path, keep_split: bool = True) -> None:
    """A data directory of some rows of ``data``: manifest.jsonl with those rows and their images
    (hard links, or copies across file systems) at the same relative paths, so manifest paths stay
    inside it (factlearn resolves them and refuses any that leave the data directory).
    ``keep_split=False`` leaves the split column out: training then draws it per fact."""
    from factlearn.data.manifest import load_dataset

    dataset = load_dataset(data)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    lines = []
    for i in rows:
        r = dataset.records[i]
        rel = r.image.relative_to(dataset.root)
        target = partial / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(r.image, target)
        except OSError:
            shutil.copyfile(r.image, target)
        p, o = r.fact.slots[1], r.fact.slots[2]
        lines.append(json.dumps({"image": rel.as_posix(), "subject": r.fact.slots[0], "predicate": p, "object": o,
                                 "group": r.group, "split": r.split if keep_split else None}))
    (partial / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def train_steps(plan: Plan, exp: Experiments) -> dict[str, int]:
    """Optimizer steps of each run (epochs x batches per task; joint trains on the union so far),
    from the task files and the data; runs whose task file does not exist yet are left out."""
    from factlearn.data.manifest import load_dataset
    from factlearn.data.splits import image_splits, load_tasks_file

    if not all(plan.tasks_file(s).is_file() for s in plan.sequences) or not plan.data.exists():
        return {}
    dataset = load_dataset(plan.data)
    is_test = image_splits(dataset, plan.test_fraction, plan.split_seed)
    fact_ids = dataset.fact_ids()
    train = exp.base_config[plan.scale].get("train", {})
    epochs, batch = train.get("epochs", 4), train.get("batch_size", 64)
    sizes = {}
    for seq in plan.sequences:
        tasks = load_tasks_file(plan.tasks_file(seq), dataset).tasks
        per_fact: dict[int, int] = {}
        for f, test in zip(fact_ids, is_test):
            per_fact[f] = per_fact.get(f, 0) + (not test)
        sizes[seq] = [sum(per_fact.get(f, 0) for f in t.facts) for t in tasks]
    steps = {}
    for run in plan.runs.values():
        n = sizes[run.sequence]
        if run.method == "joint":
            n = [sum(n[: i + 1]) for i in range(len(n))]
        steps[run.id] = sum(epochs * math.ceil(k / batch) for k in n)
    return steps


# ---- running: train, then probe, J at a time -------------------------------------------------------

@dataclass
class Outcome:
    run: RunSpec
    status: str  # "trained", "resumed", "probed", "skipped" (all done already), "failed", "interrupted"
    train_s: float = 0.0  # wall seconds of training
    train_cpu_s: float = 0.0  # CPU seconds of the training process (what a busy machine does not inflate)
    probe_s: float = 0.0
    message: str = ""


def execute(plan: Plan, runs: list[RunSpec], jobs: int, device: str) -> list[Outcome]:
    """Train every run not complete yet and evaluate it on its probe views; ``jobs`` at a time.

    A failed run is reported and the others go on. Ctrl-C reaches the training processes too
    (they save a checkpoint and stop); runs not started yet are not started.
    """
    lock, done_count, stop = threading.Lock(), [0], threading.Event()
    env = child_env(plan.out / "cache")

    def work(run: RunSpec) -> Outcome:
        if stop.is_set():
            return Outcome(run, "interrupted")
        log = plan.out / "logs" / f"{run.id.replace('/', '__')}.log"
        out = Outcome(run, "skipped")
        t0 = time.perf_counter()
        if not run_complete(plan.run_dir(run)):
            cmd = train_command(plan, run, device)
            out.status = "resumed" if "--resume" in cmd else "trained"
            rc, out.train_cpu_s = _call(cmd, log, env)
            out.train_s = time.perf_counter() - t0
            if rc != 0 or not run_complete(plan.run_dir(run)):
                out.status, out.message = "failed", f"train exited with {rc}; see {log}"
        t1 = time.perf_counter()
        for view in run.probes if out.status != "failed" else ():
            if probe_complete(plan, run, view) or stop.is_set():
                continue
            out.status = "probed" if out.status == "skipped" else out.status
            rc, _ = _call([sys.executable, str(Path(__file__).resolve()), "_probe", str(plan.run_dir(run)),
                           str(plan.view_dir(view)), str(plan.probe_file(run, view)), device], log, env)
            if rc != 0:
                out.status, out.message = "failed", f"probe {view} exited with {rc}; see {log}"
                break
        out.probe_s = time.perf_counter() - t1
        with lock:
            done_count[0] += 1
            took = f" in {out.train_s + out.probe_s:.0f} s" if out.status != "skipped" else ""
            print(f"[{done_count[0]}/{len(runs)}] {run.id}: {out.status}{took} {out.message}".rstrip(), flush=True)
        return out

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    futures = [pool.submit(work, run) for run in runs]
    try:
        return [f.result() for f in as_completed(futures)]
    except KeyboardInterrupt:
        stop.set()
        print("interrupted: waiting for the running jobs to save a checkpoint", file=sys.stderr, flush=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _call(cmd: list[str], log: Path, env: dict) -> tuple[int, float]:
    """Run ``cmd`` in ``env`` with its output appended to ``log``; returns (exit code, CPU seconds it used)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=child_cwd(log))
        if not hasattr(os, "wait4"):  # not on POSIX: no per-child CPU time
            return proc.wait(), float("nan")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage.ru_utime + usage.ru_stime


def probe(run_dir: Path, view_dir: Path, out: Path, device: str = "auto") -> None:
    """Evaluate every checkpoint of a run on the images of a view (both protocols, every task), as
    ``factlearn evaluate`` does on test images: ``{"after": {task: {protocol: {task: metrics}}}}``
    (tasks with no image in the view are left out)."""
    import numpy as np

    from factlearn.data.images import load_images
    from factlearn.data.manifest import load_dataset
    from factlearn.evaluate import cut_views, embed_test_set, evaluate_view
    from factlearn.run import RunDir
    from factlearn.train import resolve_device

    run = RunDir(run_dir)
    cfg, tasks, facts = run.config(), run.tasks(), run.facts()
    view = load_dataset(view_dir)
    fact_ids = np.array(facts.ids([r.fact for r in view.records]))  # (N,) in the run's fact table
    images = load_images([r.image for r in view.records], cfg.model.image_size)
    doc: dict = {"run": str(run_dir), "view": str(view_dir), "images": len(fact_ids), "after": {}}
    for trained, name in enumerate(run.completed(), start=1):
        model, _ = run.load_model(name, resolve_device(device))
        img_emb, fact_emb = embed_test_set(model, facts, images, cfg.eval.batch_size)  # once for both protocols
        doc["after"][name] = {
            proto: {v.name: evaluate_view(v, facts)
                    for v in cut_views(tasks, fact_ids, img_emb, fact_emb, trained, proto) if len(v.rows)}
            for proto in PROTOCOLS
        }
    _write_text(out, json.dumps(doc, indent=1) + "\n")


# ---- tables and plots --------------------------------------------------------------------------

def mean_std(values: list[float]) -> str:
    """Percent, one decimal: ``72.8 ± 1.2`` over seeds, ``72.8`` for one, ``-`` for none."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


@dataclass
class SuiteResults:
    """The metrics of a suite's complete runs: per entry, one metrics.json (and probes) per seed."""

    tasks: list[str]
    metrics: dict[str, list[dict]]  # entry label -> metrics.json documents
    probes: dict[str, dict[str, list[dict]]]  # entry label -> view -> probe documents
    seed0: dict[str, Path]  # entry label -> run directory of the first seed (for plots)


def collect(plan: Plan, suite: str) -> SuiteResults:
    seq, entries = plan.suites[suite]
    res = SuiteResults([], {}, {}, {})
    for e in entries:
        res.metrics[e.label], res.probes[e.label] = [], {}
        for seed in plan.seeds:
            run = plan.runs[f"{seq}/seed{seed}/{e.variant}"]
            if not run_complete(plan.run_dir(run)):
                continue
            doc = _read_json(plan.run_dir(run) / "metrics.json")
            res.tasks = doc["tasks"]
            res.metrics[e.label].append(doc)
            res.seed0.setdefault(e.label, plan.run_dir(run))
            for view in run.probes:
                if probe_complete(plan, run, view):
                    res.probes[e.label].setdefault(view, []).append(_read_json(plan.probe_file(run, view)))
    return res


def final_table(res: SuiteResults, proto: str, metric: str) -> str:
    """Per method: each task's accuracy after the last task, their mean, and BWT (< 0: forgetting)."""
    rows = []
    for label, docs in res.metrics.items():
        blocks = [d["protocols"][proto] for d in docs]
        cells = [mean_std([b["final"][t][metric] for b in blocks]) for t in res.tasks]
        cells += [mean_std([b["sequence"][metric]["average"] for b in blocks]),
                  mean_std([b["sequence"][metric]["bwt"] for b in blocks])]
        rows.append([label, *cells])
    return md_table(["method", *res.tasks, "mean", "BWT"], rows)


def matrix_table(docs: list[dict], tasks: list[str], proto: str, metric: str) -> str:
    """Row i: after training task i; column j: accuracy on task j (tasks not trained yet left blank)."""
    matrices = [d["protocols"][proto]["matrix"][metric] for d in docs]
    rows = [[f"after {ti}", *(mean_std([m[i][j] for m in matrices]) if j <= i else "" for j in range(len(tasks)))]
            for i, ti in enumerate(tasks)]
    return md_table(["", *tasks], rows)


def adaptation_values(res: SuiteResults, proto: str, metric: str) -> dict[str, dict[str, list[float]]]:
    """Per entry, after the last task: B1 and B2 test accuracy and accuracy on each half's images."""
    first, last = res.tasks[0], res.tasks[-1]
    out = {}
    for label, docs in res.metrics.items():
        vals = {f"{t} test": [d["protocols"][proto]["final"][t][metric] for d in docs] for t in res.tasks}
        for view, probes in sorted(res.probes[label].items()):
            half = view.rsplit("-", 1)[-1]
            vals[f"{half} images"] = [p["after"][last][proto][first][metric] for p in probes]
        out[label] = vals
    return out


def monitored_curve(probes: list[dict], tasks: list[str], proto: str, metric: str) -> list[list[float]]:
    """Per seed, after each task: the view's accuracy over the facts of the tasks trained so far
    (an image-weighted mean of the per-task results)."""
    curves = []
    for p in probes:
        curve = []
        for i, after in enumerate(tasks):
            parts = [p["after"][after][proto][t] for t in tasks[: i + 1] if t in p["after"][after][proto]]
            n = sum(x["n"] for x in parts)
            curve.append(sum(x[metric] * x["n"] for x in parts) / n if n else float("nan"))
        curves.append(curve)
    return curves


def suite_markdown(plan: Plan, suite: str, exp: Experiments, res: SuiteResults, plots: list[Path]) -> str:
    sc = exp.suites[suite]
    seq = plan.suites[suite][0]
    n_seeds = max((len(d) for d in res.metrics.values()), default=0)
    about = (f"Task sequence `{seq}` ({sc.split} split, {sc.tasks} tasks; [task file](tasks/{seq}.json)), "
             f"{plan.scale} scale, {n_seeds} seed(s): mean ± std in percent (no ± with one seed); `-`: run missing "
             "or incomplete.")
    lines = [f"# {suite}", "", SUITE_DOC[suite], "", about, ""]
    for section in suite_sections(suite, sc, res):
        lines += [section, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.name}]({p.relative_to(plan.out).as_posix()})" for p in plots] + [""]
    return "\n".join(lines)


def suite_sections(suite: str, sc: SuiteConfig, res: SuiteResults) -> list[str]:
    """The markdown tables of a suite; the first is its headline table (README.md shows it)."""
    if not res.tasks:
        return ["No complete run yet."]
    out = []
    if suite == "adaptation":
        for proto in PROTOCOLS:
            values = {m: adaptation_values(res, proto, m) for m in METRICS}
            cols = list(dict.fromkeys(c for v in values["top1"].values() for c in v))
            rows = [[label, *(mean_std(values[m][label].get(c, [])) for m in METRICS for c in cols)]
                    for label in res.metrics]
            out.append(f"### After {res.tasks[-1]}, {proto} protocol\n\n"
                       + md_table(["method", *(f"{c} {METRIC_NAMES[m]}" for m in METRICS for c in cols)], rows))
        return out
    if suite == "topic":
        for proto in PROTOCOLS:
            for metric in METRICS:
                rows = []
                for label in res.metrics:
                    curves = [c for v, p in res.probes[label].items() for c in monitored_curve(p, res.tasks, proto, metric)]
                    rows.append([label, *(mean_std([c[i] for c in curves]) for i in range(len(res.tasks)))])
                out.append(f"### Group `{sc.group}`: {METRIC_NAMES[metric]}, {proto} protocol\n\n"
                           f"Accuracy on the test images of the group's facts trained so far, after each task.\n\n"
                           + md_table(["method", *(f"after {t}" for t in res.tasks)], rows))
        return out
    for proto in PROTOCOLS:
        for metric in METRICS:
            out.append(f"### Final accuracy after {res.tasks[-1]}: {METRIC_NAMES[metric]}, {proto} protocol\n\n"
                       + final_table(res, proto, metric))
    if len(res.tasks) > 2:
        for label, docs in res.metrics.items():
            if docs:
                out.append(f"<details><summary>Accuracy matrix: {label} (standard protocol)</summary>\n\n"
                           + "\n\n".join(f"{METRIC_NAMES[m]}\n\n" + matrix_table(docs, res.tasks, "standard", m)
                                         for m in METRICS) + "\n\n</details>")
    return out


def suite_plots(plan: Plan, suite: str, sc: SuiteConfig, res: SuiteResults) -> list[Path]:
    """factlearn.compare's plots of the first seed's runs, and the suite's own figure."""
    from factlearn.compare import compare_plots

    folder = plan.out / "plots" / suite
    written = []
    runs = [str(p) for p in res.seed0.values()]
    if not runs:
        return []
    if suite == "adaptation":
        written += [_adaptation_figure(res, proto, folder / f"halves_{proto}.png") for proto in PROTOCOLS]
    elif suite == "topic":
        written += [_topic_figure(res, sc.group, proto, folder / f"group_{sc.group}_{proto}.png") for proto in PROTOCOLS]
    else:
        written += [_final_figure(res, suite, proto, folder / f"final_{proto}.png") for proto in PROTOCOLS]
    for proto in PROTOCOLS:
        pngs = compare_plots(runs, folder / proto, list(METRICS), proto)
        written += sorted(p for p in pngs if p.name.startswith("sequence_"))  # the matrices: in the folder
    return written


def _figure(ncols: int):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False).ravel()


def _bars(ax, values: dict[str, dict[str, list[float]]], ylabel: str) -> None:
    """Grouped bars: one group per row label, one bar per column, mean with the std over seeds."""
    import numpy as np

    labels = list(values)
    columns = list(dict.fromkeys(c for v in values.values() for c in v))
    width = 0.8 / len(columns)
    for k, col in enumerate(columns):
        cells = [values[lab].get(col, []) for lab in labels]
        means = [np.mean(c) if c else np.nan for c in cells]
        stds = [np.std(c, ddof=1) if len(c) > 1 else 0 for c in cells]
        ax.bar(np.arange(len(labels)) + (k - (len(columns) - 1) / 2) * width, means, width, yerr=stds, label=col)
    ax.set_xticks(range(len(labels)), [textwrap.fill(lab, 16) for lab in labels], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _adaptation_figure(res: SuiteResults, proto: str, path: Path) -> Path:
    fig, axes = _figure(len(METRICS))
    for ax, metric in zip(axes, METRICS):
        _bars(ax, adaptation_values(res, proto, metric), f"{METRIC_NAMES[metric]} after {res.tasks[-1]}")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Importance from one half of {res.tasks[0]} ({proto} protocol)")
    return _save(fig, path)


def _final_figure(res: SuiteResults, suite: str, proto: str, path: Path) -> Path:
    """Each task's accuracy after the last task, and their mean, per method (mean ± std over seeds)."""
    fig, axes = _figure(len(METRICS))
    for ax, metric in zip(axes, METRICS):
        values = {}
        for label, docs in res.metrics.items():
            blocks = [d["protocols"][proto] for d in docs]
            values[label] = {t: [b["final"][t][metric] for b in blocks] for t in res.tasks}
            values[label]["mean"] = [b["sequence"][metric]["average"] for b in blocks]
        _bars(ax, values, f"{METRIC_NAMES[metric]} after {res.tasks[-1]}")
    axes[0].legend(fontsize=8, ncols=len(res.tasks) + 1)
    fig.suptitle(f"{suite}: each task's accuracy after the last one ({proto} protocol)")
    return _save(fig, path)


def _topic_figure(res: SuiteResults, group: str, proto: str, path: Path) -> Path:
    import numpy as np

    fig, axes = _figure(len(METRICS))
    x = np.arange(len(res.tasks))
    for ax, metric in zip(axes, METRICS):
        for label in res.metrics:
            curves = np.array([c for p in res.probes[label].values() for c in monitored_curve(p, res.tasks, proto, metric)])
            if not len(curves):
                continue
            mean = curves.mean(0)
            ax.plot(x, mean, marker="o", label=label)
            if len(curves) > 1:
                std = curves.std(0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xticks(x, [f"after {t}" for t in res.tasks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"{METRIC_NAMES[metric]} on group '{group}'")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Monitored group '{group}': its facts trained so far ({proto} protocol)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path


def write_report(plan: Plan, exp: Experiments, invocation: dict, plots: bool = True) -> Path:
    """<suite>.md and plots for every suite of the plan with a complete run, and README.md indexing them."""
    import factlearn

    timings = _read_json(plan.out / "timings.json") or {}
    lines = [f"# Reproduction results ({plan.scale} scale)", "",
             (f"Written by `scripts/reproduce.py` on {invocation['finished']} (command: `{invocation['command']}`; "
              f"factlearn {factlearn.__version__} from `{Path(factlearn.__file__).parent}`)."), "",
             f"- data: `{plan.data}`" + (f" (built-in world, preset {plan.world['preset']}, seed {plan.world['seed']})"
                                         if plan.world else ""),
             (f"- seeds: {len(plan.seeds)} (training seeds {', '.join(map(str, plan.seeds))}; split seed "
              f"{plan.split_seed} for every run)"),
             (f"- configs: `configs/` (model and training: configs/reproduce/{plan.scale}.yaml; methods: "
              "configs/reproduce/methods.yaml)"),
             "- invocations (wall time to prepare, train and probe; timings.json):",
             *(f"  - {i['finished']}: `{i['command']}`: {i['seconds'] / 60:.1f} min, {i['jobs']} job(s), "
               f"{i['trained']} run(s) trained, {i['skipped']} already complete, {i['failed']} failed"
               for i in timings.get("invocations", [invocation])), ""]
    timed = [t for t in timings.get("runs", {}).values() if t.get("status") == "trained" and t.get("steps")]
    if timed:
        wall, cpu = sum(t["train_s"] for t in timed), sum(t.get("train_cpu_s", math.nan) for t in timed)
        steps = sum(t["steps"] for t in timed)
        lines += [(f"- training time of the {len(timed)} runs trained from scratch: {wall / 60:.1f} min wall, "
                   f"{cpu / 60:.1f} min CPU, for {steps} optimizer steps: {1000 * wall / steps:.0f} ms wall, "
                   f"{1000 * cpu / steps:.0f} ms CPU per step (start-up, importance and evaluation included)"), ""]
    for suite in plan.suites:
        sc = exp.suites[suite]
        res = collect(plan, suite)
        if not res.tasks:  # nothing of it has run (in OUT, with these seeds)
            continue
        pngs = suite_plots(plan, suite, sc, res) if plots else []
        _write_text(plan.out / f"{suite}.md", suite_markdown(plan, suite, exp, res, pngs))
        lines += [f"## {suite}", "", SUITE_DOC[suite], "",
                  f"[All tables and plots]({suite}.md) (the generalized protocol too); plots in `plots/{suite}/`.", "",
                  "\n\n".join(suite_sections(suite, sc, res)[: HEADLINE_TABLES.get(suite, 2)]), ""]
    readme = plan.out / "README.md"
    _write_text(readme, "\n".join(lines))
    return readme


# ---- the command -------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, nargs="+", choices=[*SUITES, "all"],
                   help="One or more suites (or all), trained together: --jobs packs their runs.")
    p.add_argument("--quick", action="store_true", help="Small world and model, 1 seed: about 15 min on 2 cores.")
    p.add_argument("--seeds", type=int, default=None, help="Training seeds 0..N-1 (default: 1 quick, 3 full).")
    p.add_argument("--out", type=Path, default=None, help="Results folder (default: results/quick or results/full).")
    p.add_argument("--data", type=Path, default=None, help="Data directory (default: generate the built-in world).")
    p.add_argument("--jobs", type=int, default=1, help="Training processes at once (each OMP_NUM_THREADS=1).")
    p.add_argument("--device", default="auto", help="Passed to factlearn train (auto, cpu, cuda).")
    p.add_argument("--experiments", type=Path, default=CONFIG_DIR / "experiments.yaml", help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="Print the runs it would launch and exit.")
    p.add_argument("--no-plots", action="store_true", help="Tables only.")
    p.add_argument("--report-only", action="store_true",
                   help="Train nothing: rewrite the tables and plots from the runs of OUT complete so far.")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # Ctrl-C reaches the children too: they save a checkpoint and stop
        print("Interrupted: run the same command again to continue.", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] == ["_probe"]:  # internal: a job's evaluation of a run on a view (see execute)
        probe(Path(argv[1]), Path(argv[2]), Path(argv[3]), *argv[4:5])
        return 0
    args = parse_args(argv)
    started = time.perf_counter()
    scale = "quick" if args.quick else "full"
    try:
        exp = load_experiments(args.experiments)
        suites = list(exp.suites) if "all" in args.suite else list(dict.fromkeys(args.suite))
        seeds = args.seeds or (1 if args.quick else 3)
        plan = make_plan(exp, suites, scale, seeds, args.out or ROOT / "results" / scale, args.data)
        configs = {m: method_config(exp, scale, m) for m in {r.method for r in plan.runs.values()}}
        for run in plan.runs.values():
            why = config_mismatch(plan, run, configs[run.method])
            if why:
                raise SetupError(f"{plan.run_dir(run)} was trained with another config ({why}): "
                                 "use another --out, or delete that run")
        if args.dry_run:
            print_plan(plan, args.device, train_steps(plan, exp))
            return 0
        if args.report_only:
            invocation = {"command": "scripts/reproduce.py " + " ".join(argv), "jobs": 0,
                          "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seconds": 0.0,
                          "trained": 0, "skipped": 0, "failed": 0}
            readme = write_report(make_plan(exp, list(exp.suites), scale, seeds, plan.out, args.data), exp,
                                  invocation, plots=not args.no_plots)
            print(f"report of the complete runs so far: {readme}")
            return 0
        if args.data is not None and not args.data.exists():
            raise SetupError(f"--data {args.data}: not found")
        prepare(plan, exp, args.jobs)
    except SetupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    steps = train_steps(plan, exp)
    runs = sorted(plan.runs.values(), key=lambda r: -steps.get(r.id, 0))  # longest first: they pack better
    print(f"{len(runs)} runs ({sum(not run_complete(plan.run_dir(r)) for r in runs)} to train), "
          f"{args.jobs} at a time; logs in {plan.out / 'logs'}", flush=True)
    outcomes = execute(plan, runs, args.jobs, args.device)
    timings = _read_json(plan.out / "timings.json") or {}
    for o in outcomes:
        # a resumed run's time covers only its rest: it does not replace a from-scratch timing
        if o.status == "trained" or (o.status == "resumed" and o.run.id not in timings.get("runs", {})):
            timings.setdefault("runs", {})[o.run.id] = {
                "status": o.status, "train_s": round(o.train_s, 1), "train_cpu_s": round(o.train_cpu_s, 1),
                "probe_s": round(o.probe_s, 1), "steps": steps.get(o.run.id)}
    invocation = {"command": "scripts/reproduce.py " + " ".join(argv), "jobs": args.jobs,
                  "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "seconds": round(time.perf_counter() - started, 1),
                  "trained": sum(o.status in ("trained", "resumed") for o in outcomes),
                  "skipped": sum(o.status in ("skipped", "probed") for o in outcomes),
                  "failed": sum(o.status == "failed" for o in outcomes)}
    timings.setdefault("invocations", []).append(invocation)
    _write_text(plan.out / "timings.json", json.dumps(timings, indent=1) + "\n")
    # the index covers every suite with complete runs in OUT, not only those of this invocation
    everything = make_plan(exp, list(exp.suites), scale, len(plan.seeds), plan.out, args.data)
    readme = write_report(everything, exp, invocation, plots=not args.no_plots)
    invocation["seconds"] = round(time.perf_counter() - started, 1)
    print(f"done in {invocation['seconds'] / 60:.1f} min: {readme}")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED {o.run.id}: {o.message}", file=sys.stderr)
    return 1 if failed else 0


def print_plan(plan: Plan, device: str, steps: dict[str, int]) -> None:
    """The runs, their state (complete, resume, new), commands and training steps (once the task files exist)."""
    print(f"{plan.scale} scale, data {plan.data}" + (" (to generate)" if plan.world else ""))
    for suite, (seq, entries) in plan.suites.items():
        print(f"{suite}: {seq}, {len(entries)} rows x {len(plan.seeds)} seed(s)")
    for run in plan.runs.values():
        state = "complete" if run_complete(plan.run_dir(run)) else (
            "resume" if (plan.run_dir(run) / "run.json").is_file() else "new")
        probes = f" probes: {', '.join(run.probes)}" if run.probes else ""
        n = f" ({steps[run.id]} steps)" if run.id in steps else ""
        print(f"  [{state}] {run.id}{n}{probes}")
        if state != "complete":
            print("    " + " ".join(train_command(plan, run, device)))
    print(f"{len(plan.runs)} runs" + (f", {sum(steps.values())} optimizer steps" if steps else ""))


if __name__ == "__main__":
    sys.exit(main())
