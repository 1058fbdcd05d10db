"""FactIndex and retrieval metrics against brute-force references written independently here."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from factlearn.errors import UserError
from factlearn.facts import Fact, matches
from factlearn.retrieval.index import FactIndex
from factlearn.retrieval.metrics import (
    correct_matrix,
    rank_metrics_from_topk,
    recognition_metrics,
    retrieval_ap,
    sequence_metrics,
)

KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------
# Slow, obvious references: one Python loop per image (or fact) over a full stable argsort.


def ref_recognition(scores, correct, ks=KS):
    hits = {k: 0 for k in ks}
    rr = 0.0
    for n in range(len(scores)):
        order = np.argsort(-scores[n], kind="stable")
        g = int(correct[n].sum())
        places = [p for p, c in enumerate(order) if correct[n, c]]
        for k in ks:
            hits[k] += any(p < k + g - 1 for p in places)
        if places:
            rr += 1.0 / (places[0] + 1)
    out = {f"top{k}": hits[k] / len(scores) for k in ks}
    out["mrr"] = rr / len(scores)
    out["n"] = len(scores)
    return out


def ref_ap(scores, correct, at=100):
    aps, aps_at = [], []
    for f in range(scores.shape[1]):
        order = np.argsort(-scores[:, f], kind="stable")
        n_pos = int(correct[:, f].sum())
        if n_pos == 0:
            aps.append(math.nan)
            aps_at.append(math.nan)
            continue
        found, total, total_at = 0, 0.0, 0.0
        for place, image in enumerate(order):
            if correct[image, f]:
                found += 1
                total += found / (place + 1)
                if place < at:
                    total_at += found / (place + 1)
        aps.append(total / n_pos)
        aps_at.append(total_at / min(n_pos, at))
    return np.array(aps), np.array(aps_at)


def normalised(x):
    x = np.array(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


# ---------------------------------------------------------------------------------------------
# A small world of wildcard facts sharing subjects and predicates.


def make_world(seed, n_images=300, dim=16):
    rng = np.random.default_rng(seed)
    subjects = [f"s{i}" for i in range(5)]
    predicates = [f"p{i}" for i in range(3)]
    objects = [f"o{i}" for i in range(3)]
    candidates = [Fact(s) for s in subjects[:4]]
    candidates += [Fact(s, p) for s in subjects[:4] for p in predicates[:2]]
    candidates += [Fact(s, p, o) for s in subjects[:4] for p in predicates[:2] for o in objects[:2]]
    # Images: mostly candidate facts, plus facts with no correct candidate (g = 0).
    unseen = [Fact("s4"), Fact("s0", "p2"), Fact("s1", "p0", "o2")]
    pool = candidates + unseen
    image_facts = [pool[i] for i in rng.integers(len(pool), size=n_images)]
    correct = correct_matrix(image_facts, candidates)
    images = normalised(rng.normal(size=(n_images, dim)))
    facts = normalised(rng.normal(size=(len(candidates), dim)))
    scores = images @ facts.T  # (N, F)
    return image_facts, candidates, correct, scores


def test_correct_matrix_is_matches():
    image_facts, candidates, correct, _ = make_world(0, n_images=50)
    expected = np.array([[matches(i, c) for c in candidates] for i in image_facts])
    np.testing.assert_array_equal(correct, expected)
    assert correct.dtype == bool
    assert (correct.sum(axis=1) == 0).any() and (correct.sum(axis=1) > 1).any()  # both cases occur


# ---------------------------------------------------------------------------------------------
# Fact recognition


def test_recognition_hand_example():
    candidates = [Fact("dog"), Fact("man", "riding", "horse"), Fact("man", "smiling")]
    images = [Fact("man", "smiling"), Fact("dog")]
    correct = correct_matrix(images, candidates)
    scores = np.array([[0.9, 0.5, 0.7], [0.8, 0.1, 0.2]])
    # Image 0 ranks dog, smiling, riding: first correct at rank 2. Image 1: dog at rank 1.
    m = recognition_metrics(scores, correct)
    assert m == {"top1": 0.5, "top5": 1.0, "top10": 1.0, "mrr": 0.75, "n": 2}


def test_recognition_wildcard_widens_topk():
    candidates = [Fact("dog"), Fact("man", "riding", "horse"), Fact("man", "smiling")]
    correct = correct_matrix([Fact("man")], candidates)  # both <man, ...> facts: g = 2
    scores = np.array([[0.9, 0.5, 0.1]])  # ranking dog, riding, smiling
    m = recognition_metrics(scores, correct, ks=(1,))
    assert m["top1"] == 1.0  # top-1 accepts places 1 and 2 (k + g - 1 = 2)
    assert m["mrr"] == 0.5
    # The same ranking for an exact fact (g = 1) is a top-1 miss.
    exact = correct_matrix([Fact("man", "riding", "horse")], candidates)
    assert recognition_metrics(scores, exact, ks=(1,))["top1"] == 0.0


def test_recognition_ties_and_no_correct_candidate():
    candidates = [Fact("dog"), Fact("man", "riding", "horse"), Fact("man", "smiling")]
    images = [Fact("man", "smiling"), Fact("cat")]  # <cat> has no correct candidate
    correct = correct_matrix(images, candidates)
    scores = np.full((2, 3), 0.5)  # all tied: stable order 0, 1, 2
    m = recognition_metrics(scores, correct, ks=(1, 3))
    assert m["top1"] == 0.0 and m["top3"] == 0.5
    assert m["mrr"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["n"] == 2


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_recognition_matches_bruteforce(seed, quantise):
    _, _, correct, scores = make_world(seed)
    if quantise:
        scores = np.round(scores * 4) / 4  # many exact ties
    m = recognition_metrics(scores, correct)
    ref = ref_recognition(scores, correct)
    assert m.keys() == ref.keys()
    for key in ref:
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
        assert type(m[key]) is type(ref[key])


@pytest.mark.parametrize("quantise", [False, True])
def test_rank_metrics_from_topk_equals_dense(quantise):
    _, _, correct, scores = make_world(3)
    if quantise:
        scores = np.round(scores * 4) / 4
    dense = recognition_metrics(scores, correct)
    order = np.argsort(-scores, axis=1, kind="stable")
    k_needed = max(KS) + int(correct.sum(axis=1).max()) - 1
    # Full lists: everything exact, MRR included.
    assert rank_metrics_from_topk(order, correct) == pytest.approx(dense, abs=1e-12)
    # K = max(k) + max(g) - 1 suffices for top-k.
    short = rank_metrics_from_topk(order[:, :k_needed], correct)
    for k in KS:
        assert short[f"top{k}"] == pytest.approx(dense[f"top{k}"], abs=1e-12)
    assert short["mrr"] <= dense["mrr"] + 1e-12  # lower bound when truncated


def test_rank_metrics_from_index_search_equals_dense():
    _, candidates, correct, _ = make_world(4)
    rng = np.random.default_rng(4)
    images = normalised(rng.normal(size=(len(correct), 16)))
    facts = normalised(rng.normal(size=(len(candidates), 16)))
    _, ids = FactIndex(facts).search(images, len(candidates))
    assert rank_metrics_from_topk(ids, correct) == pytest.approx(
        recognition_metrics(images @ facts.T, correct), abs=1e-12
    )


def test_rank_metrics_ignores_empty_places():
    correct = np.array([[False, True, False]])
    ids = np.array([[-1, 0, 1]])
    m = rank_metrics_from_topk(ids, correct, ks=(2, 3))  # the correct id is at place 3
    assert m["top2"] == 0.0 and m["top3"] == 1.0 and m["mrr"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# Image retrieval


def test_retrieval_ap_hand_example():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    correct = np.array([[True], [False], [True], [False]])
    assert retrieval_ap(scores, correct)["map"] == pytest.approx((1 + 2 / 3) / 2)
    assert retrieval_ap(scores, correct, at=1)["map@1"] == 1.0
    assert retrieval_ap(scores, correct, at=2)["map@2"] == 0.5
    assert "map@100" not in retrieval_ap(scores, correct, at=None)


@pytest.mark.parametrize("quantise", [False, True])
def test_retrieval_ap_matches_bruteforce(quantise):
    _, _, correct, scores = make_world(5, n_images=400)
    if quantise:
        scores = np.round(scores * 4) / 4
    at = 30
    out = retrieval_ap(scores, correct, at=at)
    ap, ap_at = ref_ap(scores, correct, at=at)
    np.testing.assert_allclose(out["ap"], ap, atol=1e-12)
    np.testing.assert_allclose(out[f"ap@{at}"], ap_at, atol=1e-12)
    assert out["n"] == int((~np.isnan(ap)).sum())
    assert out["map"] == pytest.approx(np.nanmean(ap), abs=1e-12)
    assert out[f"map@{at}"] == pytest.approx(np.nanmean(ap_at), abs=1e-12)
    assert isinstance(out["map"], float)


def test_retrieval_ap_skips_facts_without_positive():
    scores = np.array([[0.9, 0.1], [0.8, 0.2]])
    correct = np.array([[False, False], [True, False]])
    out = retrieval_ap(scores, correct)
    assert out["n"] == 1 and out["map"] == 0.5 and math.isnan(out["ap"][1])


def test_retrieval_ap_agrees_with_sklearn_without_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    _, _, correct, scores = make_world(6)
    out = retrieval_ap(scores, correct, at=None)
    for f in np.flatnonzero(correct.any(axis=0)):
        assert out["ap"][f] == pytest.approx(sklearn.average_precision_score(correct[:, f], scores[:, f]))


# ---------------------------------------------------------------------------------------------
# Sequence metrics


def test_sequence_metrics_hand_matrix():
    acc = [[0.9], [0.95, 0.8], [0.6, 0.75, 0.85]]
    m = sequence_metrics(acc)
    assert m["average"] == pytest.approx((0.6 + 0.75 + 0.85) / 3)
    assert m["forgetting"] == pytest.approx([0.95 - 0.6, 0.8 - 0.75])  # max over earlier rows
    assert m["mean_forgetting"] == pytest.approx((0.35 + 0.05) / 2)
    assert m["bwt"] == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)  # against the diagonal
    assert m["tasks"] == 3
    # Entries for tasks not yet trained are ignored.
    full = [[0.9, 0.1, 0.1], [0.95, 0.8, 0.2], [0.6, 0.75, 0.85]]
    assert sequence_metrics(full) == m


def test_sequence_metrics_edge_cases():
    one = sequence_metrics([[0.7]])
    assert one["average"] == 0.7 and one["forgetting"] == [] and math.isnan(one["bwt"])
    with pytest.raises(ValueError, match="row 1"):
        sequence_metrics([[0.9], []])
    with pytest.raises(ValueError):
        sequence_metrics([])


# ---------------------------------------------------------------------------------------------
# FactIndex


def brute_topk(queries, facts, k):
    q, e = normalised(queries), normalised(facts)
    scores = q @ e.T  # (Q, F) float32, from the same normalised arrays as the index
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_flat_index_equals_bruteforce():
    rng = np.random.default_rng(0)
    facts = rng.normal(size=(500, 32)).astype(np.float32)
    queries = rng.normal(size=(100, 32)).astype(np.float32)
    kept = queries.copy()
    scores, ids = FactIndex(facts).search(queries, 10)
    ref_scores, ref_ids = brute_topk(queries, facts, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(queries, kept)  # caller's array untouched


@pytest.mark.parametrize("k", [1, 10, 37, 300])
def test_flat_index_ties_are_stable_by_row(k):
    # Rows with four entries of +-1 normalise to +-0.5 exactly, so every score is a sum of
    # +-0.25 and exact in float32: lots of exact ties whatever the summation order.
    rng = np.random.default_rng(1)

    def quantised(n, dim=16):
        x = np.zeros((n, dim), dtype=np.float32)
        for row in x:
            row[rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        return x

    facts, queries = quantised(300), quantised(60)
    scores, ids = FactIndex(facts).search(queries, k)
    ref_scores, ref_ids = brute_topk(queries, facts, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_flat_index_mixed_tied_and_untied_queries():
    # One search where some queries meet exact ties (quantised as above) and others do not
    # (continuous): the untied keep FAISS's order, the tied are re-sorted by row.
    rng = np.random.default_rng(4)
    facts = np.zeros((200, 16), dtype=np.float32)
    for row in facts:
        row[rng.choice(16, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    queries = np.concatenate([facts[rng.choice(200, 20)], rng.standard_normal((20, 16)).astype(np.float32)])
    queries = queries[rng.permutation(40)]
    for k in (1, 3, 10):
        scores, ids = FactIndex(facts).search(queries, k)
        ref_scores, ref_ids = brute_topk(queries, facts, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_fact_ids_clamping_and_zero_vectors():
    rng = np.random.default_rng(2)
    facts = rng.normal(size=(5, 8)).astype(np.float32)
    facts[3] = 0.0
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    queries[1] = 0.0
    fact_ids = np.array([40, 10, 30, 20, 0])
    scores, ids = FactIndex(facts, fact_ids=fact_ids).search(queries, 50)  # k clamped to 5
    assert ids.shape == (3, 5) and not np.isnan(scores).any()
    ref_scores, ref_rows = brute_topk(queries, facts, 5)
    np.testing.assert_array_equal(ids, fact_ids[ref_rows])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    np.testing.assert_array_equal(ids[1], fact_ids)  # zero query: all scores 0, row order
    assert (scores[1] == 0).all()


def recall_at(ids, ref_ids):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, ref_ids)])


# Isotropic random vectors have no cluster structure, so a query's neighbours spread over most
# inverted lists: IVF needs a large nprobe / nlist here (about 0.66 recall at 16 of 64 lists).
@pytest.mark.parametrize(
    "kind, options",
    [("hnsw", {"M": 32, "ef_construction": 200, "ef_search": 128}), ("ivf", {"nlist": 32, "nprobe": 28})],
)
def test_approximate_index_recall(kind, options):
    rng = np.random.default_rng(3)
    facts = rng.normal(size=(5000, 64)).astype(np.float32)
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    exact = FactIndex(facts).search(queries, 10)[1]
    approx = FactIndex(facts, kind=kind, **options).search(queries, 10)[1]
    assert recall_at(approx, exact) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(4)
    facts = rng.normal(size=(400, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    index = FactIndex(facts, fact_ids=np.arange(400) * 3, kind=kind, **({"nlist": 8} if kind == "ivf" else {}))
    path = tmp_path / "facts.faiss"
    index.save(path)
    loaded = FactIndex.load(path)
    assert (loaded.kind, loaded.options) == (index.kind, index.options)
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts.faiss", "facts.faiss.json"]  # no temp files


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "facts.faiss"
    with pytest.raises(UserError, match="not found.*facts.faiss"):
        FactIndex.load(path)
    FactIndex(np.eye(4, dtype=np.float32)).save(path)
    sidecar = tmp_path / "facts.faiss.json"
    good_meta = sidecar.read_text()
    path.write_bytes(b"not a faiss index")
    with pytest.raises(UserError, match="corrupt index file.*facts.faiss"):
        FactIndex.load(path)
    FactIndex(np.eye(4, dtype=np.float32)).save(path)
    sidecar.write_text("{not json")
    with pytest.raises(UserError, match="facts.faiss.json"):
        FactIndex.load(path)
    sidecar.write_text(good_meta.replace("[0, 1, 2, 3]", "[0, 1, 2]"))
    with pytest.raises(UserError, match="does not match"):
        FactIndex.load(path)


def test_bad_kind_options_and_shapes():
    facts = np.eye(4, dtype=np.float32)
    with pytest.raises(UserError, match="kind 'annoy'"):
        FactIndex(facts, kind="annoy")
    with pytest.raises(UserError, match="'nprobe'"):
        FactIndex(facts, kind="hnsw", nprobe=4)
    with pytest.raises(UserError, match="'M'"):
        FactIndex(facts, kind="hnsw", M=0)
    with pytest.raises(ValueError, match=r"\(Q, 4\)"):
        FactIndex(facts).search(np.ones((2, 3), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="fact_ids"):
        FactIndex(facts, fact_ids=np.arange(3))
