"""Preparing a plan's files before training: the world, the task files, the views, the configs;
and how many optimizer steps each run will take.

Everything is made only when missing, so a reproduction that stopped continues where it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..data.importers import place_image
from ..data.manifest import ManifestRow, load_dataset, write_manifest
from ..data.splits import image_splits, load_tasks_file, monitored_facts
from ..errors import UserError
from ..io import atomic_write_text
from ..training.schedule import task_steps
from .children import check_child_factlearn, factlearn_cli
from .config import Experiments, WorldSpec, method_config
from .plan import Plan, View


def prepare(plan: Plan, exp: Experiments, jobs: int) -> None:
    """Make whatever is missing of the world, the task files, the views and the configs."""
    log = plan.log_file("prepare")
    check_child_factlearn(log)
    if plan.world is not None:
        ensure_world(plan.data, plan.world, jobs, log)
    write_tasks_files(plan, log)
    for view in plan.views.values():
        if not (plan.view_dir(view.name) / "manifest.jsonl").is_file():
            write_view(plan.data, view_rows(plan, view), plan.view_dir(view.name))
    for method in sorted({r.method for r in plan.runs.values()}):
        write_config(plan.config_file(method), method_config(exp, plan.scale, method), plan.scale)


def ensure_world(path: Path, world: WorldSpec, jobs: int, log: Path) -> None:
    """Generate the built-in world (``factlearn synth``) into ``path`` unless it is there."""
    if (path / "manifest.jsonl").is_file():
        return
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"generating the {world.preset} world in {path}", flush=True)
    factlearn_cli(["synth", str(partial), "--preset", world.preset, "--seed", str(world.seed),
                   "--workers", str(jobs)], log)
    partial.rename(path)


def write_tasks_files(plan: Plan, log: Path) -> None:
    """``factlearn split`` for every task sequence of the plan (with adaptation halves) not written yet."""
    for seq in plan.sequences:
        if not plan.tasks_file(seq).is_file():
            factlearn_cli(["split", str(plan.data), *split_options(plan, seq), "--out", str(plan.tasks_file(seq))], log)


def split_options(plan: Plan, sequence: str) -> list[str]:
    """The options of the ``factlearn split`` that writes a sequence's task file (but --out)."""
    kind, tasks = plan.sequences[sequence]
    return ["--kind", kind, "--tasks", str(tasks), "--seed", str(plan.split_seed), "--adaptation-images",
            "--test-fraction", str(plan.test_fraction)]


def write_config(path: Path, cfg: dict, scale: str) -> None:
    """A run config for ``factlearn train --config``, marked as written from configs/reproduce/."""
    atomic_write_text(path, f"# written by scripts/ ({scale} scale): do not edit, edit configs/reproduce/\n"
                      + yaml.safe_dump(cfg, sort_keys=False))


def view_rows(plan: Plan, view: View) -> list[int]:
    """Record indices (rows of the data's manifest) of a view."""
    dataset = load_dataset(plan.data)
    if view.kind == "half":
        halves = load_tasks_file(plan.tasks_file(view.sequence), dataset).adaptation
        if view.half not in halves:
            raise UserError(f"{plan.tasks_file(view.sequence)} has no adaptation half {view.half}")
        return list(halves[view.half])
    facts = set(monitored_facts(dataset, view.group))  # a UserError names the groups the data has
    is_test = image_splits(dataset, plan.test_fraction, plan.split_seed)  # as training draws it
    want_test = view.kind == "group-test"
    return [i for i, f in enumerate(dataset.fact_ids()) if f in facts and bool(is_test[i]) == want_test]


def write_view(data: Path, rows: list[int], out: Path, keep_split: bool = True) -> None:
    """A data directory of some rows of ``data``: its manifest with those rows, and their images
    (hard links, or copies across file systems) at the same relative paths, so manifest paths stay
    inside it (factlearn resolves them and refuses any that leave the data directory).
    ``keep_split=False`` leaves the split column out: training then draws it per fact."""
    dataset = load_dataset(data)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    manifest = []
    for i in rows:
        r = dataset.records[i]
        rel = r.image.relative_to(dataset.root)
        place_image(r.image, partial / rel, link=True)
        manifest.append(ManifestRow(rel.as_posix(), r.fact, r.group, r.split if keep_split else None))
    write_manifest(partial, manifest)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def train_steps(plan: Plan, exp: Experiments) -> dict[str, int]:
    """Optimizer steps of each run (:func:`factlearn.training.schedule.task_steps` per task; joint
    trains on the union so far), from the task files and the data; empty until the task files exist."""
    if not all(plan.tasks_file(s).is_file() for s in plan.sequences) or not plan.data.exists():
        return {}
    dataset = load_dataset(plan.data)
    is_test = image_splits(dataset, plan.test_fraction, plan.split_seed)
    train = exp.scale_config(plan.scale).train
    per_fact: dict[int, int] = {}  # training images per fact
    for f, test in zip(dataset.fact_ids(), is_test):
        per_fact[f] = per_fact.get(f, 0) + (not test)
    sizes = {seq: [sum(per_fact.get(f, 0) for f in t.facts) for t in load_tasks_file(plan.tasks_file(seq), dataset).tasks]
             for seq in plan.sequences}
    steps = {}
    for run in plan.runs.values():
        n = sizes[run.sequence]
        if run.method == "joint":
            n = [sum(n[: i + 1]) for i in range(len(n))]
        steps[run.id] = sum(task_steps(k, train.batch_size, train.epochs) for k in n)
    return steps
