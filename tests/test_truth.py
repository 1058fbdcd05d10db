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


@pytest.mark.parametrize("seed", range(4))
def test_ap_at_top_equals_the_full_ranking(seed):
    """ap_at_top (first places only) equals retrieval_ap's ap@at, ties included (scores rounded
    onto a coarse grid so that many images tie, also at the cut-off)."""
    from factlearn.retrieval.metrics import ap_at_top, retrieval_ap

    rng = np.random.default_rng(seed)
    n, f = 300, 25
    scores = np.round(rng.normal(size=(n, f)), 1)
    correct = rng.random((n, f)) < 0.1
    correct[:, 0] = False  # a fact without positives: NaN
    for at in (1, 10, 100, 300, 500):
        expected = retrieval_ap(scores, correct, at=at)[f"ap@{at}"]
        got = ap_at_top(scores, correct, at)
        assert np.allclose(got, expected, equal_nan=True, rtol=0, atol=1e-12), at


def test_evaluate_view_above_the_full_ap_size_gives_the_same_map_at_100(monkeypatch):
    """A task with more test images than FULL_AP_MAX_IMAGES reports the same top-k, MRR and
    mAP@100 (from the first places only) and no full mAP."""
    import factlearn.evaluate as ev

    rng = np.random.default_rng(0)
    table = random_table(rng, 50)
    images = rng.integers(len(table), size=400)
    cands = np.arange(len(table))
    emb = rng.normal(size=(len(table), 8)).astype(np.float32)
    img = (emb[images] + rng.normal(size=(400, 8)).astype(np.float32)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    view = ev.TaskView("B1", np.arange(400), images, cands, img, emb)
    small = ev.evaluate_view(view, table, chunk=64)
    monkeypatch.setattr(ev, "FULL_AP_MAX_IMAGES", 100)
    large = ev.evaluate_view(view, table, chunk=64)
    assert np.isnan(large["map"]) and not np.isnan(small["map"])
    assert large["map@100"] == pytest.approx(small["map@100"], abs=1e-12)
    for key in ("top1", "top5", "top10", "mrr", "n"):
        assert large[key] == small[key]
