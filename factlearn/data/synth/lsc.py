"""The large world's facts (preset ``lsc``): a seeded sample at the scale of the LSC data set.

The words are the large-world words of :mod:`.vocabulary` (about 1,100 subjects, 40 attributes,
seven pictures of two shapes). The world holds about 1,100 <S>, 44,000 <S,P> and 8 million
<S,P,O> facts (:func:`lsc_max_facts`), too many to list as the shape world's sampler does, so
:func:`sample_lsc_facts` draws positions in each pool instead, never listing a pool: its time
grows with the number of facts asked for (and those excluded), and its memory is that and at most
one picture's grid of integer positions (1.2 million).

The mix is the shape world's: the orders in proportion to ``ORDER_WEIGHTS`` within each order's
capacity, so a big world has every <S> fact, <S,P> up to its capacity and the rest <S,P,O>. Every
attribute and every relation word is used as evenly as the count allows. A picture is sampled at
most once, under one of its two words (<a left of b> or <b right of a>). The sample comes from
``default_rng([seed, 0])`` alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

import numpy as np

from ...errors import UserError
from ...facts import Fact, FactTable
from .vocabulary import (FAMILY_WEIGHTS, LSC_ATTRIBUTES, LSC_CONTAINERS, LSC_PICTURES, LSC_SUBJECTS, ORDER_WEIGHTS,
                         allocate, fact_group, shuffled, split_subject, with_converses)

# What a subject must be to hold another ("inside"): a container family, not cut in half.
_CONTAINER_SUBJECTS = tuple(s for s in LSC_SUBJECTS if split_subject(s)[2] in LSC_CONTAINERS
                            and split_subject(s)[0] != "halved")
_SUBJECT_INDEX = {s: i for i, s in enumerate(LSC_SUBJECTS)}


def lsc_max_facts() -> int:
    """The most facts :func:`sample_lsc_facts` can return (without ``exclude``)."""
    return sum(_Pools(set()).capacity)


def sample_lsc_facts(n_facts: int, seed: int = 0, *, exclude: Iterable[Fact] = ()) -> list[tuple[Fact, str]]:
    """Sample ``n_facts`` distinct facts of the large world, deterministically from ``seed``.

    Args:
        n_facts: number of facts, at least 3 so that every order is present.
        seed: non-negative integer.
        exclude: facts never to sample, nor their converses (which show the same picture).

    Returns:
        ``(fact, group)`` pairs in :meth:`FactTable.from_facts` order, the group as
        :func:`.vocabulary.fact_group` gives it.

    Raises:
        UserError: if the large world (less ``exclude``) cannot show that many distinct facts.
    """
    if n_facts < 3:
        raise ValueError(f"need at least 3 facts to cover the three orders, got {n_facts}")
    banned = with_converses(exclude)
    pools = _Pools(banned)
    limit = sum(pools.capacity)
    if n_facts > limit:
        where = " outside the excluded worlds" if banned else ""
        raise UserError(f"--facts must be at most {limit}: the large world has no more distinct facts{where}")
    table = FactTable.from_facts(pools.draw(np.random.default_rng([seed, 0]), n_facts))
    return [(f, fact_group(f)) for f in table.facts]


class _Pools:
    """The large world's facts less ``banned`` (closed under converse), counted, not listed."""

    def __init__(self, banned: set[Fact]) -> None:
        self.banned = banned
        subjects = set(LSC_SUBJECTS)
        # Only banned facts of the large world lower a capacity; count them per pool, once each.
        banned_attr = Counter(f.predicate for f in banned if f.order == 2 and f.subject in subjects)
        self.attr_caps = {p: len(LSC_SUBJECTS) - banned_attr[p] for preds in LSC_ATTRIBUTES.values() for p in preds}
        self.objects = {pic: _CONTAINER_SUBJECTS if pic[0] == "inside" else LSC_SUBJECTS for pic in LSC_PICTURES}
        pools = {pic[0]: set(objs) for pic, objs in self.objects.items()}
        # A banned picture counted once: by its first word (``banned`` holds the converse too).
        self.banned_pics = Counter(f.predicate for f in banned if f.order == 3 and f.predicate in pools
                                   and f.subject in subjects and f.object in pools[f.predicate]
                                   and f.subject != f.object)
        # Pairs (s, o) with s != o; every object is also a subject, so each object loses one pair.
        self.pic_caps = {pic: len(LSC_SUBJECTS) * len(objs) - len(objs) - self.banned_pics[pic[0]]
                         for pic, objs in self.objects.items()}
        self.family_caps = tuple(sum(self.attr_caps[p] for p in LSC_ATTRIBUTES[f]) for f in FAMILY_WEIGHTS)
        n_subjects = sum(Fact(s) not in banned for s in LSC_SUBJECTS)
        self.capacity = (n_subjects, sum(self.family_caps), sum(self.pic_caps.values()))

    def draw(self, rng: np.random.Generator, n_facts: int) -> list[Fact]:
        """``n_facts`` facts, the orders in proportion to ``ORDER_WEIGHTS`` within the capacity."""
        n1, n2, n3 = allocate(n_facts, ORDER_WEIGHTS, self.capacity, minimum=1)
        facts = self._kept(rng.permutation(len(LSC_SUBJECTS)), lambda i: Fact(LSC_SUBJECTS[i]), n1)
        fam_counts = allocate(n2, tuple(FAMILY_WEIGHTS.values()), self.family_caps, minimum=0)
        for family, k in zip(FAMILY_WEIGHTS, fam_counts):
            # Shuffled first, so that the attributes that get one fact more than others are random.
            preds = shuffled(rng, LSC_ATTRIBUTES[family])
            for p, c in zip(preds, _even(k, [self.attr_caps[p] for p in preds])):
                facts += self._kept(rng.permutation(len(LSC_SUBJECTS)), lambda i, p=p: Fact(LSC_SUBJECTS[i], p), c)
        pictures = shuffled(rng, LSC_PICTURES)
        for (word, other), k in zip(pictures, _even(n3, [self.pic_caps[pic] for pic in pictures])):
            pairs = self._pairs(rng, (word, other), k)
            n_word = k // 2 + int(rng.integers(k % 2 + 1))  # an odd count's extra fact to either word
            facts += [Fact(s, word, o) for s, o in pairs[:n_word]] + [Fact(o, other, s) for s, o in pairs[n_word:]]
        return facts

    def _kept(self, order: Iterable[int], make: Callable[[int], Fact], k: int) -> list[Fact]:
        """The first ``k`` facts ``make(i)`` over ``order`` that are not banned."""
        out: list[Fact] = []
        for i in order:
            if len(out) == k:
                break
            fact = make(int(i))
            if fact not in self.banned:
                out.append(fact)
        return out

    def _pairs(self, rng: np.random.Generator, picture: tuple[str, str], k: int) -> list[tuple[str, str]]:
        """``k`` distinct (subject, object) pairs of ``picture``: subject != object, and
        <subject, picture[0], object> not banned.

        Draws cells of the subjects x objects grid without replacement, never listing the grid:
        enough of them that ``k`` are left once the cells of a shape with itself (at most one per
        object) and the banned ones are dropped."""
        if k == 0:
            return []
        word, objects = picture[0], self.objects[picture]
        grid = len(LSC_SUBJECTS) * len(objects)
        cells = rng.choice(grid, min(grid, k + len(objects) + self.banned_pics[word]), replace=False)
        object_index = np.array([_SUBJECT_INDEX[o] for o in objects])  # (len(objects),) as subject indices
        s_idx, o_pos = np.divmod(cells, len(objects))
        cells = cells[s_idx != object_index[o_pos]]
        facts = self._kept(cells, lambda c: Fact(LSC_SUBJECTS[c // len(objects)], word, objects[c % len(objects)]), k)
        return [(f.subject, f.object) for f in facts]  # type: ignore[misc]


def _even(total: int, caps: list[int]) -> list[int]:
    """``total`` shared out as evenly as ``caps`` allow (the first parts take the remainder)."""
    return allocate(total, (1.0,) * len(caps), tuple(caps), minimum=0)
