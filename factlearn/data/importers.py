"""Importers: turn fact data in other layouts into a factlearn data directory.

Every importer writes the same thing: ``OUT_DIR/manifest.jsonl`` (the generic manifest, see
:mod:`factlearn.data.manifest`), the images under ``OUT_DIR/images/`` and ``OUT_DIR/import.json``
(what was read, what was kept, what was skipped). Images are always copied (or hard-linked with
``link=True``) into OUT_DIR, so the result is self-contained and no manifest path leaves it.

Shared rules, whatever the source format:

* Every input row is validated and every image is decoded once
  (:func:`factlearn.data.images.load_image`). A bad row (malformed, empty fact, missing or
  undecodable image, a path that escapes the data directory, a duplicate or a conflicting row)
  is a :class:`UserError` naming file and line, unless ``skip_bad``: then it is skipped and
  counted per reason, with the first few examples kept for the report. Problems of a whole file
  (unreadable, not UTF-8, unknown or missing columns) are always errors.
* Nothing half-written: the output is built in a hidden temporary directory next to OUT_DIR and
  renamed at the end; an existing non-empty OUT_DIR is refused.

This module holds that shared machinery and the generic-manifest importer; the Sherlock and
Visual Genome importers live in :mod:`factlearn.data.sherlock` and :mod:`factlearn.data.vg`. Source
files are read through :mod:`factlearn.data.textfiles` (CSV, text) and :mod:`factlearn.data.manifest`
(manifests, which also writes the result).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..facts import Fact
from ..io import atomic_dir, atomic_write_json
from .images import load_image
from .manifest import (Dataset, ManifestRow, Record, find_manifest, load_dataset, locate_image, parse_record, read_rows,
                       write_manifest)

logger = logging.getLogger(__name__)

# Reasons a row is skipped (the keys of ImportReport.skipped), besides the readers' MALFORMED and
# UNKNOWN_COLUMN (factlearn.data.textfiles).
INVALID = "invalid value"
BAD_FACT = "bad fact"
UNKNOWN_ID = "unknown fact id"
MISSING_IMAGE = "missing image"
UNDECODABLE = "undecodable image"
ESCAPES = "path escapes the data directory"
DUPLICATE = "duplicate row"
CONFLICT = "conflicting rows"
BAD_BOX = "bad box"

MAX_EXAMPLES = 5
CHECK_SIZE = 8  # images are decoded in full to check them; the resize target only needs to be small


@dataclass
class ImportReport:
    """What an import wrote and what it skipped."""

    out_dir: Path
    images: int
    facts: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    examples: list[str] = field(default_factory=list)  # the first few skipped rows, "file:line: why"
    notes: dict = field(default_factory=dict)  # importer-specific counts and written files

    def to_json(self) -> dict:
        """The report as written to ``import.json``: the fields, then the importer's notes."""
        return {"out_dir": str(self.out_dir), "images": self.images, "facts": self.facts,
                "skipped": self.skipped, "examples": self.examples, **self.notes}


class Problems:
    """The bad rows of one import: without ``skip_bad`` the first is a UserError; with it, each is
    counted under its reason and the first few are kept as examples."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, reason: str, message: str) -> None:
        """Record a bad row (a ``bad_row`` callback of :mod:`factlearn.data.textfiles`): ``reason`` is
        one of the reasons above, ``message`` starts with the location (``file:line: ...``).

        Raises:
            UserError: with ``message``, unless bad rows are skipped.
        """
        if not self.skip_bad:
            raise UserError(f"{message} (--skip-bad skips bad rows)")
        self.counts[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    def report(self, out_dir: Path, images: int, facts: int, notes: dict) -> ImportReport:
        """The :class:`ImportReport` of an import that wrote ``images`` images of ``facts`` facts."""
        return ImportReport(out_dir, images, facts, dict(sorted(self.counts.items())), list(self.examples), notes)


# ---- reading ----------------------------------------------------------------------------------

def check_images(paths: Sequence[Path], workers: int | None = None) -> dict[Path, str | None]:
    """Decode every image once (in threads; PIL releases the GIL): path -> None, or why it failed."""

    def check(path: Path) -> str | None:
        try:
            load_image(path, CHECK_SIZE)
        except UserError as exc:
            return str(exc)
        return None

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=default_workers(workers)) as pool:
        return dict(zip(unique, pool.map(check, unique)))


def default_workers(workers: int | None) -> int:
    """``workers`` threads, or by default one per core, at most 4."""
    return max(1, workers if workers is not None else min(4, os.cpu_count() or 1))


# ---- writing ----------------------------------------------------------------------------------

def place_image(src: Path, dest: Path, link: bool) -> None:
    """Copy ``src`` to ``dest`` (or hard-link it, falling back to a copy across file systems)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)


def finish(tmp: Path, rows: list[ManifestRow], problems: Problems, out_dir: Path, notes: dict,
           tasks: dict[str, dict[str, set[Fact]]] | None = None) -> tuple[Dataset, ImportReport]:
    """Write manifest.jsonl and import.json into the staging dir and read the manifest back (the
    manifest reader is the judge of the result). ``tasks``: the task files' tasks (layout -> task
    -> facts), counted in import.json. Returns the Dataset and the ImportReport."""
    if not rows:
        skipped = f" ({_skipped_text(problems)})" if problems.counts else ""
        raise UserError(f"nothing to import: no usable rows{skipped}")
    write_manifest(tmp, rows)
    dataset = load_dataset(tmp)
    notes = {**notes, **import_counts(dataset, tasks)}
    report = problems.report(Path(out_dir), len(dataset.records), len(dataset.facts), notes)
    atomic_write_json(tmp / "import.json", report.to_json())
    return dataset, report


ORDER_NAMES = {1: "<S>", 2: "<S,P>", 3: "<S,P,O>"}


def import_counts(dataset: Dataset, tasks: dict[str, dict[str, set[Fact]]] | None = None) -> dict:
    """What an import holds, for import.json and the command's summary.

    Returns:
        ``{"by_order": {"<S>" | "<S,P>" | "<S,P,O>": {"facts", "images", "train", "test"}}}`` (train
        and test: images the manifest puts in that split; the rest have none), and with ``tasks``
        (layout -> task -> facts) ``"by_task": {layout: {task: {"facts", "images"}}}``.
    """
    by_order: dict[str, dict[str, int]] = {}
    for order, name in ORDER_NAMES.items():
        records = [r for r in dataset.records if r.fact.order == order]
        if records:
            by_order[name] = {"facts": len({r.fact for r in records}), "images": len(records),
                              "train": sum(r.split == "train" for r in records),
                              "test": sum(r.split == "test" for r in records)}
    out: dict = {"by_order": by_order}
    if tasks:
        images = Counter(r.fact for r in dataset.records)
        out["by_task"] = {layout: {task: {"facts": len(facts), "images": sum(images[f] for f in facts)}
                                   for task, facts in per_task.items()} for layout, per_task in sorted(tasks.items())}
    return out


def _skipped_text(problems: Problems) -> str:
    return "skipped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(problems.counts.items()))


def dest_name(path: Path, root: Path) -> str:
    """Where an image under ``root`` goes in the output: ``images/<its path under root>``."""
    return "images/" + path.relative_to(root).as_posix()


# ---- the generic manifest ---------------------------------------------------------------------

def import_manifest(src: str | Path, out_dir: str | Path, skip_bad: bool = False, link: bool = False,
                    workers: int | None = None) -> ImportReport:
    """Validate a generic manifest (JSONL or CSV) and write a clean copy of it with its images.

    Args:
        src: a data directory with ``manifest.jsonl`` / ``manifest.csv``, or the manifest file.
        out_dir: a new or empty directory; gets ``manifest.jsonl``, ``images/`` (each image at
            ``images/<its path in the source>``) and ``import.json``.
        skip_bad: skip bad rows (counted per reason) instead of failing on the first one.
        link: hard-link images instead of copying them (falls back to a copy across file systems).
        workers: threads that decode images (default: up to 4).

    Returns:
        The :class:`ImportReport`.

    Raises:
        UserError: for a bad row (without ``skip_bad``), a bad file or a non-empty ``out_dir``.
    """
    manifest = find_manifest(src)
    root = manifest.parent.resolve()
    problems = Problems(skip_bad)
    kept: list[tuple[str, Record]] = []
    first_at: dict[Path, str] = {}
    group_of: dict[Fact, tuple[str | None, str]] = {}
    for line, row in read_rows(manifest, problems.add):
        where = f"{manifest}:{line}"
        try:
            record = parse_record(row, root, where, allow_outside=True)
        except UserError as exc:
            problems.add(MISSING_IMAGE if _missing_image(row.get("image"), root) else INVALID, str(exc))
            continue
        if not record.image.is_relative_to(root):
            problems.add(ESCAPES, f"{where}: image path {row['image']!r} escapes the data directory {root}")
        elif record.image in first_at:
            problems.add(DUPLICATE, f"{where}: duplicate row for image {row['image']!r} "
                                    f"(first at {first_at[record.image]})")
        elif record.fact in group_of and group_of[record.fact][0] != record.group:
            group, at = group_of[record.fact]
            problems.add(CONFLICT, f"{where}: fact {record.fact} has group {record.group!r} here but {group!r} at {at}")
        else:
            first_at[record.image] = where
            group_of.setdefault(record.fact, (record.group, where))
            kept.append((where, record))
    decoded = check_images([r.image for _, r in kept], workers)
    with atomic_dir(out_dir) as tmp:
        out_rows = []
        for where, r in kept:
            if decoded[r.image] is not None:
                problems.add(UNDECODABLE, f"{where}: {decoded[r.image]}")
                continue
            name = dest_name(r.image, root)
            place_image(r.image, tmp / name, link)
            out_rows.append(ManifestRow(name, r.fact, r.group, r.split))
        _, report = finish(tmp, out_rows, problems, Path(out_dir), {"importer": "manifest", "source": str(manifest)})
    logger.info("imported %d images of %d facts from %s", report.images, report.facts, manifest)
    return report


def _missing_image(image: object, root: Path) -> bool:
    """Whether a row's image names a file that is not there (False for a path no file can have)."""
    if not isinstance(image, str) or not image.strip():
        return False
    try:
        return not locate_image(root, image)[1]
    except ValueError:
        return False
