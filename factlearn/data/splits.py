"""Task sequences: which facts each task teaches, and which images are for test.

A split cuts the FACTS into disjoint tasks; every image follows its fact, so one fact's images
never straddle two tasks. Within a task, images keep the manifest's train/test split; rows with
none are assigned per fact with a seeded draw (at least one train and one test image per fact
when the fact has two or more).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..facts import FactTable
from .manifest import Dataset


@dataclass
class Task:
    name: str
    facts: list[int]  # fact ids (rows of the FactTable)


def random_split(num_facts: int, k: int, seed: int) -> list[Task]:
    """Facts shuffled with ``seed`` and cut into k near-equal disjoint tasks B1..Bk."""
    if k < 1 or k > num_facts:
        raise UserError(f"split.tasks: cannot split {num_facts} facts into {k} tasks")
    order = np.random.default_rng(seed).permutation(num_facts)
    return [Task(f"B{i + 1}", sorted(int(f) for f in part)) for i, part in enumerate(np.array_split(order, k))]


def semantic_split(facts: FactTable, groups: dict, k: int, seed: int) -> list[Task]:
    """Whole semantic groups per task: groups (in a seeded order) are dealt to the task with the
    fewest facts so far, so sizes stay balanced while no group is cut in two."""
    by_group: dict[str, list[int]] = {}
    for i, fact in enumerate(facts.facts):
        group = groups.get(fact)
        if group is None:
            raise UserError(f"split.kind semantic: fact {fact} has no group in the manifest")
        by_group.setdefault(group, []).append(i)
    if len(by_group) < k:
        raise UserError(f"split.tasks: {len(by_group)} semantic groups cannot fill {k} tasks")
    names = sorted(by_group)
    rng = np.random.default_rng(seed)
    names = [names[i] for i in rng.permutation(len(names))]
    names.sort(key=lambda g: -len(by_group[g]))  # largest first (stable: seeded order breaks ties)
    tasks: list[list[int]] = [[] for _ in range(k)]
    for g in names:
        min(tasks, key=len).extend(by_group[g])
    return [Task(f"B{i + 1}", sorted(t)) for i, t in enumerate(tasks)]


def make_split(dataset: Dataset, kind: str, k: int, seed: int) -> list[Task]:
    if kind == "random":
        return random_split(len(dataset.facts), k, seed)
    return semantic_split(dataset.facts, dataset.groups(), k, seed)


def image_splits(dataset: Dataset, test_fraction: float, seed: int) -> np.ndarray:
    """Per record: True for test. Manifest splits are kept; missing ones drawn per fact."""
    is_test = np.array([r.split == "test" for r in dataset.records])
    missing = [i for i, r in enumerate(dataset.records) if r.split is None]
    by_fact: dict[int, list[int]] = {}
    fact_ids = dataset.fact_ids()
    for i in missing:
        by_fact.setdefault(fact_ids[i], []).append(i)
    rng = np.random.default_rng(seed)
    for fid in sorted(by_fact):
        rows = by_fact[fid]
        n_test = int(round(len(rows) * test_fraction))
        if len(rows) >= 2:
            n_test = min(max(n_test, 1), len(rows) - 1)
        for i in rng.permutation(rows)[:n_test]:
            is_test[i] = True
    return is_test


def save_split(path: Path, tasks: list[Task], info: dict) -> None:
    from ..io import atomic_write_json

    atomic_write_json(path, {**info, "tasks": [asdict(t) for t in tasks]})


def load_split(path: Path) -> list[Task]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return [Task(t["name"], [int(f) for f in t["facts"]]) for t in data["tasks"]]
    except FileNotFoundError:
        raise UserError(f"split file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"split file {path} is malformed: {exc}") from None
