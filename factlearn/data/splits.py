"""Task sequences: which facts each task teaches, and which images are for test.

A split cuts the FACTS into disjoint tasks; every image follows its fact, so one fact's images
never straddle two tasks. Within a task, images keep the manifest's train/test split; rows with
none are assigned per fact with a seeded draw (at least one train and one test image per fact
when the fact has two or more).

Task files (``factlearn split``, ``factlearn data import sherlock``, ``train --tasks-file``) name
facts by their slots, not by id, since ids belong to the fact table of a run:

    {"kind": "random", "seed": 0,
     "tasks": [{"name": "B1", "facts": [["dog", null, null], ["man", "riding", "horse"]],
                "held_out": ["images/c.png", ...],
                "adaptation": {"B11": ["images/a.png", ...], "B12": [...]},
                "adaptation_facts": {"B11": [["dog", null, null]], "B12": [...]}}, ...],
     "monitored": {"sports": [["man", "playing", "ball"], ...]}}

A fact is ``[S, P, O]`` with null for a missing slot (shorter lists and ``"<S, P, O>"`` text are
also read). Optional per task: ``held_out``, training images of the task's facts that training
leaves out (unlabeled data for importance that the model never trained on); ``adaptation``, the
images importance is computed from for each adaptation subset (B11, B12), by path relative to the
data directory; ``adaptation_facts``, the facts of each subset when the subsets are fact-level
(``factlearn split --adaptation``: B11 and B12 are disjoint halves of B1's FACTS and their
images are the held-out images of those facts) and absent when they are halves of the same facts'
training images (``--adaptation-images``). ``monitored`` (optional) names groups of facts to
track across the sequence. Any other top-level key (``kind``, ``seed``, ``source``...) is
information only.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..facts import Fact, FactTable
from .manifest import Dataset
from ..io import parse_json
from .textfiles import shown

logger = logging.getLogger(__name__)


@dataclass
class Task:
    """One task of a sequence: its name (``B1``...) and the ids of the facts it teaches."""

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
    """Cut ``dataset``'s facts into ``k`` disjoint tasks B1..Bk.

    Args:
        dataset: the data; its fact table gives the ids.
        kind: "random" (:func:`random_split`) or "semantic" (:func:`semantic_split`: whole
            groups of the manifest's ``group`` column per task).
        k: number of tasks.
        seed: seeds the shuffle.

    Returns:
        The tasks, each with its fact ids sorted.

    Raises:
        UserError: if the facts (or, for "semantic", the groups) cannot fill ``k`` tasks, or a
            fact has no group.
    """
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
    """Write a run's split file atomically: ``info`` (kind, seed...) and the tasks by fact id."""
    from ..io import atomic_write_json

    atomic_write_json(path, {**info, "tasks": [asdict(t) for t in tasks]})


def load_split(path: Path) -> list[Task]:
    """Read the tasks of a split file written by :func:`save_split`.

    Raises:
        UserError: for a missing or malformed file, or a task name that cannot be a folder name.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        tasks = [Task(t["name"], [int(f) for f in t["facts"]]) for t in data["tasks"]]
    except FileNotFoundError:
        raise UserError(f"split file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"split file {path} is malformed: {exc}") from None
    for task in tasks:
        check_task_name(task.name, f"split file {path}")
    return tasks


def check_task_name(name: object, where: str) -> None:
    """Task names become folder names of the run directory (checkpoints/<TASK>): no path tricks."""
    if (not isinstance(name, str) or not name.strip() or len(name) > 100 or name.startswith(".")
            or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name)):
        raise UserError(f"{where}: task name {name!r} cannot be a folder name (no '/', '\\', control "
                        "characters or leading '.', at most 100 characters)")


# ---- adaptation halves and monitored groups ---------------------------------------------------

def adaptation_halves(dataset: Dataset, task: Task, is_test: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a task's TRAINING images into two disjoint halves (B11, B12 for task B1), seeded.

    Importance can then be computed on one half and checked on the other. The cut is by image
    and per fact (each fact with two or more training images has some in both halves); odd
    counts give their extra image to the two halves in turn, so the halves differ by at most one.

    Returns:
        Two sorted arrays of record indices (rows of ``dataset.records``).
    """
    fact_ids = np.array(dataset.fact_ids())
    rng = np.random.default_rng([seed, 11])
    halves: tuple[list[int], list[int]] = ([], [])
    extra = 0
    for fid in sorted(task.facts):
        rows = rng.permutation(np.flatnonzero((fact_ids == fid) & ~is_test))
        cut = len(rows) // 2 + (len(rows) % 2 if extra == 0 else 0)
        extra ^= len(rows) % 2
        halves[0].extend(int(i) for i in rows[:cut])
        halves[1].extend(int(i) for i in rows[cut:])
    return np.array(sorted(halves[0]), dtype=np.int64), np.array(sorted(halves[1]), dtype=np.int64)


def fact_halves(task: Task, seed: int) -> tuple[list[int], list[int]]:
    """Cut a task's FACTS into two disjoint halves (B11, B12 for task B1), seeded; the first gets
    the extra fact of an odd count.

    The MAS paper's adaptation experiment (Aljundi et al. 2018, Sec. 5, Table 4) computes
    importance from unlabeled data of one subset and shows that subset is kept better than the
    other. Halves of the same facts' images cannot show that (their importance is the same by
    construction); halves of the facts can.
    """
    order = np.random.default_rng([seed, 13]).permutation(np.array(sorted(task.facts), dtype=np.int64))
    cut = (len(order) + 1) // 2
    return sorted(int(f) for f in order[:cut]), sorted(int(f) for f in order[cut:])


def group_halves(task: Task, group_of: dict[int, str | None], seed: int) -> tuple[list[int], list[int]]:
    """Cut a task's FACTS into two halves made of whole semantic groups (B11, B12 for task B1), seeded.

    Halves of random facts share the visual vocabulary (the same shapes, colours and relations in
    both), so the importance of one is nearly the importance of the other; halves by group differ in
    content, as the MAS paper's subsets do. Groups go largest first (ties in a seeded order) to the
    half with fewer facts so far, so the halves are as even as whole groups allow. ``group_of``: fact
    id -> group (None: the fact is a group of its own).
    """
    groups: dict[str, list[int]] = {}
    for fid in sorted(task.facts):
        g = group_of.get(fid)
        groups.setdefault(f"group {g}" if g is not None else f"fact {fid}", []).append(int(fid))
    if len(groups) < 2:
        raise UserError(f"task {task.name}: all its facts are in one group ({next(iter(groups), '-')}), "
                        "so its facts cannot be halved by group")
    names = sorted(groups)
    tie = {names[j]: pos for pos, j in enumerate(np.random.default_rng([seed, 19]).permutation(len(names)))}
    halves: tuple[list[int], list[int]] = ([], [])
    for n in sorted(names, key=lambda n: (-len(groups[n]), tie[n])):
        halves[0 if len(halves[0]) <= len(halves[1]) else 1].extend(groups[n])
    return sorted(halves[0]), sorted(halves[1])


def held_out_images(dataset: Dataset, facts: list[int], is_test: np.ndarray, fraction: float,
                    seed: int) -> np.ndarray:
    """Per fact of ``facts``, a seeded ``fraction`` of its TRAINING images to keep out of training:
    unlabeled images of the fact the model never sees labeled, e.g. for importance.

    Each fact keeps at least one training image; a fact with two or more gives at least one.
    Returns the record indices, sorted.
    """
    fact_ids = np.array(dataset.fact_ids())
    rng = np.random.default_rng([seed, 17])
    out: list[int] = []
    for fid in sorted(facts):
        rows = rng.permutation(np.flatnonzero((fact_ids == fid) & ~is_test))
        if len(rows) >= 2:
            take = min(len(rows) - 1, max(1, round(fraction * len(rows))))
            out.extend(int(i) for i in rows[:take])
    return np.array(sorted(out), dtype=np.int64)


def adaptation_names(task: Task) -> tuple[str, str]:
    """The names of a task's two adaptation halves: ``B11`` and ``B12`` for ``B1``."""
    return f"{task.name}1", f"{task.name}2"


def monitored_facts(dataset: Dataset, group: str) -> list[int]:
    """The fact ids of a semantic group (the manifest's ``group``), to track across a sequence."""
    groups = dataset.groups()
    ids = [i for i, fact in enumerate(dataset.facts.facts) if groups.get(fact) == group]
    if not ids:
        known = sorted({g for g in groups.values() if g is not None})
        raise UserError(f"no facts in group {group!r} (groups: {', '.join(known) or 'none'})")
    return ids


# ---- task files -------------------------------------------------------------------------------

@dataclass
class TaskFile:
    """A task sequence with its optional adaptation halves and monitored groups, as ids of one data set."""

    tasks: list[Task]
    info: dict = field(default_factory=dict)  # kind, seed, source...: information only
    adaptation: dict[str, list[int]] = field(default_factory=dict)  # "B11" -> record indices
    monitored: dict[str, list[int]] = field(default_factory=dict)  # group name -> fact ids
    held_out: list[int] = field(default_factory=list)  # record indices training leaves out
    adaptation_facts: dict[str, list[int]] = field(default_factory=dict)  # "B11" -> fact ids (fact-level)


def save_tasks_file(path: str | Path, task_file: TaskFile, dataset: Dataset) -> None:
    """Write a task file (see the module docstring), naming facts by slots and images by path."""
    from ..io import atomic_write_text

    table, names = dataset.facts, [_image_name(r.image, dataset.root) for r in dataset.records]
    records_fact = dataset.fact_ids()
    tasks = []
    for task in task_file.tasks:
        entry: dict = {"name": task.name, "facts": [list(table[f].slots) for f in task.facts]}
        mine = set(task.facts)
        held = [i for i in task_file.held_out if records_fact[i] in mine]
        if held:
            entry["held_out"] = [names[i] for i in held]
        halves = {n: task_file.adaptation[n] for n in adaptation_names(task) if n in task_file.adaptation}
        if halves:
            entry["adaptation"] = {n: [names[i] for i in rows] for n, rows in halves.items()}
        subsets = {n: task_file.adaptation_facts[n] for n in adaptation_names(task) if n in task_file.adaptation_facts}
        if subsets:
            entry["adaptation_facts"] = {n: [list(table[f].slots) for f in ids] for n, ids in subsets.items()}
        tasks.append(entry)
    doc = {**task_file.info, "tasks": tasks}
    if task_file.monitored:
        doc["monitored"] = {g: [list(table[f].slots) for f in ids] for g, ids in task_file.monitored.items()}
    # one fact per line, so the file stays readable and diffable when edited by hand
    text = _FACT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]",
                          json.dumps(doc, indent=2))
    atomic_write_text(path, text + "\n")


def load_tasks_file(path: str | Path, dataset: Dataset) -> TaskFile:
    """Read a task file and map its facts and images to ``dataset``'s ids and records.

    Raises:
        UserError: naming the file, task and entry, for a missing or malformed file, an unknown
            fact, a fact in two tasks, an empty task or an image not in the data.
    """
    path = Path(path)
    try:
        doc = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"tasks file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read tasks file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise UserError(f"tasks file {path}: expected an object with a non-empty list 'tasks'")
    records = {_image_name(r.image, dataset.root): i for i, r in enumerate(dataset.records)}
    fact_of = dataset.fact_ids()
    out = TaskFile([], {k: v for k, v in doc.items() if k not in ("tasks", "monitored")})
    owner: dict[int, str] = {}
    for n, entry in enumerate(doc["tasks"], start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise UserError(f"tasks file {path}: task {n} needs a non-empty 'name'")
        name = entry["name"]
        check_task_name(name, f"tasks file {path}, task {n}")
        if any(t.name == name for t in out.tasks):
            raise UserError(f"tasks file {path}: two tasks are named {name!r}")
        facts = _fact_ids(entry.get("facts"), dataset.facts, f"tasks file {path}, task {name}")
        if not facts:
            raise UserError(f"tasks file {path}, task {name}: no facts")
        for f in facts:
            if f in owner:
                raise UserError(f"tasks file {path}: fact {dataset.facts[f]} is in task {owner[f]} and task {name}")
            owner[f] = name
        out.tasks.append(Task(name, sorted(facts)))
        where = f"tasks file {path}, task {name}"
        held = _image_rows(entry.get("held_out") or [], records, f"{where}, held_out")
        strangers = [i for i in held if fact_of[i] not in set(facts)]
        if strangers:
            raise UserError(f"{where}, held_out: {dataset.records[strangers[0]].image} is not an image of the task's facts")
        out.held_out.extend(held)
        halves = entry.get("adaptation") or {}
        if not isinstance(halves, dict):
            raise UserError(f"{where}: 'adaptation' must map names to image lists")
        for half, images in halves.items():
            out.adaptation[half] = _image_rows(images, records, f"{where}, adaptation {shown(half)}")
        subsets = entry.get("adaptation_facts") or {}
        if not isinstance(subsets, dict):
            raise UserError(f"{where}: 'adaptation_facts' must map names to fact lists")
        for half, listed in subsets.items():
            ids = _fact_ids(listed, dataset.facts, f"{where}, adaptation_facts {shown(half)}")
            if not set(ids) <= set(facts):
                raise UserError(f"{where}, adaptation_facts {shown(half)}: a fact that is not the task's")
            out.adaptation_facts[half] = sorted(ids)
    monitored = doc.get("monitored") or {}
    if not isinstance(monitored, dict):
        raise UserError(f"tasks file {path}: 'monitored' must map group names to fact lists")
    for group, facts in monitored.items():
        out.monitored[group] = sorted(_fact_ids(facts, dataset.facts, f"tasks file {path}, monitored {shown(group)}"))
    out.held_out.sort()
    unused = len(dataset.facts) - len(owner)
    if unused:
        logger.warning("%d facts of the data are in no task of %s and are not trained", unused, path)
    return out


_JSON_SCALAR = r'(?:"(?:[^"\\]|\\.)*"|null)'  # a JSON string or null: a fact slot
_FACT_LIST = re.compile(rf"\[\n\s*((?:{_JSON_SCALAR},\n\s*){{0,2}}{_JSON_SCALAR})\n\s*\]")  # indented [S, P, O]


def _image_rows(images: object, records: dict[str, int], where: str) -> list[int]:
    """Record indices of a list of image paths (relative to the data directory), sorted."""
    if not isinstance(images, list):
        raise UserError(f"{where}: expected a list of images")
    for image in images:
        if not isinstance(image, str) or image not in records:
            raise UserError(f"{where}: {image!r} is not an image of the data")
    return sorted(records[i] for i in images)


def _fact_ids(facts: object, table: FactTable, where: str) -> list[int]:
    if not isinstance(facts, list):
        raise UserError(f"{where}: 'facts' must be a list of [S, P, O] facts")
    ids = []
    for k, raw in enumerate(facts, start=1):
        try:
            if isinstance(raw, str):
                fact = Fact.parse(raw)
            elif isinstance(raw, list) and 1 <= len(raw) <= 3:
                fact = Fact(*raw)
            else:
                raise ValueError("expected [S, P, O] or \"<S, P, O>\"")
        except ValueError as exc:
            raise UserError(f"{where}, fact {k} ({json.dumps(raw)}): {exc}") from None
        if fact not in table:
            raise UserError(f"{where}, fact {k}: {fact} is not a fact of the data")
        ids.append(table.id(fact))
    if len(set(ids)) != len(ids):
        raise UserError(f"{where}: a fact is listed twice")
    return ids


def _image_name(image: Path, root: Path) -> str:
    # Manifest images normally lie inside the data directory; one allowed outside keeps its path.
    return image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)
