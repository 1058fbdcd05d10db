"""Import Visual Genome annotations as fact images: one crop per fact occurrence.

Reads whichever of ``objects.json``, ``attributes.json`` and ``relationships.json`` are in the
Visual Genome folder (at least one) and finds image ``<image_id>`` as ``.jpg``, ``.jpeg`` or
``.png`` in its ``images/``, ``VG_100K/`` or ``VG_100K_2/`` subfolder.

* ``<S>`` from every object (its first name, ``names[0]``, or ``name``), cropped to its box;
* ``<S,P>`` from every attribute of an object (``attributes.json``), cropped to the object's box;
* ``<S,P,O>`` from every relationship, cropped to the union of the subject and object boxes.

Names are normalised: lower case, single spaces, surrounding punctuation stripped, then mapped
through the synonyms (:data:`DEFAULT_SYNONYMS` plus an optional ``alias<TAB>canonical`` file, whose
entries win). The same fact with the same box in the same image is one occurrence (Visual Genome
repeats annotations). Boxes are clipped to the image; boxes under ``min_box`` pixels on a side are
dropped, and so are facts with fewer than ``min_count`` occurrences. Keys of the JSON entries
other than those read here are ignored. The files are single-line JSON arrays, so a bad entry is
located as ``file: entry N (image_id I), object K`` rather than by line.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import UserError
from ..io import atomic_dir
from ..facts import Fact
from .images import to_rgb
from .importers import (BAD_BOX, BAD_FACT, MISSING_IMAGE, UNDECODABLE, ImportReport, Problems, check_images,
                        default_workers, finish)
from .manifest import ManifestRow
from .textfiles import MALFORMED, read_text

logger = logging.getLogger(__name__)

ANNOTATION_FILES = ("objects.json", "attributes.json", "relationships.json")
IMAGE_DIRS = ("images", "VG_100K", "VG_100K_2")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Kept small on purpose: irregular plurals of the most frequent Visual Genome subjects. Anything
# else (regular plurals, "t-shirt"/"tshirt", predicate variants) belongs in a --synonyms file.
DEFAULT_SYNONYMS = {"men": "man", "women": "woman", "children": "child"}
PUNCTUATION = " \t.,;:!?\"'"
JPEG_QUALITY = 90

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


@dataclass(frozen=True)
class _Occurrence:
    image_id: int
    box: Box  # unclipped
    fact: Fact
    where: str


def load_synonyms(path: str | Path | None) -> dict[str, str]:
    """:data:`DEFAULT_SYNONYMS` updated with an ``alias<TAB>canonical`` file (``#`` comments, blank lines ok)."""
    table = dict(DEFAULT_SYNONYMS)
    if path is None:
        return table
    path = Path(path)
    for line, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = raw.split("\t")
        alias, canonical = (_clean(p) for p in parts) if len(parts) == 2 else (None, None)
        if not alias or not canonical:
            raise UserError(f"{path}:{line}: expected 'alias<TAB>canonical', got {raw!r}")
        table[alias] = canonical
    return table


def normalise_name(text: object, synonyms: dict[str, str]) -> str | None:
    """A Visual Genome name as a fact slot: cleaned and mapped through the synonyms; None if empty."""
    if not isinstance(text, str):
        return None
    name = _clean(text)
    return synonyms.get(name, name) or None


def _clean(text: str) -> str:
    return " ".join(text.lower().split()).strip(PUNCTUATION)


def import_vg(vg_dir: str | Path, out_dir: str | Path, min_count: int = 10, synonyms: str | Path | None = None,
              min_box: int = 8, max_per_fact: int | None = None, seed: int = 0, skip_bad: bool = False,
              workers: int | None = None) -> ImportReport:
    """Crop Visual Genome objects, attributes and relationships into a fact data directory.

    Args:
        vg_dir: folder with the annotation JSON files and the images (see the module docstring).
        out_dir: a new or empty directory; gets ``manifest.jsonl``, ``images/<image_id>_<n>.jpg``
            and ``import.json``. Rows have no split (it is drawn per fact at training time).
        min_count: facts with fewer occurrences (after the other filters) are dropped.
        synonyms: optional ``alias<TAB>canonical`` file.
        min_box: boxes narrower or lower than this many pixels (after clipping) are dropped.
        max_per_fact: keep at most this many occurrences per fact (a seeded sample).
        seed: for ``max_per_fact``.
        skip_bad, workers: as in :func:`factlearn.data.importers.import_manifest`.

    Returns:
        The :class:`ImportReport`; ``notes`` counts merged duplicates, small boxes and rare facts.
    """
    folder = Path(vg_dir)
    if not folder.is_dir():
        raise UserError(f"Visual Genome folder not found: {folder}")
    if min_count < 1 or min_box < 1 or (max_per_fact is not None and max_per_fact < 1):
        raise UserError("--min-count, --min-box and --max-per-fact must be at least 1")
    files = [folder / n for n in ANNOTATION_FILES if (folder / n).is_file()]
    if not files:
        raise UserError(f"no Visual Genome annotations in {folder} (expected {', '.join(ANNOTATION_FILES)})")
    names = load_synonyms(synonyms)
    problems = Problems(skip_bad)
    occurrences: dict[tuple[int, Fact, Box], _Occurrence] = {}
    merged = 0
    for path in files:
        for occ in _read(path, names, problems):
            key = (occ.image_id, occ.fact, occ.box)
            merged += key in occurrences
            occurrences.setdefault(key, occ)
    found = _find_images(folder, sorted({o.image_id for o in occurrences.values()}))
    decoded = check_images(list(found.values()), workers)
    sizes = _sizes([p for p in found.values() if decoded[p] is None])
    kept: list[tuple[_Occurrence, Box]] = []
    small = 0
    for occ in occurrences.values():
        path = found.get(occ.image_id)
        if path is None:
            problems.add(MISSING_IMAGE, f"{occ.where}: no image file {occ.image_id}.jpg in "
                                        f"{', '.join(str(folder / d) for d in IMAGE_DIRS)}")
        elif decoded[path] is not None:
            problems.add(UNDECODABLE, f"{occ.where}: {decoded[path]}")
        elif (box := _clip(occ.box, sizes[path])) is None:
            width, height = sizes[path]
            problems.add(BAD_BOX, f"{occ.where}: box {occ.box} lies outside the {width}x{height} image")
        elif box[2] - box[0] < min_box or box[3] - box[1] < min_box:
            small += 1
        else:
            kept.append((occ, box))
    counts = Counter(occ.fact for occ, _ in kept)
    rare = {f for f, n in counts.items() if n < min_count}
    kept = [(o, b) for o, b in kept if o.fact not in rare]
    if max_per_fact is not None:
        kept = _cap(kept, max_per_fact, seed)
    if not kept:
        raise UserError(f"nothing to import from {folder}: no fact has {min_count} or more usable occurrences"
                        " (see --min-count, --min-box)")
    kept.sort(key=lambda ob: ob[0].image_id)  # stable: within an image, the annotation files' order
    notes = {"importer": "vg", "source": str(folder), "min_count": min_count, "min_box": min_box,
             "max_per_fact": max_per_fact, "duplicates_merged": merged, "small_boxes_dropped": small,
             "rare_facts_dropped": len(rare), "rare_occurrences_dropped": sum(counts[f] for f in rare)}
    with atomic_dir(out_dir) as tmp:
        rows = _crop_all(tmp, kept, found, workers)
        _, report = finish(tmp, rows, problems, Path(out_dir), notes)
    logger.info("imported %d crops of %d facts from %s", report.images, report.facts, folder)
    return report


def _read(path: Path, names: dict[str, str], problems: Problems) -> Iterator[_Occurrence]:
    try:
        entries = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a JSON array of images")
    kind = path.name.split(".")[0]  # objects | attributes | relationships
    for n, entry in enumerate(entries):
        image_id = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            problems.add(MALFORMED, f"{path}: entry {n}: no integer image_id")
            continue
        items = entry.get(kind, [])
        if not isinstance(items, list):
            problems.add(MALFORMED, f"{path}: entry {n} (image_id {image_id}): {kind!r} is not a list")
            continue
        for k, item in enumerate(items):
            where = f"{path}: entry {n} (image_id {image_id}), {kind[:-1]} {k}"
            if not isinstance(item, dict):
                problems.add(MALFORMED, f"{where}: expected an object")
                continue
            if kind == "relationships":
                yield from _relationship(item, image_id, where, names, problems)
            else:
                yield from _object(item, image_id, where, names, problems, with_attributes=kind == "attributes")


def _object(item: dict, image_id: int, where: str, names: dict[str, str], problems: Problems,
            with_attributes: bool) -> Iterator[_Occurrence]:
    parsed = _named_box(item, where, names, problems)
    if parsed is None:
        return
    subject, box = parsed
    if not with_attributes:
        yield _Occurrence(image_id, box, Fact(subject), where)
        return
    attributes = item.get("attributes") or []
    if not isinstance(attributes, list):
        problems.add(MALFORMED, f"{where}: 'attributes' is not a list")
        return
    for attribute in attributes:
        predicate = normalise_name(attribute, names)
        if predicate is None:
            problems.add(BAD_FACT, f"{where}: empty or non-text attribute {attribute!r}")
            continue
        yield _Occurrence(image_id, box, Fact(subject, predicate), where)


def _relationship(item: dict, image_id: int, where: str, names: dict[str, str],
                  problems: Problems) -> Iterator[_Occurrence]:
    predicate = normalise_name(item.get("predicate"), names)
    sides = [item.get(k) for k in ("subject", "object")]
    if not all(isinstance(s, dict) for s in sides):
        problems.add(MALFORMED, f"{where}: needs 'subject' and 'object' objects")
        return
    parsed = [_named_box(s, f"{where} {k}", names, problems) for s, k in zip(sides, ("subject", "object"))]
    if parsed[0] is None or parsed[1] is None:
        return
    if predicate is None:
        problems.add(BAD_FACT, f"{where}: empty or non-text predicate {item.get('predicate')!r}")
        return
    (subject, a), (obj, b) = parsed
    union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
    yield _Occurrence(image_id, union, Fact(subject, predicate, obj), where)


def _named_box(item: dict, where: str, names: dict[str, str], problems: Problems) -> tuple[str, Box] | None:
    raw = item.get("names")
    raw = raw[0] if isinstance(raw, list) and raw else item.get("name")
    name = normalise_name(raw, names)
    if name is None:
        problems.add(BAD_FACT, f"{where}: empty or missing name {raw!r}")
        return None
    values = [item.get(k) for k in ("x", "y", "w", "h")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        problems.add(MALFORMED, f"{where}: box needs numbers x, y, w, h, got {values}")
        return None
    x, y, w, h = (int(round(v)) for v in values)
    if w <= 0 or h <= 0:
        problems.add(BAD_BOX, f"{where}: box has width {w} and height {h}")
        return None
    return name, (x, y, x + w, y + h)


def _find_images(folder: Path, image_ids: list[int]) -> dict[int, Path]:
    found = {}
    dirs = [folder / d for d in IMAGE_DIRS if (folder / d).is_dir()]
    for image_id in image_ids:
        for d in dirs:
            path = next((d / f"{image_id}{s}" for s in IMAGE_SUFFIXES if (d / f"{image_id}{s}").is_file()), None)
            if path is not None:
                found[image_id] = path
                break
    return found


def _sizes(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    sizes = {}
    for path in paths:
        with Image.open(path) as img:  # reads the header only
            sizes[path] = img.size
    return sizes


def _clip(box: Box, size: tuple[int, int]) -> Box | None:
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], size[0]), min(box[3], size[1])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _cap(kept: list[tuple[_Occurrence, Box]], cap: int, seed: int) -> list[tuple[_Occurrence, Box]]:
    by_fact: dict[Fact, list[tuple[_Occurrence, Box]]] = defaultdict(list)
    for ob in kept:
        by_fact[ob[0].fact].append(ob)
    rng = np.random.default_rng(seed)
    out = []
    for fact in sorted(by_fact, key=lambda f: (f.order, f.slots[0], f.slots[1] or "", f.slots[2] or "")):
        group = by_fact[fact]
        pick = sorted(rng.choice(len(group), cap, replace=False)) if len(group) > cap else range(len(group))
        out += [group[i] for i in pick]
    return out


def _crop_all(tmp: Path, kept: list[tuple[_Occurrence, Box]], found: dict[int, Path],
              workers: int | None) -> list[ManifestRow]:
    """Crop every occurrence (each source image opened once, in threads); returns manifest rows."""
    (tmp / "images").mkdir()
    by_image: dict[int, list[tuple[int, Box]]] = defaultdict(list)
    names = []
    for i, (occ, box) in enumerate(kept):
        n = len(by_image[occ.image_id])
        names.append(f"images/{occ.image_id}_{n}.jpg")
        by_image[occ.image_id].append((i, box))

    def crop(image_id: int) -> None:
        with Image.open(found[image_id]) as img:
            rgb = to_rgb(img)
            for i, box in by_image[image_id]:
                rgb.crop(box).save(tmp / names[i], quality=JPEG_QUALITY)

    with ThreadPoolExecutor(max_workers=default_workers(workers)) as pool:
        list(pool.map(crop, by_image))
    return [ManifestRow(name, occ.fact) for name, (occ, _) in zip(names, kept)]
