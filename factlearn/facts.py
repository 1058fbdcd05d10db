"""Facts <S>, <S,P>, <S,P,O> and the fact table that gives each a stable integer id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import UserError

SLOTS = ("subject", "predicate", "object")


@dataclass(frozen=True, order=True)
class Fact:
    """A fact with up to three slots; a missing slot (``None``) is a wildcard.

    Valid shapes are <S>, <S,P> and <S,P,O>: an object without a predicate is not a fact.
    Slot text is normalised (lower case, single spaces) so "Left  Of" and "left of" are one phrase.
    """

    subject: str
    predicate: str | None = None
    object: str | None = None

    def __post_init__(self) -> None:
        norm = [_normalise(v) for v in (self.subject, self.predicate, self.object)]
        if norm[0] is None:
            raise ValueError("a fact needs a subject")
        if norm[1] is None and norm[2] is not None:
            raise ValueError(f"fact with object {norm[2]!r} but no predicate")
        for name, value in zip(SLOTS, norm):
            object.__setattr__(self, name, value)

    @property
    def slots(self) -> tuple[str | None, str | None, str | None]:
        """(subject, predicate, object), None where the slot is a wildcard."""
        return (self.subject, self.predicate, self.object)

    @property
    def order(self) -> int:
        """1 for <S>, 2 for <S,P>, 3 for <S,P,O>."""
        return sum(v is not None for v in self.slots)

    @property
    def mask(self) -> tuple[float, float, float]:
        """The wildcard flags (w_s, w_p, w_o) of the reference model."""
        return tuple(float(v is not None) for v in self.slots)  # type: ignore[return-value]

    def __str__(self) -> str:
        return "<" + ", ".join(v for v in self.slots if v is not None) + ">"

    @classmethod
    def parse(cls, text: str) -> "Fact":
        """Parse ``"<star, left of, circle>"`` (angle brackets optional)."""
        body = text.strip()
        if body.startswith("<") and body.endswith(">"):
            body = body[1:-1]
        parts = [p.strip() for p in body.split(",")]
        if not 1 <= len(parts) <= 3 or any(not p for p in parts):
            raise ValueError(f"not a fact: {text!r} (expected <S>, <S,P> or <S,P,O>)")
        return cls(*parts)


def _normalise(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"fact slot must be text, got {value!r}")
    text = " ".join(value.lower().split())
    return text or None


def matches(image_fact: Fact, candidate: Fact) -> bool:
    """Wildcard-aware ground truth of the reference evaluation.

    For an image of <S> every candidate with the same S is correct; for <S,P> every candidate
    with the same S and P; for <S,P,O> only the exact fact.
    """
    n = image_fact.order
    return candidate.slots[:n] == image_fact.slots[:n]


class FactTable:
    """An ordered list of distinct facts; a fact's id is its position."""

    def __init__(self, facts: Iterable[Fact]):
        self.facts: list[Fact] = list(facts)
        self._ids = {f: i for i, f in enumerate(self.facts)}
        if len(self._ids) != len(self.facts):
            raise ValueError("duplicate facts in fact table")

    @classmethod
    def from_facts(cls, facts: Iterable[Fact]) -> "FactTable":
        """Distinct facts sorted by (order, text): a stable id whatever the input order."""
        return cls(sorted(set(facts), key=lambda f: (f.order, f.slots[0], f.slots[1] or "", f.slots[2] or "")))

    def __len__(self) -> int:
        return len(self.facts)

    def __getitem__(self, i: int) -> Fact:
        return self.facts[i]

    def __contains__(self, fact: Fact) -> bool:
        return fact in self._ids

    def id(self, fact: Fact) -> int:
        """The id (position) of ``fact``; an unknown fact is a UserError naming it."""
        try:
            return self._ids[fact]
        except KeyError:
            raise UserError(f"unknown fact {fact}") from None

    def ids(self, facts: Sequence[Fact]) -> list[int]:
        """The ids of ``facts``, in order."""
        return [self.id(f) for f in facts]

    def to_json(self) -> list[list[str | None]]:
        """One ``[subject, predicate, object]`` list per fact (null for a wildcard), in id order."""
        return [list(f.slots) for f in self.facts]

    @classmethod
    def from_json(cls, rows: list) -> "FactTable":
        """The table :meth:`to_json` wrote."""
        return cls(Fact(*row) for row in rows)

    def words(self) -> list[str]:
        """Every word of every slot phrase, sorted and distinct."""
        return sorted({w for f in self.facts for v in f.slots if v for w in v.split()})
