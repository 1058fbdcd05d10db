"""Import the Sherlock / lifelong fact learning CSV format as a manifest and ready-made task files.

The format (Elhoseiny et al. 2017; the lifelong fact learning follow-up, ACCV 2018): one row per
image with the columns

    image_links, NLP_links, SPO, id, w_s, w_p, w_o

``image_links`` is the image's path relative to the images root, ``NLP_links`` (optional, ignored)
the path of its precomputed word vectors, ``SPO`` the fact as text, ``id`` the unique fact id and
``w_s, w_p, w_o`` the slot flags (0/1). The task sequences are folders of CSV files:

    splits/4tasks_random/B1_train.csv, B1_test.csv, B1_facts.csv, ... B4_*.csv
    splits/4tasks_semantic/...

``B{k}_facts.csv`` (columns ``id, type, S, P, O``, an empty cell for a missing slot, ``type``
ignored) gives the words of each fact id. When no facts file is found, the words are read from
``SPO`` (``<S, P, O>`` or ``S, P, O``). The flags must agree with the fact's slots.

Each folder of ``B{k}_*`` files (a *layout*) becomes ``OUT_DIR/tasks/<layout>.json`` (see
:mod:`factlearn.data.splits`); every image once in ``OUT_DIR/manifest.jsonl`` with its train/test
split from the file that lists it. An image listed by several layouts must have the same fact and
split in each. Facts get the group ``<layout>/B{k}`` of the first semantic layout (its tasks are
the semantic groups), so ``train --split semantic`` can rebuild it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..io import atomic_dir
from ..facts import Fact
from .importers import (BAD_FACT, CONFLICT, DUPLICATE, ESCAPES, MISSING_IMAGE, UNDECODABLE, UNKNOWN_ID, ImportReport,
                        Problems, check_images, dest_name, finish, place_image)
from .manifest import ManifestRow
from .splits import Task, TaskFile, save_tasks_file
from .textfiles import MALFORMED, read_csv

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_links", "NLP_links", "SPO", "id", "w_s", "w_p", "w_o")
IMAGE_REQUIRED = ("image_links", "SPO", "id", "w_s", "w_p", "w_o")
FACT_COLUMNS = ("id", "type", "S", "P", "O")
FACT_REQUIRED = ("id", "S", "P", "O")
TASK_FILE = re.compile(r"^B(\d+)_(train|test|facts)\.csv$")
LAYOUT_NAME = re.compile(r"^\d+tasks_(.+)$")
SPLIT_IN_NAME = re.compile(r"(?:^|[_.-])(train|test)(?:[_.-]|$)")


@dataclass
class _Source:
    """One image CSV: its split, and the layout and task it belongs to (None for a lone CSV)."""

    csv: Path
    split: str | None
    layout: str | None = None
    task: str | None = None


@dataclass
class _Row:
    where: str
    image: Path  # resolved
    fact: Fact
    split: str | None
    layout: str | None
    task: str | None


def import_sherlock(src: str | Path, out_dir: str | Path, images_root: str | Path | None = None,
                    skip_bad: bool = False, link: bool = False, workers: int | None = None) -> ImportReport:
    """Import a Sherlock-format CSV or split tree into a data directory with task files.

    Args:
        src: one image CSV, or a folder with split layouts: the data set root (holding
            ``splits/``), the ``splits`` folder, or one layout folder (``4tasks_random``).
        out_dir: a new or empty directory; gets ``manifest.jsonl``, ``images/`` (each image at
            ``images/<image_links>``), ``tasks/<layout>.json`` and ``import.json``.
        images_root: the folder ``image_links`` are relative to. Default: the parent of the
            ``splits`` folder ``src`` lies in, or else the folder of ``src``.
        skip_bad, link, workers: as in :func:`factlearn.data.importers.import_manifest`.

    Returns:
        The :class:`ImportReport`; ``notes["tasks_files"]`` lists the task files written.
    """
    src = Path(src)
    if not src.exists():
        raise UserError(f"not found: {src}")
    root = Path(images_root).resolve() if images_root is not None else _default_root(src.resolve())
    if not root.is_dir():
        raise UserError(f"--images-root {root} is not a directory")
    problems = Problems(skip_bad)
    if src.is_file():
        sources = [_Source(src, _split_from_name(src))]
        fact_files = [src.parent / f"B{m.group(1)}_facts.csv"] if (m := TASK_FILE.match(src.name)) else []
        layouts: dict[str, str] = {}
    else:
        layouts, sources, fact_files = _discover(src)
    words = _read_fact_files([f for f in fact_files if f.is_file()], problems)
    rows = _read_image_rows(sources, root, words, problems)
    decoded = check_images([r.image for r in rows], workers)
    group_layout = next((name for name, kind in sorted(layouts.items()) if kind == "semantic"), None)
    with atomic_dir(out_dir) as tmp:
        out_rows: dict[Path, ManifestRow] = {}  # image -> its row, group still None
        task_facts: dict[str, dict[str, set[Fact]]] = {name: {} for name in layouts}
        group_of: dict[Fact, str] = {}
        for r in rows:
            if decoded[r.image] is not None:
                problems.add(UNDECODABLE, f"{r.where}: {decoded[r.image]}")
                continue
            if r.image not in out_rows:
                name = dest_name(r.image, root)
                place_image(r.image, tmp / name, link)
                out_rows[r.image] = ManifestRow(name, r.fact, None, r.split)
            if r.layout is not None:
                task_facts[r.layout].setdefault(r.task, set()).add(r.fact)
                if r.layout == group_layout:
                    group_of[r.fact] = f"{r.layout}/{r.task}"
        rows = [replace(row, group=group_of.get(row.fact)) for row in out_rows.values()]
        tasks_files = [f"tasks/{name}.json" for name in sorted(layouts)]
        dataset, report = finish(tmp, rows, problems, Path(out_dir),
                                 {"importer": "sherlock", "source": str(src), "images_root": str(root),
                                  "tasks_files": tasks_files})
        for name in sorted(layouts):
            tasks = []
            for task in _task_names(sources, name):
                facts = task_facts[name].get(task)
                if not facts:
                    raise UserError(f"layout {name}: task {task} has no usable rows left")
                tasks.append(Task(task, sorted(dataset.facts.id(f) for f in facts)))
            info = {"kind": layouts[name], "source": "sherlock", "layout": name}
            save_tasks_file(tmp / "tasks" / f"{name}.json", TaskFile(tasks, info), dataset)
    logger.info("imported %d images of %d facts from %s", report.images, report.facts, src)
    return report


def _default_root(src: Path) -> Path:
    start = src if src.is_dir() else src.parent
    for folder in (start, *start.parents):
        if folder.name == "splits":
            return folder.parent
    return start


def _split_from_name(csv_path: Path) -> str | None:
    m = SPLIT_IN_NAME.search(csv_path.stem)
    return m.group(1) if m else None


def _discover(folder: Path) -> tuple[dict[str, str], list[_Source], list[Path]]:
    """Layouts (name -> kind), image CSVs in reading order, and facts files under ``folder``."""
    if _task_files(folder):
        candidates = [folder]
    else:
        base = folder / "splits" if (folder / "splits").is_dir() else folder
        candidates = sorted(p for p in base.iterdir() if p.is_dir() and _task_files(p))
    if not candidates:
        raise UserError(f"no Sherlock split files (B1_train.csv, B1_test.csv, B1_facts.csv ...) under {folder}")
    layouts: dict[str, str] = {}
    sources: list[_Source] = []
    fact_files: list[Path] = []
    for layout in candidates:
        files = _task_files(layout)
        ks = sorted({k for k, _ in files})
        if ks != list(range(1, len(ks) + 1)):
            raise UserError(f"{layout}: expected tasks B1..B{len(ks)}, found {', '.join(f'B{k}' for k in ks)}")
        m = LAYOUT_NAME.match(layout.name)
        layouts[layout.name] = m.group(1) if m else layout.name
        for k in ks:
            if (k, "train") not in files:
                raise UserError(f"{layout}: B{k}_train.csv is missing")
            sources += [_Source(files[k, s], s, layout.name, f"B{k}") for s in ("train", "test") if (k, s) in files]
            if (k, "facts") in files:
                fact_files.append(files[k, "facts"])
    return layouts, sources, fact_files


def _task_files(folder: Path) -> dict[tuple[int, str], Path]:
    found = {}
    for p in folder.iterdir():
        m = TASK_FILE.match(p.name)
        if m and p.is_file():
            found[int(m.group(1)), m.group(2)] = p
    return found


def _task_names(sources: list[_Source], layout: str) -> list[str]:
    return list(dict.fromkeys(s.task for s in sources if s.layout == layout))


def _fact_id(text: str | None) -> str | None:
    """Ids as text; "12.0" (pandas writes ints so when a column has gaps) is "12"."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text


def _read_fact_files(paths: list[Path], problems: Problems) -> dict[str, tuple[Fact, str]]:
    """id -> (fact, where first defined), from every B{k}_facts.csv; one id has one fact everywhere."""
    words: dict[str, tuple[Fact, str]] = {}
    for path in paths:
        seen_here: set[str] = set()
        for line, row in read_csv(path, FACT_COLUMNS, FACT_REQUIRED, problems.add):
            where = f"{path}:{line}"
            fid = _fact_id(row["id"])
            if fid is None:
                problems.add(MALFORMED, f"{where}: empty id")
                continue
            try:
                fact = Fact(row["S"], row["P"], row["O"])
            except ValueError as exc:
                problems.add(BAD_FACT, f"{where}: fact id {fid}: {exc}")
                continue
            if fid in seen_here:
                problems.add(DUPLICATE, f"{where}: fact id {fid} is listed twice in this file")
            elif fid in words and words[fid][0] != fact:
                problems.add(CONFLICT, f"{where}: fact id {fid} is {fact} here but {words[fid][0]} at {words[fid][1]}")
            else:
                seen_here.add(fid)
                words.setdefault(fid, (fact, where))
    return words


def _read_image_rows(sources: list[_Source], root: Path, words: dict[str, tuple[Fact, str]],
                     problems: Problems) -> list[_Row]:
    """Validate every image row; returns the kept ones (an image may be kept once per layout)."""
    rows: list[_Row] = []
    by_image: dict[Path, _Row] = {}
    seen: set[tuple[Path, str | None]] = set()  # (image, layout)
    parsed: dict[str, tuple[Fact, str]] = {}  # id -> fact read from SPO, when there are no facts files
    task_of: dict[tuple[str | None, Fact], tuple[str | None, str]] = {}  # (layout, fact) -> (task, where)
    for source in sources:
        for line, row in read_csv(source.csv, IMAGE_COLUMNS, IMAGE_REQUIRED, problems.add):
            where = f"{source.csv}:{line}"
            fact = _row_fact(where, row, words, parsed, problems)
            if fact is None:
                continue
            link = (row["image_links"] or "").strip().strip("'\"")
            if not link:
                problems.add(MALFORMED, f"{where}: empty image_links")
                continue
            image = (root / link).resolve()
            if not image.is_relative_to(root):
                problems.add(ESCAPES, f"{where}: image path {link!r} escapes the images root {root}")
                continue
            if not image.is_file():
                problems.add(MISSING_IMAGE, f"{where}: image file not found: {root / link}")
                continue
            first = by_image.get(image)
            if first is not None and (image, source.layout) in seen:
                reason = DUPLICATE if (first.fact, first.split) == (fact, source.split) else CONFLICT
                problems.add(reason, f"{where}: image {link!r} is listed again (first at {first.where})")
                continue
            if first is not None and (first.fact, first.split) != (fact, source.split):
                problems.add(CONFLICT, f"{where}: image {link!r} is {fact} ({source.split}) here but "
                                       f"{first.fact} ({first.split}) at {first.where}")
                continue
            owner = task_of.setdefault((source.layout, fact), (source.task, where))
            if owner[0] != source.task:
                problems.add(CONFLICT, f"{where}: fact {fact} is in task {source.task} here but in task {owner[0]} "
                                       f"at {owner[1]}")
                continue
            r = _Row(where, image, fact, source.split, source.layout, source.task)
            by_image.setdefault(image, r)
            seen.add((image, source.layout))
            rows.append(r)
    return rows


def _row_fact(where: str, row: dict, words: dict[str, tuple[Fact, str]], parsed: dict[str, tuple[Fact, str]],
              problems: Problems) -> Fact | None:
    """The fact of an image row (from the facts files, else from SPO), checked against its flags."""
    fid = _fact_id(row["id"])
    if fid is None:
        problems.add(MALFORMED, f"{where}: empty id")
        return None
    flags = []
    for col in ("w_s", "w_p", "w_o"):
        value = (row[col] or "").strip()
        if value not in ("0", "1", "0.0", "1.0"):
            problems.add(MALFORMED, f"{where}: {col} must be 0 or 1, got {row[col]!r}")
            return None
        flags.append(float(value))
    if words:
        if fid not in words:
            problems.add(UNKNOWN_ID, f"{where}: fact id {fid} is in no facts file")
            return None
        fact = words[fid][0]
    else:
        try:
            fact = Fact.parse(row["SPO"] or "")
        except ValueError as exc:
            problems.add(BAD_FACT, f"{where}: SPO: {exc}")
            return None
        first = parsed.setdefault(fid, (fact, where))
        if first[0] != fact:
            problems.add(CONFLICT, f"{where}: fact id {fid} is {fact} here but {first[0]} at {first[1]}")
            return None
    if tuple(flags) != fact.mask:
        given = tuple(int(f) for f in flags)
        problems.add(BAD_FACT, f"{where}: flags (w_s, w_p, w_o) = {given} do not fit fact {fact}")
        return None
    return fact
