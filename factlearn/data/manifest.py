"""The generic manifest: one row per image naming its fact.

Formats: JSON Lines (``manifest.jsonl``) or CSV (``manifest.csv``) with the columns
``image, subject, predicate, object, group, split``. ``predicate``, ``object``, ``group`` and
``split`` may be empty or absent. Image paths are relative to the manifest's folder and may not
escape it (unless ``allow_outside=True``). Every problem is a :class:`UserError` naming the file
and line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..facts import Fact, FactTable

logger = logging.getLogger(__name__)

COLUMNS = ("image", "subject", "predicate", "object", "group", "split")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Record:
    image: Path  # absolute path
    fact: Fact
    group: str | None
    split: str | None


@dataclass
class Dataset:
    """All records of a data directory and the fact table they define."""

    root: Path
    records: list[Record]
    facts: FactTable

    def fact_ids(self, records: list[Record] | None = None) -> list[int]:
        return self.facts.ids([r.fact for r in (self.records if records is None else records)])

    def groups(self) -> dict[Fact, str | None]:
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
    """Read and validate a manifest; images are checked for existence, not decoded."""
    manifest = find_manifest(data_dir)
    root = manifest.parent.resolve()
    rows = _read_rows(manifest)
    records: list[Record] = []
    seen: dict[Path, int] = {}
    for line, row in rows:
        where = f"{manifest}:{line}"
        records.append(_record(row, root, where, allow_outside))
        image = records[-1].image
        if image in seen:
            raise UserError(f"{where}: duplicate row for image {row['image']!r} (first at line {seen[image]})")
        seen[image] = line
    if not records:
        raise UserError(f"{manifest}: no rows")
    table = FactTable.from_facts(r.fact for r in records)
    logger.info("read %d images of %d facts from %s", len(records), len(table), manifest)
    return Dataset(root=root, records=records, facts=table)


def _read_rows(manifest: Path) -> list[tuple[int, dict]]:
    try:
        data = manifest.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {manifest}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{manifest}:{line}: not valid UTF-8") from None
    rows: list[tuple[int, dict]] = []
    if manifest.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted cells may hold line breaks
        try:
            header = reader.fieldnames or []
        except csv.Error as exc:
            raise UserError(f"{manifest}:1: not a valid CSV header ({exc})") from None
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise UserError(f"{manifest}:1: unknown column {unknown[0]!r} (expected {', '.join(COLUMNS)})")
        for col in ("image", "subject"):
            if col not in header:
                raise UserError(f"{manifest}:1: missing column {col!r}")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return rows
            except csv.Error as exc:
                # + 1: the line being read is not counted yet
                raise UserError(f"{manifest}:{reader.line_num + 1}: malformed CSV ({exc})") from None
            if None in row:  # more cells than header columns
                raise UserError(f"{manifest}:{reader.line_num}: more cells than columns")
            rows.append((reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}))
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"{manifest}:{line}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{manifest}:{line}: expected a JSON object")
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            raise UserError(f"{manifest}:{line}: unknown key {unknown[0]!r} (expected {', '.join(COLUMNS)})")
        rows.append((line, row))
    return rows


def _record(row: dict, root: Path, where: str, allow_outside: bool) -> Record:
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
    image = (root / row["image"]).resolve()
    if not allow_outside and not image.is_relative_to(root):
        raise UserError(f"{where}: image path {row['image']!r} escapes the data directory {root}")
    if not image.is_file():
        raise UserError(f"{where}: image file not found: {row['image']}")
    return Record(image=image, fact=fact, group=row.get("group") or None, split=split)
