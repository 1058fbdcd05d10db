"""Worlds that share no fact: what ``--exclude`` leaves out of a world, and the check that two
data directories share none.

A base world for pretraining (``factlearn synth --preset base --exclude WORLD``) must show none of
the continual world's facts. Its facts are sampled from the shape world less every fact of the
excluded worlds' fact tables, and less the converse of each (<b, right of, a> shows the same
picture as <a, left of, b>). Its images are rendered anew, so no image is shared either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ...errors import UserError
from ...facts import Fact, FactTable
from ..manifest import load_dataset
from .vocabulary import converse


def world_facts(data_dir: str | os.PathLike) -> list[Fact]:
    """The fact table of a data directory (a generated world or any other), in fact-id order.

    Raises:
        UserError: if ``data_dir`` holds no valid manifest.
    """
    return list(load_dataset(data_dir).facts.facts)


def shared_facts(data_dir: str | os.PathLike, other_dir: str | os.PathLike) -> list[Fact]:
    """The facts of ``data_dir`` that ``other_dir`` also shows: the same fact or its converse.

    An empty list means that the two worlds are disjoint, as a base world made with
    ``--exclude other_dir`` is with ``other_dir``.
    """
    others = set(world_facts(other_dir))
    return [f for f in world_facts(data_dir) if f in others or converse(f) in others]


def excluded_facts(worlds: Sequence[str | os.PathLike]) -> tuple[list[Fact], dict]:
    """The facts of the worlds named by ``--exclude`` and their record for ``world.json``.

    Returns:
        The union of the worlds' fact tables (in fact-table order), and ``{"worlds": [{"path",
        "facts"}], "facts": [[S, P, O], ...]}`` (absolute paths; null for a missing slot).

    Raises:
        UserError: naming the ``--exclude`` directory that holds no valid manifest.
    """
    union: set[Fact] = set()
    record: list[dict] = []
    for world in worlds:
        try:
            facts = world_facts(world)
        except UserError as exc:
            raise UserError(f"--exclude {world}: {exc}") from None
        union.update(facts)
        record.append({"path": str(Path(world).resolve()), "facts": len(facts)})
    table = FactTable.from_facts(union)
    return list(table.facts), {"worlds": record, "facts": [list(f.slots) for f in table.facts]}
