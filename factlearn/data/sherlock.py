"""Import the Sherlock / lifelong fact learning CSV format as a manifest and ready-made task files.

The format (Elhoseiny et al. 2017; the lifelong fact learning follow-up, ACCV 2018): one row per
image with the columns

    image_links, NLP_links, SPO, id, w_s, w_p, w_o

``image_links`` is the image's path relative to the images root, ``NLP_links`` (optional, ignored)
the path of its precomputed word vectors, ``SPO`` the fact as text, ``id`` the unique fact id and
``w_s, w_p, w_o`` the slot flags (0/1). A data set root (ROOT) holds the whole data set in
``train_SPO_df.csv`` and ``test_SPO_df.csv``, and the task sequences in folders of CSV files:

    ROOT/images/...                  (the reference code reads ROOT/images/<image_links>)
    ROOT/train_SPO_df.csv, ROOT/test_SPO_df.csv
    ROOT/splits/4tasks_random/B1_train.csv, B1_test.csv, B1_facts.csv, ... B4_*.csv
    ROOT/splits/4tasks_semantic/...

``B{k}_facts.csv`` (columns ``id, type, S, P, O``, an empty cell for a missing slot, ``type``
ignored) gives the words of each fact id. When no facts file is found, the words are read from
``SPO`` (:func:`parse_spo`). The flags must agree with the fact's slots.

Each folder of ``B{k}_*`` files (a *layout*) becomes ``OUT_DIR/tasks/<layout>.json`` (see
:mod:`factlearn.data.splits`); every image once in ``OUT_DIR/manifest.jsonl`` with its train/test
split from the file that lists it. When ROOT has the top-level files, they are the data set: every
row of theirs is checked and imported, and every row of a layout must name an image of theirs with
the same fact and split. An image listed by several layouts must have the same fact and split in
each. Facts get the group ``<layout>/B{k}`` of the first semantic layout (its tasks are the semantic
groups), so ``train --split semantic`` can rebuild it.

Images are looked up under the images root; without ``--images-root``, an image that is not at
``ROOT/<image_links>`` is looked up at ``ROOT/images/<image_links>`` too (the reference layout).
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
from .manifest import ManifestRow, locate_image
from .splits import Task, TaskFile, save_tasks_file
from .textfiles import MALFORMED, read_csv, shown

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_links", "NLP_links", "SPO", "id", "w_s", "w_p", "w_o")
IMAGE_REQUIRED = ("image_links", "SPO", "id", "w_s", "w_p", "w_o")
FACT_COLUMNS = ("id", "type", "S", "P", "O")
FACT_REQUIRED = ("id", "S", "P", "O")
TASK_FILE = re.compile(r"^B(\d+)_(train|test|facts)\.csv$")
LAYOUT_NAME = re.compile(r"^\d+tasks_(.+)$")
SPLIT_IN_NAME = re.compile(r"(?:^|[_.-])(train|test)(?:[_.-]|$)")
TOP_LEVEL = {"train_SPO_df.csv": "train", "test_SPO_df.csv": "test"}  # the whole data set, beside splits/
IMAGES_FOLDER = "images"  # the reference code reads ROOT/images/<image_links>
NOT_IN_DATA = "not in the top-level files"  # a reason a row is bad, besides those of factlearn.data.importers


@dataclass
class _Source:
    """One image CSV: its split, and the layout and task it belongs to (None for a lone CSV)."""

    csv: Path
    split: str | None
    layout: str | None = None
    task: str | None = None
    top_level: bool = False  # train_SPO_df.csv / test_SPO_df.csv: the data set the layouts must agree with


@dataclass
class _Row:
    where: str
    image: Path  # resolved
    name: str  # its path in the output, images/<its path under the root it was found in>
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
        images_root: the folder ``image_links`` are relative to. Default: the data set root (the
            folder holding the ``splits`` folder ``src`` is or lies in), or else the folder of
            ``src``; and, for an image not found there, its ``images`` folder.
        skip_bad, link, workers: as in :func:`factlearn.data.importers.import_manifest`.

    Returns:
        The :class:`ImportReport`; ``notes["tasks_files"]`` lists the task files written,
        ``notes["data_files"]`` the top-level files read.

    Raises:
        UserError: naming file and line, for a bad row (without ``skip_bad``) or a bad file: not
            UTF-8, a missing or unknown column, a header and no rows.
    """
    src = Path(src)
    if not src.exists():
        raise UserError(f"not found: {src}")
    if images_root is not None:
        roots = [Path(images_root).resolve()]
        if not roots[0].is_dir():
            raise UserError(f"--images-root {roots[0]} is not a directory")
    else:
        roots = [_default_root(src.resolve())]
        if (roots[0] / IMAGES_FOLDER).is_dir():  # the reference layout: a second place to look
            roots.append(roots[0] / IMAGES_FOLDER)
    problems = Problems(skip_bad)
    if src.is_file():
        sources = [_Source(src, _split_from_name(src))]
        fact_files = [src.parent / f"B{m.group(1)}_facts.csv"] if (m := TASK_FILE.match(src.name)) else []
        layouts: dict[str, str] = {}
    else:
        layouts, sources, fact_files = _discover(src)
        data_root = _data_root(src.resolve())
        if data_root is not None:
            sources = [_Source(data_root / name, split, top_level=True) for name, split in TOP_LEVEL.items()
                       if (data_root / name).is_file()] + sources
    words = _read_fact_files([f for f in fact_files if f.is_file()], problems)
    rows = _read_image_rows(sources, roots, words, problems)
    if not rows and problems.counts[MISSING_IMAGE]:
        raise UserError(f"no image found: {problems.counts[MISSING_IMAGE]} rows name images that are not under "
                        f"{' or '.join(map(str, roots))}; pass the folder image_links are relative to as --images-root")
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
                place_image(r.image, tmp / r.name, link)
                out_rows[r.image] = ManifestRow(r.name, r.fact, None, r.split)
            if r.layout is not None:
                task_facts[r.layout].setdefault(r.task, set()).add(r.fact)
                if r.layout == group_layout:
                    group_of[r.fact] = f"{r.layout}/{r.task}"
        rows = [replace(row, group=group_of.get(row.fact)) for row in out_rows.values()]
        tasks_files = [f"tasks/{name}.json" for name in sorted(layouts)]
        dataset, report = finish(tmp, rows, problems, Path(out_dir),
                                 {"importer": "sherlock", "source": str(src), "images_root": str(roots[0]),
                                  "data_files": [str(s.csv) for s in sources if s.top_level],
                                  "tasks_files": tasks_files}, task_facts)
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
    return _data_root(src) or (src if src.is_dir() else src.parent)


def _data_root(src: Path) -> Path | None:
    """The data set root: the folder holding the ``splits`` folder ``src`` is, lies in or holds."""
    if src.is_dir() and (src / "splits").is_dir():
        return src
    start = src if src.is_dir() else src.parent
    return next((folder.parent for folder in (start, *start.parents) if folder.name == "splits"), None)


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


def parse_spo(text: str) -> Fact:
    """The fact of an ``SPO`` cell, in the forms the reference files use.

    Commas separate the slots (``<one, left of, seven>``, ``one, left of, seven``) or, in text
    without a comma, underscores do (``one_left of_seven``): spaces inside a slot phrase stay.
    Angle brackets are optional; ``<dog>`` and ``man_smiling`` are facts of one and two slots.

    Raises:
        ValueError: for text that is none of these: no subject, an empty slot, more than three.
    """
    body = text.strip()
    if body.startswith("<") and body.endswith(">"):
        body = body[1:-1]
    parts = [p.strip() for p in body.split("," if "," in body else "_")]
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"not a fact: {text!r} (expected <S, P, O>, S, P, O or S_P_O, with one to three slots)")
    return Fact(*parts)


def _read_fact_files(paths: list[Path], problems: Problems) -> dict[str, tuple[Fact, str]]:
    """id -> (fact, where first defined), from every B{k}_facts.csv; one id has one fact everywhere."""
    words: dict[str, tuple[Fact, str]] = {}
    for path in paths:
        seen_here: set[str] = set()
        for line, row in read_csv(path, FACT_COLUMNS, FACT_REQUIRED, problems.add, need_rows=True):
            where = f"{path}:{line}"
            fid = _fact_id(row["id"])
            if fid is None:
                problems.add(MALFORMED, f"{where}: empty id")
                continue
            try:
                fact = Fact(row["S"], row["P"], row["O"])
            except ValueError as exc:
                problems.add(BAD_FACT, f"{where}: fact id {shown(fid)}: {exc}")
                continue
            if fid in seen_here:
                problems.add(DUPLICATE, f"{where}: fact id {shown(fid)} is listed twice in this file")
            elif fid in words and words[fid][0] != fact:
                problems.add(CONFLICT, f"{where}: fact id {shown(fid)} is {fact} here but {words[fid][0]} at "
                                       f"{words[fid][1]}")
            else:
                seen_here.add(fid)
                words.setdefault(fid, (fact, where))
    return words


def _read_image_rows(sources: list[_Source], roots: list[Path], words: dict[str, tuple[Fact, str]],
                     problems: Problems) -> list[_Row]:
    """Validate every image row; returns the kept ones (an image may be kept once per layout, and
    once for the top-level files, which come first)."""
    rows: list[_Row] = []
    by_image: dict[Path, _Row] = {}
    seen: set[tuple[Path, str | None]] = set()  # (image, layout)
    parsed: dict[str, tuple[Fact, str]] = {}  # id -> fact read from SPO, when there are no facts files
    task_of: dict[tuple[str | None, Fact], tuple[str | None, str]] = {}  # (layout, fact) -> (task, where)
    data_files = " / ".join(s.csv.name for s in sources if s.top_level)
    listed: dict[Path, str] = {}  # image -> the top-level row naming it, kept or not
    for source in sources:
        for line, row in read_csv(source.csv, IMAGE_COLUMNS, IMAGE_REQUIRED, problems.add, need_rows=True):
            where = f"{source.csv}:{line}"
            found = _find_image(where, row["image_links"], roots, problems)
            if found is None:
                continue
            image, name, link = found
            if source.top_level:
                listed.setdefault(image, where)
            fact = _row_fact(where, row, words, parsed, problems)
            if fact is None:
                continue
            first = by_image.get(image)
            if data_files and not source.top_level and first is None:
                why = f"its row at {listed[image]} is bad" if image in listed else f"it is not in {data_files}"
                problems.add(NOT_IN_DATA, f"{where}: image {link!r} is left out: {why}")
                continue
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
            r = _Row(where, image, name, fact, source.split, source.layout, source.task)
            by_image.setdefault(image, r)
            seen.add((image, source.layout))
            rows.append(r)
    return rows


def _find_image(where: str, cell: str | None, roots: list[Path], problems: Problems) -> tuple[Path, str, str] | None:
    """(resolved image, its name in the output, the link as written) of an ``image_links`` cell,
    looked up under each root in turn; None, with the problem recorded, when it is not found."""
    link = (cell or "").strip().strip("'\"")  # the reference code drops quotes from links
    if not link:
        problems.add(MALFORMED, f"{where}: empty image_links")
        return None
    for k, root in enumerate(roots):
        try:
            image, found = locate_image(root, link)
        except ValueError as exc:
            problems.add(MALFORMED, f"{where}: image_links {link!r} cannot name a file ({exc})")
            return None
        if not image.is_relative_to(root):
            if k == 0:  # leaving the images root; ROOT/images is only a second place to look
                problems.add(ESCAPES, f"{where}: image path {link!r} escapes the images root {root}")
                return None
            continue
        if found:
            return image, dest_name(image, root), link
    places = " or ".join(str(root) for root in roots)
    problems.add(MISSING_IMAGE, f"{where}: image file not found: {link!r} under {places} (set --images-root to the "
                                "folder image_links are relative to)")
    return None


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
            problems.add(UNKNOWN_ID, f"{where}: fact id {shown(fid)} is in no facts file")
            return None
        fact = words[fid][0]
    else:
        try:
            fact = parse_spo(row["SPO"] or "")
        except ValueError as exc:
            problems.add(BAD_FACT, f"{where}: SPO: {exc}")
            return None
        first = parsed.setdefault(fid, (fact, where))
        if first[0] != fact:
            problems.add(CONFLICT, f"{where}: fact id {shown(fid)} is {fact} here but {first[0]} at {first[1]}")
            return None
    if tuple(flags) != fact.mask:
        given = tuple(int(f) for f in flags)
        problems.add(BAD_FACT, f"{where}: flags (w_s, w_p, w_o) = {given} do not fit fact {fact}")
        return None
    return fact
