"""The wildcard ground truth through integer keys (factlearn.retrieval.truth) equals the slow
reference (correct_matrix, matches() per pair) on random fact tables with wildcards."""

from __future__ import annotations

import numpy as np
import pytest

from factlearn.facts import Fact, FactTable
from factlearn.retrieval.metrics import correct_matrix
from factlearn.retrieval.truth import GroundTruth


def random_table(rng: np.random.Generator, n: int) -> FactTable:
    """Facts over a small vocabulary, so that many share S or (S, P): the wildcard cases."""
    facts = set()
    while len(facts) < n:
        s, p, o = (f"w{rng.integers(6)}" for _ in range(3))
        order = rng.integers(1, 4)
        facts.add(Fact(s) if order == 1 else Fact(s, p) if order == 2 else Fact(s, p, o))
    return FactTable.from_facts(facts)


@pytest.mark.parametrize("seed", range(5))
def test_ground_truth_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    table = random_table(rng, 60)
    images = rng.integers(len(table), size=200)  # image facts, repeated
    cands = np.sort(rng.choice(len(table), size=40, replace=False))  # some image facts are not candidates
    truth = GroundTruth.from_ids(table, images, cands)
    ref = correct_matrix([table[i] for i in images], [table[c] for c in cands])  # (N, C)
    assert np.array_equal(truth.block(slice(None)), ref)
    assert np.array_equal(truth.block(slice(5, 17)), ref[:, 5:17])
    assert np.array_equal(truth.counts(), ref.sum(axis=1))
    ids = rng.integers(-1, len(cands), size=(200, 7))  # search results, -1: empty places
    expected = np.where(ids >= 0, ref[np.arange(200)[:, None], np.maximum(ids, 0)], False)
    assert np.array_equal(truth.at(slice(None), ids), expected)
    rows = np.arange(30, 90)
    assert np.array_equal(truth.at(rows, ids[rows]), expected[rows])
    assert np.array_equal(truth.level + 1, [table[i].order for i in images])


def test_no_candidates_and_no_images():
    table = random_table(np.random.default_rng(0), 10)
    truth = GroundTruth.from_ids(table, [0, 1, 2], [])
    assert truth.counts().tolist() == [0, 0, 0] and truth.block(slice(None)).shape == (3, 0)
    assert GroundTruth.from_ids(table, [], [1, 2]).counts().shape == (0,)
