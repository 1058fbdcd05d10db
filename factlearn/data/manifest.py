"""The generic manifest: one row per image naming its fact. This module owns the format: it reads
(:func:`load_dataset`, :func:`read_rows`) and writes (:func:`write_manifest`) it.

Formats: JSON Lines (``manifest.jsonl``) or CSV (``manifest.csv``) with the columns
``image, subject, predicate, object, group, split``. ``predicate``, ``object``, ``group`` and
``split`` may be empty or absent. Image paths are relative to the manifest's folder and may not
escape it (unless ``allow_outside=True``). Every problem is a :class:`UserError` naming the file
and line. Written manifests are always JSON Lines with all six keys, null for an empty one.
"""

from __future__ import annotations

import json
import os
import stat
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import UserError
from ..facts import Fact, FactTable
from ..io import atomic_write_text
from ..io import parse_json
from .textfiles import MALFORMED, UNKNOWN_COLUMN, BadRow, read_csv, read_text, refuse, shown

logger = logging.getLogger(__name__)

COLUMNS = ("image", "subject", "predicate", "object", "group", "split")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")  # looked for in this order; the first is written
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Record:
    """One image of a data set as read: its absolute path, its fact, and its group and split
    (None where the manifest leaves them empty)."""

    image: Path  # absolute path
    fact: Fact
    group: str | None
    split: str | None


@dataclass(frozen=True)
class ManifestRow:
    """One row to write: ``image`` is the path relative to the data directory, with ``/``."""

    image: str
    fact: Fact
    group: str | None = None
    split: str | None = None


@dataclass
class Dataset:
    """All records of a data directory and the fact table they define."""

    root: Path
    records: list[Record]
    facts: FactTable

    def fact_ids(self, records: list[Record] | None = None) -> list[int]:
        """The fact id (row of :attr:`facts`) of each record, of all records by default."""
        return self.facts.ids([r.fact for r in (self.records if records is None else records)])

    def groups(self) -> dict[Fact, str | None]:
        """The semantic group of each fact (the manifest's ``group``; None where it is empty)."""
        return {r.fact: r.group for r in self.records}


def find_manifest(data_dir: str | Path) -> Path:
    """The manifest file of a data directory (or the file itself)."""
    path = Path(data_dir)
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"data directory not found: {path}")
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"no manifest in {path} (expected one of {', '.join(MANIFEST_NAMES)})")


def load_dataset(data_dir: str | Path, allow_outside: bool = False) -> Dataset:
    """Read and validate a manifest; images are checked for existence, not decoded.

    Args:
        data_dir: a data directory holding ``manifest.jsonl`` or ``manifest.csv``, or the file.
        allow_outside: accept image paths that leave the manifest's folder.

    Returns:
        The :class:`Dataset`, records in file order.

    Raises:
        UserError: naming file and line, for the first problem of the file or of any row.
    """
    manifest = find_manifest(data_dir)
    root = manifest.parent.resolve()
    rows = list(read_rows(manifest))  # every row is well-formed before any value is judged
    records: list[Record] = []
    seen: dict[Path, int] = {}
    folders: dict[str, Path] = {}  # resolved image folders of this load (locate_image)
    for line, row in rows:
        where = f"{manifest}:{line}"
        records.append(parse_record(row, root, where, allow_outside, folders))
        image = records[-1].image
        if image in seen:
            raise UserError(f"{where}: duplicate row for image {row['image']!r} (first at line {seen[image]})")
        seen[image] = line
    if not records:
        raise UserError(f"{manifest}: no rows")
    table = FactTable.from_facts(r.fact for r in records)
    logger.info("read %d images of %d facts from %s", len(records), len(table), manifest)
    return Dataset(root=root, records=records, facts=table)


def read_rows(manifest: Path, bad_row: BadRow = refuse) -> Iterator[tuple[int, dict]]:
    """The rows of a manifest file (``.csv``: CSV, else JSON Lines), checked for form only.

    Args:
        manifest: the manifest file.
        bad_row: called as ``bad_row(reason, "file:line: why")`` for a row that is not a JSON
            object, has an unknown key or the wrong number of cells; the row is then left out.
            The default raises a UserError.

    Returns:
        An iterator of ``(line, row)``, ``row`` mapping columns to values (a JSON row's as
        written; a CSV row's as text, None for an empty cell). :func:`parse_record` judges them.

    Raises:
        UserError: for a file that cannot be read, is not UTF-8 or has a bad CSV header.
    """
    if manifest.suffix == ".csv":
        yield from read_csv(manifest, COLUMNS, ("image", "subject"), bad_row)
        return
    # Lines end at "\n" only (JSON Lines): str.splitlines would also cut at U+0085, U+2028 and
    # other characters a JSON string may hold unescaped.
    for line, raw in enumerate(read_text(manifest).split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"{manifest}:{line}"
        try:
            row = parse_json(raw)
        except json.JSONDecodeError as exc:
            bad_row(MALFORMED, f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            bad_row(MALFORMED, f"{where}: expected a JSON object")
            continue
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            bad_row(UNKNOWN_COLUMN, f"{where}: unknown key {unknown[0]!r} (expected {', '.join(COLUMNS)})")
            continue
        yield line, row


def parse_record(row: dict, root: Path, where: str, allow_outside: bool = False,
                 folders: dict[str, Path] | None = None) -> Record:
    """One manifest row (from :func:`read_rows`) as a :class:`Record`.

    Args:
        row: column -> value.
        root: the resolved folder of the manifest; image paths are relative to it.
        where: ``file:line``, the start of every error message.
        allow_outside: accept an image path that leaves ``root``.
        folders: a cache of resolved folders shared by the rows of one load (:func:`locate_image`).

    Raises:
        UserError: for a missing or empty image or subject, a value that is not text, a fact that
            is not one (an object without a predicate), an unknown split, a path that escapes
            ``root`` or an image file that does not exist.
    """
    for key in ("image", "subject"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise UserError(f"{where}: missing or empty {key!r}")
    for key in ("predicate", "object", "group", "split"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}: {key!r} must be text or empty, got {value!r}")
    slots = [row.get(k) if row.get(k) and row.get(k).strip() else None for k in ("subject", "predicate", "object")]
    for key, raw, val in zip(("predicate", "object"), (row.get("predicate"), row.get("object")), slots[1:]):
        if raw is not None and val is None and raw != "":
            raise UserError(f"{where}: {key!r} is whitespace only")
    try:
        fact = Fact(*slots)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    split = row.get("split") or None
    if split is not None and split not in SPLITS:
        raise UserError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        image, found = locate_image(root, row["image"], folders)
    except ValueError as exc:
        raise UserError(f"{where}: image path {row['image']!r} cannot name a file ({exc})") from None
    if not allow_outside and not image.is_relative_to(root):
        raise UserError(f"{where}: image path {row['image']!r} escapes the data directory {root}")
    if not found:
        raise UserError(f"{where}: image file not found: {shown(row['image'])}")
    return Record(image=image, fact=fact, group=row.get("group") or None, split=split)


def locate_image(root: Path, link: str, folders: dict[str, Path] | None = None) -> tuple[Path, bool]:
    """Where an image path of a data file leads: ``root / link`` resolved, and whether a file is there.

    With ``folders`` (a dict the caller keeps for one load) each folder is resolved once and an
    image that is not itself a symbolic link costs one ``lstat``: the same answer as resolving the
    whole path (``os.path.realpath`` walks every component in Python: 17 s for 80,000 images, which
    at 800,000 images would dominate loading the data set).

    Raises:
        ValueError: with the reason, for a path no file can have: a NUL byte, a character the file
            system cannot encode (a lone surrogate), a name too long.
    """
    try:
        path = root / link
        if folders is not None and path.name not in ("", ".", ".."):
            parent = str(path.parent)
            if parent not in folders:
                folders[parent] = path.parent.resolve()
            image = folders[parent] / path.name
            try:
                mode = os.lstat(image).st_mode
            except FileNotFoundError:
                return image, False
            except NotADirectoryError:  # the folder is a file: nothing can be under it
                return image, False
            if not stat.S_ISLNK(mode):
                return image, stat.S_ISREG(mode)
        image = path.resolve()
        return image, image.is_file()
    except UnicodeEncodeError:
        raise ValueError("a character the file system cannot encode") from None
    except ValueError as exc:  # embedded null byte
        raise ValueError(str(exc)) from None
    except OSError as exc:  # is_file() passes on "no such file", not ENAMETOOLONG
        raise ValueError(exc.strerror or str(exc)) from None


def write_manifest(data_dir: str | Path, rows: Iterable[ManifestRow]) -> Path:
    """Write ``data_dir/manifest.jsonl`` atomically (through :mod:`factlearn.io`).

    Args:
        data_dir: the data directory (created if missing); the images should be in it already,
            at the rows' paths, for :func:`load_dataset` to accept the result.
        rows: the rows in file order; each becomes one JSON object with the keys of
            :data:`COLUMNS` in that order, null for a missing slot, group or split.

    Returns:
        The path of the manifest written.

    Raises:
        ValueError: for a split other than None, "train" or "test" (a programming error).
    """
    lines = []
    for row in rows:
        if row.split is not None and row.split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, got {row.split!r}")
        values = (row.image, *row.fact.slots, row.group, row.split)
        lines.append(json.dumps(dict(zip(COLUMNS, values))) + "\n")
    path = Path(data_dir) / MANIFEST_NAMES[0]
    atomic_write_text(path, "".join(lines))
    return path
