"""What a pretrained image tower was trained on: the record ``pretrain.json`` in the folder
``factlearn pretrain`` writes, and the check that a continual run does not share its facts.

The record is the only owner of that file's format: :func:`write_record` writes it,
:func:`check_pretraining` reads it where a training session loads its data. A backbone pretrained
on the facts the continual tasks then learn would make every method look better than it is, and
would make the comparison with the reference (pretrained on ImageNet, which holds none of the
facts) unfair.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..facts import Fact, FactTable
from ..io import atomic_write_json, read_json

logger = logging.getLogger(__name__)

RECORD = "pretrain.json"


def fact_digest(fact: Fact) -> str:
    """A short stable digest of one fact (its normalised slots), 16 hex digits."""
    return hashlib.sha256(json.dumps(list(fact.slots)).encode("utf-8")).hexdigest()[:16]


def table_fingerprint(facts: FactTable) -> str:
    """The sha256 of a fact table's sorted fact digests: equal for tables with the same facts,
    whatever their order."""
    return hashlib.sha256("\n".join(sorted(fact_digest(f) for f in facts.facts)).encode("utf-8")).hexdigest()


def write_record(folder: Path, data_dir: str | Path, facts: FactTable, **fields: object) -> dict:
    """Write ``folder/pretrain.json``: the factlearn version, the base data directory, its fact
    count, fingerprint and per-fact digests (for :func:`check_pretraining`), and ``fields`` (epochs,
    seed, the config used, the time taken ...). Returns the record."""
    record = {
        "factlearn_version": __version__,
        "data": str(Path(data_dir).resolve()),
        "facts": len(facts),
        "fact_table_sha256": table_fingerprint(facts),
        **fields,
        "fact_digests": sorted(fact_digest(f) for f in facts.facts),
    }
    atomic_write_json(folder / RECORD, record)
    return record


def check_pretraining(folder: str | Path, facts: Sequence[Fact]) -> None:
    """Refuse a pretrained tower (``model.pretrained``) that was pretrained on any of ``facts`` (the
    facts the continual tasks learn); warn when the folder has no record to check."""
    path = Path(folder) / RECORD
    if not path.is_file():
        logger.warning("model.pretrained: %s has no %s (not written by factlearn pretrain): cannot check that "
                       "it was not pretrained on this data's facts", folder, RECORD)
        return
    record = read_json(path)
    digests = record.get("fact_digests") if isinstance(record, dict) else None
    if not isinstance(digests, list):
        raise UserError(f"{path} is malformed: no fact_digests")
    known = set(digests)
    shared = [f for f in facts if fact_digest(f) in known]
    if shared:
        raise UserError(f"model.pretrained: {folder} was pretrained on {len(shared)} of the tasks' facts "
                        f"(e.g. {shared[0]}, from {record.get('data')}): pretraining on the continual world's facts "
                        "is not fair; pretrain on a base world without them (factlearn synth --preset base --exclude)")
