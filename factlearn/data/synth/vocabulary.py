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

The large world (preset ``lsc``, sampled by :mod:`.lsc`) uses the words at the end of this module,
a superset of the shape world's, generated deterministically:

* subjects (:data:`LSC_SUBJECTS`, about 1,100): a shape family (the 16 shapes and
  :data:`LSC_NEW_SHAPES`) with an optional decoration (:data:`DECORATIONS`: "hollow", "pierced",
  "split" ...) and an optional aspect ("tall", "wide"), as "hollow tall star" (:func:`split_subject`
  takes one apart); combinations that would look like another subject are left out;
* attributes: :data:`LSC_COLOURS` (hues x light/plain/dark, kept where they stand apart),
  :data:`LSC_TEXTURES` (ten patterns), :data:`LSC_SIZES` ("tiny" besides "small" and "large");
* relations (:data:`LSC_RELATIONS`): seven pictures, each named by a word and its converse: the
  shape world's four directions, "inside"/"around", "in front of"/"behind", and the new "on top of"/"under"
  (touching) and the diagonals ("above left of"/"below right of", "above right of"/"below left of").

Every shape-world word keeps its meaning and its colour in the large world, and
:func:`fact_group` and :func:`converse` serve both worlds. The groups are the shape world's six
(a subject is round or angular as its family is), so most of a large world is "relation".
"""

from __future__ import annotations

import colorsys
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
# The shape world samples none of the large world's new words, so their pairs (the second line)
# leave its facts as they were; they are here so that ``converse`` and ``--exclude`` know them.
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
            **{a: b for x, y in (("inside", "around"), ("in front of", "behind"), ("on top of", "under"),
                                 ("above left of", "below right of"), ("above right of", "below left of"))
               for a, b in ((x, y), (y, x))}}
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

# ---- the large world (preset "lsc"): the words above and many more ------------------------------

# New shape families (geometry in .shapes), as round or angular for the <S> groups.
LSC_NEW_ROUND = ("quarter circle", "pie", "lens", "arch", "trefoil", "quatrefoil")
LSC_NEW_ANGULAR = ("heptagon", "octagon", "four-point star", "six-point star", "eight-point star", "trapezoid",
                   "parallelogram", "kite", "chevron", "lightning bolt", "shield", "house", "tag", "bowtie",
                   "hourglass", "t shape", "l shape", "u shape", "h shape", "x shape", "right triangle")
LSC_NEW_SHAPES = LSC_NEW_ROUND + LSC_NEW_ANGULAR
LSC_FAMILIES = SHAPES + LSC_NEW_SHAPES  # the shape families of the large world's subjects
_ROUND = frozenset(ROUND_SHAPES + LSC_NEW_ROUND)
# Families with room inside for a small subject ("inside", "around").
LSC_CONTAINERS = CONTAINERS + ("heptagon", "octagon", "trapezoid", "kite", "shield", "house", "tag", "pie",
                               "lens", "quatrefoil")
# Modifiers of a family (geometry in .shapes): a subject is "[decoration] [aspect] family".
DECORATIONS = ("hollow", "pierced", "split", "slashed", "notched", "halved", "barred", "stemmed")
ASPECTS = ("tall", "wide")
# Combinations left out because their silhouette is (nearly) another subject's: mask overlap
# (intersection over union) of 0.95 or more, which tests/test_synth_lsc.py checks for every pair.
# A hole where the family has one (a ring's, an arch's, a crescent's bite, a u's gap), a notch
# where there is no top edge to cut, a half that is only a bar or a square; and the hollow circle,
# which is the ring.
_SAME_LOOK = {
    ("hollow", "ring"), ("hollow", "circle"), ("pierced", "ring"), ("pierced", "crescent"), ("pierced", "u shape"),
    ("pierced", "l shape"), ("pierced", "arch"), ("notched", "chevron"), ("notched", "u shape"),
    ("notched", "h shape"), ("notched", "bowtie"), ("notched", "x shape"), ("notched", "crescent"),
    ("notched", "right triangle"), ("halved", "arrow"), ("halved", "quarter circle"), ("split", "hourglass"),
}


def split_subject(subject: str) -> tuple[str, str, str]:
    """``(decoration, aspect, family)`` of a large-world subject ("hollow tall star" -> ("hollow",
    "tall", "star")); "" for a missing modifier. Any other subject is its own family."""
    words = subject.split(" ", 1)
    decoration = words[0] if len(words) == 2 and words[0] in DECORATIONS else ""
    rest = subject[len(decoration) + 1:] if decoration else subject
    words = rest.split(" ", 1)
    aspect = words[0] if len(words) == 2 and words[0] in ASPECTS else ""
    return decoration, aspect, rest[len(aspect) + 1:] if aspect else rest


def _lsc_subjects() -> tuple[str, ...]:
    out = []
    for family in LSC_FAMILIES:
        for decoration in ("", *DECORATIONS):
            for aspect in ("", *ASPECTS):
                if (decoration, family) in _SAME_LOOK:
                    continue
                out.append(" ".join(w for w in (decoration, aspect, family) if w))
    return tuple(out)


def _lsc_colours() -> dict[str, tuple[int, int, int]]:
    """The shape world's colours, then hue x shade (light, plain, dark), each kept only if it
    stands apart (RGB distance at least 45) from every colour kept before and every neutral."""
    hues = {"red": 0, "orange": 28, "yellow": 52, "green": 125, "teal": 168, "cyan": 188, "blue": 218,
            "indigo": 240, "purple": 280, "magenta": 305, "pink": 330}
    plain = {h: COLOURS.get(h) or tuple(round(255 * c) for c in colorsys.hsv_to_rgb(a / 360, 0.8, 0.9))
             for h, a in hues.items()} | {"brown": COLOURS["brown"]}
    candidates = dict(COLOURS)
    for hue, rgb in plain.items():
        for shade in ("", "light", "dark"):
            name = f"{shade} {hue}".strip()
            if name not in candidates:
                mix = {"": rgb, "light": [v + (255 - v) * 0.5 for v in rgb], "dark": [v * 0.55 for v in rgb]}
                candidates[name] = tuple(round(v) for v in mix[shade])
    kept: dict[str, tuple[int, int, int]] = {}
    for name, rgb in candidates.items():
        if all(math.dist(rgb, other) >= 45 for other in (*kept.values(), *NEUTRALS.values())):
            kept[name] = rgb
    return kept


LSC_SUBJECTS = _lsc_subjects()
LSC_COLOURS = _lsc_colours()  # includes COLOURS, with the same RGB
LSC_TEXTURES = TEXTURES + ("wavy", "banded", "ringed", "grid", "crosshatched", "speckled", "two-tone")
LSC_SIZES = {**SIZES, "tiny": 0.09}  # tiny stays larger than any distractor (half-extent <= 0.075)
LSC_ATTRIBUTES = {"colour": tuple(LSC_COLOURS), "texture": LSC_TEXTURES, "size": tuple(LSC_SIZES)}
# The seven pictures of two shapes, each named by a relation and its converse (CONVERSE).
LSC_PICTURES = (("left of", "right of"), ("above", "below"), ("inside", "around"), ("in front of", "behind"),
                ("on top of", "under"), ("above left of", "below right of"), ("above right of", "below left of"))
LSC_RELATIONS = tuple(r for pair in LSC_PICTURES for r in pair)
_PREDICATE_FAMILY = {p: family for family, preds in LSC_ATTRIBUTES.items() for p in preds}


def fact_group(fact: Fact) -> str:
    """The semantic group of a fact of the shape world or the large world (module docstring);
    a large-world subject's group is its shape family's."""
    if fact.subject in TOPIC_SHAPES:
        return TOPIC
    if fact.order == 1:
        return "round shapes" if split_subject(fact.subject)[2] in _ROUND else "angular shapes"
    if fact.order == 2:
        return _PREDICATE_FAMILY[fact.predicate]
    return "relation"


def converse(fact: Fact) -> Fact | None:
    """The fact that shows the same picture (<b, right of, a> for <a, left of, b>), or None."""
    if fact.object is None or fact.predicate not in CONVERSE:
        return None
    return Fact(fact.object, CONVERSE[fact.predicate], fact.subject)


def with_converses(facts: Iterable[Fact]) -> set[Fact]:
    """``facts`` and the converse of each: every fact that shows one of their pictures."""
    out = set(facts)
    return out | {c for f in out if (c := converse(f)) is not None}


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
    banned = with_converses(exclude)

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
        n1, n2, n3 = allocate(n_facts, ORDER_WEIGHTS, self.capacity, minimum=1)
        facts = self._kept(rng, [Fact(s) for s in self.subjects])[:n1]
        fam_counts = allocate(n2, tuple(FAMILY_WEIGHTS.values()), self.family_caps, minimum=0)
        for family, k in zip(FAMILY_WEIGHTS, fam_counts):
            pools = {p: self._kept(rng, [Fact(s, p) for s in self.subjects]) for p in FAMILIES[family]}
            facts += _round_robin(rng, pools, k)
        pools = {r: self._kept(rng, pool) for r, pool in _relation_pools(self.subjects).items()}
        return facts + _round_robin(rng, pools, n3)

    def _kept(self, rng: np.random.Generator, facts: list[Fact]) -> list[Fact]:
        return [f for f in shuffled(rng, facts) if self.keep(f)]


def shuffled(rng: np.random.Generator, items: Sequence[T]) -> list[T]:
    """``items`` in the order of one ``rng.permutation`` (the one way this world shuffles)."""
    return [items[i] for i in rng.permutation(len(items))]


def allocate(total: int, weights: tuple[float, ...], caps: tuple[int, ...], minimum: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` within ``caps``; what a capped part cannot
    take goes to the others in proportion (largest remainders for the rounding, ties to the
    first parts), and every part gets ``minimum`` (or its cap) taken from the largest.

    Returns:
        One count per weight, summing to ``total`` (which must not exceed ``sum(caps)``)."""
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
    names = shuffled(rng, tuple(pools))
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
