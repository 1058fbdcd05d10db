"""Preparing a plan's files before training: the world, the base world and the pretrained backbone
(protocols that start from one), the task files, the views, the configs; and how many optimizer
steps each run will take.

Everything is made only when missing, so a reproduction that stopped continues where it was.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import yaml

from ..config import Config, TrainConfig, from_dict
from ..data.importers import place_image
from ..data.manifest import Dataset, ManifestRow, load_dataset, write_manifest
from ..data.splits import image_splits, load_tasks_file, make_split, monitored_facts
from ..errors import UserError
from ..io import atomic_write_text, read_json
from ..training.schedule import task_steps
from .children import check_child_factlearn, factlearn_cli
from .config import Experiments, WorldSpec
from .plan import FACT_HALVES, GROUP_HALVES, HALVES, Plan, View
from .protocols import run_config


def prepare(plan: Plan, exp: Experiments, jobs: int, configs: dict[str, dict], device: str = "auto") -> None:
    """Make whatever is missing of the world, the pretrained backbone, the task files, the views and
    the run configs (``configs``: :func:`run_configs`)."""
    log = plan.log_file("prepare")
    check_child_factlearn(log)
    if plan.world is not None:
        ensure_world(plan.data, plan.world, jobs, log)
        for name, spec in sorted(plan.worlds.items()):
            # a style's world is the world's facts and scenes; the topic world's regular facts are the
            # world's too (vocabulary.sample_facts draws them first), its topic facts ones no other world
            # shows: the base world, which excludes the world's facts, shares none with either
            ensure_world(plan.world_dir(name), spec, jobs, log)
            if spec.style:
                check_restyled(plan.data, plan.world_dir(name))
    ensure_pretrained(plan, exp, plan.data, jobs, device, log)
    write_tasks_files(plan, log)
    for view in plan.views.values():
        if not (plan.view_dir(view.name) / "manifest.jsonl").is_file():
            source = plan.world_dir(view.style) if view.style else plan.data_of(view.sequence)
            write_view(source, view_rows(plan, view), plan.view_dir(view.name))
    for name, cfg in configs.items():
        write_config(plan.config_file(name), cfg, plan.scale)


def run_configs(plan: Plan, exp: Experiments) -> dict[str, dict]:
    """The config of every run of the plan, by config name: a method, a protocol's variant, or a
    suite's variant (:attr:`Plan.config_keys`: its method's config, lambda included, with its keys)."""
    names = sorted({r.config or r.method for r in plan.runs.values()})
    out = {}
    for n in names:
        method, keys = plan.config_keys.get(n, (n, {}))
        out[n] = run_config(exp, plan.protocol, plan.scale, method, plan.pretrained)
        out[n]["method"].update(keys)
        from_dict(Config, copy.deepcopy(out[n]))  # a bad key is a UserError here, not in the child
    return out


def ensure_world(path: Path, world: WorldSpec, jobs: int, log: Path, exclude: Path | None = None) -> None:
    """Generate a built-in world (``factlearn synth``) into ``path`` unless it is there; ``exclude``:
    a data directory none of whose facts it may show."""
    if (path / "manifest.jsonl").is_file():
        return
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"generating the {world.preset} world in {path}", flush=True)
    factlearn_cli(["synth", str(partial), *world.synth_options(), "--workers", str(jobs),
                   *(["--exclude", str(exclude)] if exclude else [])], log)
    partial.rename(path)


def ensure_pretrained(plan: Plan, exp: Experiments, world: Path, jobs: int, device: str, log: Path) -> None:
    """The plan's pretrained backbone unless it is there (or the protocol needs none): the base world
    (sharing no fact with ``world``), then ``factlearn pretrain`` on it with the scale's config.
    One pretrained with another number of epochs than ``pretrain_epochs`` is refused: the runs
    already made from it would no longer be the plan's."""
    if plan.pretrained is None:
        return
    record = plan.pretrained / "pretrain.json"
    if record.is_file():
        done = read_json(record)
        if isinstance(done, dict) and done.get("epochs") != plan.pretrain_epochs:
            raise UserError(f"{record}: pretrained for {done.get('epochs')} epochs, but experiments.yaml asks for "
                            f"{plan.pretrain_epochs}; use another --out (runs made from it would mix the two)")
        return
    ensure_world(plan.base_dir, plan.base, jobs, log, exclude=world)
    print(f"pretraining the image tower on {plan.base_dir} ({plan.pretrain_epochs} epochs)", flush=True)
    factlearn_cli(["pretrain", "--data", str(plan.base_dir), "--config", str(exp.config_path[plan.scale]),
                   "--out", str(plan.pretrained), "--epochs", str(plan.pretrain_epochs), "--seed", "0",
                   "--device", device], log)


def check_restyled(world: Path, restyled: Path) -> None:
    """A world rendered in another style must hold the same manifest rows as ``world`` but for the
    pixels (same facts, ids and splits, in the same order: :mod:`factlearn.data.synth.styles`), since
    its views are cut by the rows of ``world``; a world made otherwise is a UserError."""
    a, b = load_dataset(world), load_dataset(restyled)
    same = len(a.records) == len(b.records) and all(
        (r.fact, r.split, r.image.relative_to(a.root)) == (q.fact, q.split, q.image.relative_to(b.root))
        for r, q in zip(a.records, b.records))
    if not same:
        raise UserError(f"{restyled}: not {world} in another style (its manifest rows differ); remove it and run again")


def write_tasks_files(plan: Plan, log: Path) -> None:
    """``factlearn split`` for every task sequence of the plan (with adaptation halves) not written yet."""
    for seq in plan.sequences:
        if not plan.tasks_file(seq).is_file():
            factlearn_cli(["split", str(plan.data_of(seq)), *split_options(plan, seq), "--out", str(plan.tasks_file(seq))],
                          log)


def split_options(plan: Plan, sequence: str) -> list[str]:
    """The options of the ``factlearn split`` that writes a sequence's task file (but --out)."""
    kind, tasks = plan.sequences[sequence]
    if sequence in plan.split_extra:  # its own options (topic-distinct: held-out images, the monitored group)
        halves = plan.split_extra[sequence]
    else:
        halves = (["--adaptation"] if sequence.endswith(FACT_HALVES)
                  else ["--adaptation", "--adaptation-by", "group"] if sequence.endswith(GROUP_HALVES)
                  else ["--adaptation-images"])
    return ["--kind", kind, "--tasks", str(tasks), "--seed", str(plan.split_seed), *halves,
            "--test-fraction", str(plan.test_fraction)]


def write_config(path: Path, cfg: dict, scale: str) -> None:
    """A run config for ``factlearn train --config``, marked as written from configs/reproduce/."""
    atomic_write_text(path, f"# written by scripts/ ({scale} scale): do not edit, edit configs/reproduce/\n"
                      + yaml.safe_dump(cfg, sort_keys=False))


def view_rows(plan: Plan, view: View) -> list[int]:
    """Record indices (rows of the data's manifest) of a view: of its sequence's data (a style's
    world has the same rows as the world)."""
    dataset = load_dataset(plan.data_of(view.sequence))
    if view.kind in ("style-train", "style-test"):  # rows of the clean world, the same in the restyled one
        is_test = image_splits(dataset, plan.test_fraction, plan.split_seed)
        if view.kind == "style-test":
            return [i for i in range(len(dataset.records)) if is_test[i]]
        task_file = load_tasks_file(plan.tasks_file(view.sequence), dataset)
        first, held_out = set(task_file.tasks[0].facts), set(task_file.held_out)
        return [i for i, f in enumerate(dataset.fact_ids()) if f in first and not is_test[i] and i not in held_out]
    if view.kind in ("half", "halves", "half-test"):
        task_file = load_tasks_file(plan.tasks_file(view.sequence), dataset)
        halves = task_file.adaptation_facts if view.kind == "half-test" else task_file.adaptation
        for half in [view.half] if view.half else HALVES:
            if half not in halves:
                raise UserError(f"{plan.tasks_file(view.sequence)} has no {'fact-level ' * (view.kind == 'half-test')}"
                                f"adaptation half {half}")
        if view.kind == "half":
            return list(halves[view.half])
        if view.kind == "halves":
            return sorted(i for h in HALVES for i in halves[h])
        facts = set(halves[view.half])
        is_test = image_splits(dataset, plan.test_fraction, plan.split_seed)
        return [i for i, f in enumerate(dataset.fact_ids()) if f in facts and is_test[i]]
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


def train_steps(plan: Plan, configs: dict[str, dict], dataset: Dataset | None = None) -> dict[str, int]:
    """Optimizer steps of each run (:func:`factlearn.training.schedule.task_steps` per task, with the
    run's config; joint trains on the union so far), from the data (``dataset``, default each
    sequence's data directory: :meth:`Plan.data_of`; the world stands in for a variant not made yet)
    and the task files (or, before they are written, the split they will hold); empty until the data
    exists. With ``train.val_fraction`` a task's validation share is not trained on and its epochs
    are a maximum (the task may stop at a plateau): the count is an upper bound."""
    if dataset is None and not (plan.data / "manifest.jsonl").is_file():
        return {}
    loaded: dict[Path, Dataset] = {}
    per_task: dict[str, list[int]] = {}  # sequence -> training images of each task
    for seq, (kind, tasks) in plan.sequences.items():
        path = plan.data_of(seq)
        made = dataset is not None or (path / "manifest.jsonl").is_file()
        key = path if made else plan.data
        if dataset is None and key not in loaded:
            loaded[key] = load_dataset(key)
        data = dataset or loaded[key]
        is_test = image_splits(data, plan.test_fraction, plan.split_seed)
        if made and plan.tasks_file(seq).is_file():
            task_file = load_tasks_file(plan.tasks_file(seq), data)
            facts = [t.facts for t in task_file.tasks]
            is_test[task_file.held_out] = True  # held-out images are not trained on either
        else:
            facts = [t.facts for t in make_split(data, kind, tasks, plan.split_seed)]
        per_fact: dict[int, int] = {}  # training images per fact
        for f, test in zip(data.fact_ids(), is_test):
            per_fact[f] = per_fact.get(f, 0) + (not test)
        per_task[seq] = [sum(per_fact.get(f, 0) for f in task) for task in facts]
    steps = {}
    for run in plan.runs.values():
        train = from_dict(TrainConfig, configs[run.config or run.method].get("train"), "train")
        n = [k - (max(1, round(train.val_fraction * k)) if train.val_fraction else 0) for k in per_task[run.sequence]]
        if run.method == "joint":
            n = [sum(n[: i + 1]) for i in range(len(n))]
        steps[run.id] = sum(task_steps(k, train.batch_size, train.epochs) for k in n)
    return steps


def pretrain_steps(plan: Plan, exp: Experiments) -> int | None:
    """Optimizer steps of the plan's pretraining (one task: every training image of the base world),
    once the base world exists; None before, or without one."""
    if plan.pretrained is None or not (plan.base_dir / "manifest.jsonl").is_file():
        return None
    cfg = exp.scale_config(plan.scale)  # what `factlearn pretrain --config` gets
    n = int((~image_splits(load_dataset(plan.base_dir), cfg.split.test_fraction, cfg.split.seed)).sum())
    n -= max(1, round(cfg.train.val_fraction * n)) if cfg.train.val_fraction else 0
    return task_steps(n, cfg.train.batch_size, plan.pretrain_epochs)
