"""The words of the shape world and the facts they make: which facts exist, their semantic groups,
and the seeded sample of facts a world shows.

Every image shows one fact:

* <S> (about 25% of the facts): one shape, the largest thing in the image, with a random
  colour and, sometimes, a texture. There are only 16 shapes, so big worlds have fewer <S>
  facts than 25% and give the rest to the other orders in proportion.
* <S,P> (about 40%): an attribute of the subject. Colours ("red", "dark blue", "light green"),
  textures ("striped", "dotted", "checked") or sizes ("large", "small"). The other two
  attributes then take their unmarked value (a neutral grey/black/white, solid, medium size),
  so the image does not also show a second <S,P> fact.
* <S,P,O> (about 35%): two shapes in a spatial relation: "left of", "right of", "above",
  "below" (with a clear gap), "inside" (S small, drawn within a large O) and "in front of"
  (S overlaps and hides part of O). A fact and its converse (<a, left of, b> and
  <b, right of, a>) show the same picture, so at most one of the two is ever sampled.
  "next to" is left out for the same reason: every "left of" picture would also show it.

Semantic groups (the ``group`` column of the manifest), for semantic task splits:

* <S>: "round shapes" (circle, ring, oval, half circle, crescent, heart, teardrop, cloud) or
  "angular shapes" (square, triangle, diamond, pentagon, hexagon, star, cross, arrow);
* <S,P>: the attribute family: "colour", "texture" or "size";
* <S,P,O>: "relation".

The topic group (opt-in, ``topic=True``): about a tenth of the facts (:data:`TOPIC_FRACTION`)
have as subject one of the :data:`TOPIC_SHAPES`, ornate shapes (gear, flower, sun, snowflake)
that no other fact and no distractor shows, all with many small points or petals around a
centre. They share that trait in the pixels, as the sports facts of 6DS share fields and balls,
and their group is "topic" whatever their order.

The fact list comes from ``default_rng([seed, 0])`` alone (topic facts: ``default_rng([seed, 0, 1])``).
Without ``exclude`` and ``topic`` it is the same as before either existed.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from ...errors import UserError
from ...facts import Fact, FactTable

T = TypeVar("T")

ROUND_SHAPES = ("circle", "ring", "oval", "half circle", "crescent", "heart", "teardrop", "cloud")
ANGULAR_SHAPES = ("square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "arrow")
SHAPES = ROUND_SHAPES + ANGULAR_SHAPES

COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 215, 40),
    "green": (40, 150, 60), "light green": (150, 230, 120), "blue": (50, 110, 235),
    "dark blue": (20, 30, 120), "purple": (140, 50, 180), "pink": (245, 140, 200),
    "brown": (125, 75, 35),
}
# Unmarked colours: used where the colour must not state a fact; never a predicate.
NEUTRALS = {"grey": (125, 125, 125), "black": (30, 30, 30), "white": (245, 245, 245)}
TEXTURES = ("striped", "dotted", "checked")
SIZES = {"large": 0.40, "small": 0.14}  # half-extent as a fraction of the image side
MEDIUM = 0.26  # the unmarked size: never a predicate
RELATIONS = ("left of", "right of", "above", "below", "inside", "in front of")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Shapes with room inside for a small subject (stars, crosses, crescents and arrows have none).
CONTAINERS = ("circle", "ring", "oval", "half circle", "heart", "teardrop", "cloud",
              "square", "triangle", "diamond", "pentagon", "hexagon")

# The topic group's subjects: never in SHAPES, so worlds without the topic never show them.
TOPIC_SHAPES = ("gear", "flower", "sun", "snowflake")
TOPIC_FRACTION = 0.1  # share of a world's facts in the topic group
TOPIC = "topic"  # the topic group's name in the manifest

ORDER_WEIGHTS = (0.25, 0.40, 0.35)  # <S>, <S,P>, <S,P,O>, roughly as in real fact data
FAMILY_WEIGHTS = {"colour": 0.45, "texture": 0.35, "size": 0.20}
FAMILIES = {"colour": tuple(COLOURS), "texture": TEXTURES, "size": tuple(SIZES)}


def fact_group(fact: Fact) -> str:
    """The semantic group of a shape-world fact (see the module docstring)."""
    if fact.subject in TOPIC_SHAPES:
        return TOPIC
    if fact.order == 1:
        return "round shapes" if fact.subject in ROUND_SHAPES else "angular shapes"
    if fact.order == 2:
        return next(fam for fam, preds in FAMILIES.items() if fact.predicate in preds)
    return "relation"


def converse(fact: Fact) -> Fact | None:
    """The fact that shows the same picture (<b, right of, a> for <a, left of, b>), or None."""
    if fact.object is None or fact.predicate not in CONVERSE:
        return None
    return Fact(fact.object, CONVERSE[fact.predicate], fact.subject)


def _relation_pools(subjects: Sequence[str]) -> dict[str, list[Fact]]:
    """Every <S,P,O> fact per relation; S and O differ so that the picture says which is which."""
    return {rel: [Fact(s, rel, o) for s in subjects for o in (CONTAINERS if rel == "inside" else SHAPES) if s != o]
            for rel in RELATIONS}


def _distinct(facts: Iterable[Fact]) -> int:
    """How many distinct pictures ``facts`` show: a fact and its converse count once."""
    return len({min(f.slots, c.slots) if (c := converse(f)) else f.slots for f in facts})


def max_facts() -> int:
    """The most facts :func:`sample_facts` can return (without ``exclude``)."""
    return sum(_Pools(SHAPES, lambda f: True).capacity)


def topic_count(n_facts: int) -> int:
    """How many of ``n_facts`` facts are in the topic group (at least one)."""
    return max(1, int(TOPIC_FRACTION * n_facts + 0.5))


def sample_facts(n_facts: int, seed: int = 0, *, exclude: Iterable[Fact] = (),
                 topic: bool = False) -> list[tuple[Fact, str]]:
    """Sample ``n_facts`` distinct facts of all three orders, deterministically from ``seed``.

    Args:
        n_facts: number of facts, at least 3 so that every order is present.
        seed: non-negative integer.
        exclude: facts never to sample, nor their converses (which show the same picture).
            Orders whose facts are all excluded are left out.
        topic: make :func:`topic_count` of the facts topic facts (:data:`TOPIC_SHAPES` as subject).

    Returns:
        ``(fact, group)`` pairs in :meth:`FactTable.from_facts` order.

    Raises:
        UserError: if the world (less ``exclude``) cannot show that many distinct facts.
    """
    if n_facts < 3:
        raise ValueError(f"need at least 3 facts to cover the three orders, got {n_facts}")
    banned = set(exclude)
    banned |= {c for f in banned if (c := converse(f)) is not None}

    def keep(fact: Fact) -> bool:
        return fact not in banned

    n_topic = topic_count(n_facts) if topic else 0
    regular, topical = _Pools(SHAPES, keep), _Pools(TOPIC_SHAPES, keep)
    limit = sum(regular.capacity) + (min(n_topic, sum(topical.capacity)) if topic else 0)
    if n_facts > limit or n_topic > sum(topical.capacity):
        where = " outside the excluded worlds" if banned else ""
        raise UserError(f"--facts must be at most {limit}: the shape world has no more distinct facts{where}")
    facts = regular.draw(np.random.default_rng([seed, 0]), n_facts - n_topic)
    if topic:
        facts += topical.draw(np.random.default_rng([seed, 0, 1]), n_topic)
    table = FactTable.from_facts(facts)
    return [(f, fact_group(f)) for f in table.facts]


class _Pools:
    """Every fact with a subject from ``subjects`` that ``keep`` accepts, per order."""

    def __init__(self, subjects: Sequence[str], keep: Callable[[Fact], bool]) -> None:
        self.subjects, self.keep = subjects, keep
        kept = [Fact(s) for s in subjects if keep(Fact(s))]
        self.family_caps = tuple(sum(keep(Fact(s, p)) for s in subjects for p in FAMILIES[f]) for f in FAMILY_WEIGHTS)
        relations = [f for pool in _relation_pools(subjects).values() for f in pool if keep(f)]
        self.capacity = (len(kept), sum(self.family_caps), _distinct(relations))

    def draw(self, rng: np.random.Generator, n_facts: int) -> list[Fact]:
        """``n_facts`` facts, the orders in proportion to :data:`ORDER_WEIGHTS` within the capacity.

        Every pool is shuffled whole and then filtered, so that ``rng`` is drawn from the same
        way whatever ``keep`` removes (without exclusions, the sample of earlier versions)."""
        n1, n2, n3 = _allocate(n_facts, ORDER_WEIGHTS, self.capacity, minimum=1)
        facts = self._kept(rng, [Fact(s) for s in self.subjects])[:n1]
        fam_counts = _allocate(n2, tuple(FAMILY_WEIGHTS.values()), self.family_caps, minimum=0)
        for family, k in zip(FAMILY_WEIGHTS, fam_counts):
            pools = {p: self._kept(rng, [Fact(s, p) for s in self.subjects]) for p in FAMILIES[family]}
            facts += _round_robin(rng, pools, k)
        pools = {r: self._kept(rng, pool) for r, pool in _relation_pools(self.subjects).items()}
        return facts + _round_robin(rng, pools, n3)

    def _kept(self, rng: np.random.Generator, facts: list[Fact]) -> list[Fact]:
        return [f for f in _shuffled(rng, facts) if self.keep(f)]


def _shuffled(rng: np.random.Generator, items: Sequence[T]) -> list[T]:
    return [items[i] for i in rng.permutation(len(items))]


def _allocate(total: int, weights: tuple[float, ...], caps: tuple[int, ...], minimum: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` within ``caps``; what a capped part cannot
    take goes to the others in proportion (largest remainders for the rounding)."""
    counts = [0] * len(weights)
    free = list(range(len(weights)))
    left = total
    while True:  # fix the parts whose share exceeds their cap, then share out the rest again
        weight = sum(weights[i] for i in free)
        capped = [i for i in free if left * weights[i] / weight >= caps[i]]
        if not capped:
            break
        for i in capped:
            counts[i] = caps[i]
            left -= caps[i]
            free.remove(i)
    weight = sum(weights[i] for i in free)
    ideal = {i: left * weights[i] / weight for i in free}
    for i in free:
        counts[i] = math.floor(ideal[i])
    for i in sorted(free, key=lambda i: (counts[i] - ideal[i], i))[: left - sum(counts[i] for i in free)]:
        counts[i] += 1
    for i in range(len(counts)):  # every part gets its minimum, taken from the largest
        while counts[i] < min(minimum, caps[i]):
            counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
            counts[i] += 1
    return counts


def _round_robin(rng: np.random.Generator, pools: dict[str, list[Fact]], k: int) -> list[Fact]:
    """Take ``k`` facts, one predicate after another so that every predicate gets used; skip a
    fact whose converse is already taken (it would show the same picture)."""
    names = _shuffled(rng, tuple(pools))
    queues = {p: list(pools[p]) for p in names}
    taken: list[Fact] = []
    seen: set[Fact] = set()
    while len(taken) < k:
        progressed = False
        for p in names:
            while queues[p]:
                fact = queues[p].pop(0)
                if converse(fact) in seen:
                    continue
                taken.append(fact)
                seen.add(fact)
                progressed = True
                break
            if len(taken) == k:
                break
        if not progressed:
            raise RuntimeError(f"fact pools exhausted after {len(taken)} of {k} facts")
    return taken
