"""The fingerprint of a data directory: what ``train --resume`` checks the data against.

A fingerprint holds the manifest's content hash (SHA-256 of its bytes), the fact table's (its facts
in id order), and per image, in manifest order, its path relative to the data directory, its size
and its modification time (ns). Images are only stat'ed, never read: one stat per image, what
loading the manifest costs already, so it stays cheap at 800,000 images. A copy that keeps
modification times (``cp -a``, ``rsync -a``) has the same fingerprint; one that does not is told
apart, as an edited image would be.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

from ..errors import UserError
from .manifest import Dataset

VERSION = 1


def data_fingerprint(manifest: Path, dataset: Dataset) -> dict:
    """The fingerprint of ``dataset``, read from ``manifest`` (:func:`factlearn.data.manifest.find_manifest`).

    Returns:
        ``{"version", "manifest": file name, "manifest_sha256", "facts": count, "facts_sha256",
        "images": [[path relative to the data directory, size, mtime_ns], ...]}``, JSON-ready.
    """
    facts = json.dumps([list(f.slots) for f in dataset.facts.facts]).encode()
    images = []
    for record in dataset.records:
        st = os.stat(record.image)
        images.append([_relative(record.image, dataset.root), st.st_size, st.st_mtime_ns])
    return {"version": VERSION, "manifest": manifest.name, "manifest_sha256": _sha256(manifest),
            "facts": len(dataset.facts), "facts_sha256": hashlib.sha256(facts).hexdigest(), "images": images}


def check_fingerprint(doc: object, where: Path) -> dict:
    """``doc`` (read from ``where``) if it has the form :func:`data_fingerprint` returns; else a UserError."""
    ok = (isinstance(doc, dict) and doc.get("version") == VERSION
          and all(isinstance(doc.get(k), str) for k in ("manifest", "manifest_sha256", "facts_sha256"))
          and isinstance(doc.get("images"), list)
          and all(isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in row[1:]) for row in doc["images"]))
    if not ok:
        raise UserError(f"{where} is malformed: not a data fingerprint written by factlearn")
    return doc


def fingerprint_difference(saved: dict, now: dict) -> str | None:
    """What changed from the ``saved`` fingerprint to ``now``, as one line (None: nothing).

    Rows added or removed come first (naming the first of each), then other changes of the manifest
    (its facts, groups, splits or order), then the first image whose size or modification time differs.
    """
    before = [row[0] for row in saved["images"]]
    after = [row[0] for row in now["images"]]
    if saved["manifest_sha256"] != now["manifest_sha256"]:
        kept, new = set(before), set(after)
        removed = [name for name in before if name not in new]
        added = [name for name in after if name not in kept]
        parts = []
        if removed:
            parts.append(f"{len(removed)} manifest row{'s' * (len(removed) != 1)} removed (first: {removed[0]})")
        if added:
            parts.append(f"{len(added)} manifest row{'s' * (len(added) != 1)} added (first: {added[0]})")
        if parts:
            return "; ".join(parts)
        if saved["facts_sha256"] != now["facts_sha256"]:
            return f"the facts of {now['manifest']} changed (the same images, other facts)"
        return f"{now['manifest']} changed (the same images and facts: a group, split or the row order differs)"
    stats = {row[0]: row[1:] for row in now["images"]}
    changed = [row for row in saved["images"] if stats.get(row[0], row[1:]) != row[1:]]
    if not changed:
        return None
    name, size, mtime = changed[0]
    new_size, new_mtime = stats[name]
    if new_size != size:
        what = f"size {size} -> {new_size} bytes"
    else:
        when = (_time(mtime), _time(new_mtime))
        what = (f"modified {when[0]} -> {when[1]}" if when[0] != when[1]
                else f"modification time {mtime} -> {new_mtime} ns")
    more = f"; {len(changed) - 1} more image{'s' * (len(changed) != 2)} changed" if len(changed) > 1 else ""
    return f"image {name} changed since the run started ({what}){more}"


def fingerprint_text(fingerprint: dict) -> str:
    """``fingerprint`` as JSON text, one image per line (a file of 800,000 images stays readable)."""
    head = {k: v for k, v in fingerprint.items() if k != "images"}
    rows = ",\n".join("    " + json.dumps(row) for row in fingerprint["images"])
    return json.dumps(head, indent=2)[:-2] + ',\n  "images": [\n' + rows + "\n  ]\n}\n"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # allowed outside the data directory: its absolute path
        return path.as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="seconds")
