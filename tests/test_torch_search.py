"""TorchFlatSearch (exact search with torch, for GPUs without faiss-gpu) against FAISS's flat index.

On the CPU here (torch device "cpu"); the tests marked ``cuda`` repeat the comparison on a GPU and
are skipped without one (``pytest -m cuda``, run by scripts/gpu_check.sh).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tied_unit_rows
from factlearn.errors import UserError
from factlearn.retrieval import sharded
from factlearn.retrieval.index import FactIndex
from factlearn.retrieval.sharded import ShardedFactIndex
from factlearn.retrieval.torch_search import TorchFlatSearch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def normalised_with_duplicates(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) random unit rows, a quarter of them copies of others: exact ties."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[rng.choice(n, n // 4, replace=False)] = x[rng.integers(0, n, n // 4)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queries_for(rng: np.random.Generator, x: np.ndarray, m: int) -> np.ndarray:
    """m queries that are facts (their duplicates tie at the top) and m random ones."""
    return np.concatenate([x[rng.integers(0, len(x), m)], rng.standard_normal((m, x.shape[1])).astype(np.float32)])


@pytest.mark.parametrize("seed", range(3))
def test_same_ids_and_scores_as_faiss_flat(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(300, 600)), int(rng.choice([16, 32, 64]))
    x = normalised_with_duplicates(rng, n, d)
    queries = queries_for(rng, x, 20)
    ids = rng.permutation(n) + 500  # the caller's ids, in no particular order
    for k in (1, 7, 40, 150):  # k beyond a fact chunk of 7 or 64, and beyond a query chunk
        want_s, want_i = FactIndex(x, ids).search(queries, k)
        for fact_chunk, query_chunk in ((n, 1000), (7, 3), (64, 17), (1, 40)):
            got_s, got_i = TorchFlatSearch(x, ids, "cpu", query_chunk, fact_chunk).search(queries, k)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)
            assert got_s.dtype == np.float32 and got_i.dtype == np.int64 and got_s.shape == (len(queries), k)


def test_ties_between_different_facts_go_to_the_lower_row():
    # Unit rows with entries in {0, +-0.5}: every score is exact in float32, and many different
    # facts tie, so the order among them is the rule's alone.
    rng = np.random.default_rng(0)
    x = tied_unit_rows(rng)
    queries = x[rng.integers(0, 300, 40)]
    brute = queries @ x.T  # exact
    want = np.argsort(-brute, axis=1, kind="stable")[:, :60]  # ties by ascending row
    for fact_chunk in (300, 13, 1):
        scores, rows = TorchFlatSearch(x, fact_chunk=fact_chunk, query_chunk=7).search(queries, 60)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(scores, np.take_along_axis(brute, want, axis=1))


def test_a_fact_scores_the_same_bits_wherever_it_sits():
    # A matmul rounds equal rows differently by their place in the block; the scores returned
    # must not, or duplicates would not tie.
    rng = np.random.default_rng(1)
    base = rng.standard_normal((1, 192)).astype(np.float32)
    x = np.concatenate([rng.standard_normal((999, 192)).astype(np.float32), base])
    x[rng.choice(999, 200, replace=False)] = base  # 201 copies, at every place of the blocks
    q = base + 0.5 * rng.standard_normal((30, 192)).astype(np.float32)
    for fact_chunk in (1000, 33, 8):
        scores, rows = TorchFlatSearch(x, fact_chunk=fact_chunk).search(q, 201)
        copies = np.flatnonzero((x == base).all(1))
        np.testing.assert_array_equal(rows, np.broadcast_to(copies, rows.shape))  # every copy, by row
        assert (scores == scores[:, :1]).all()


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_a_coarser_matmul_precision_still_gives_the_exact_top_k(precision):
    # TF32 or bf16 matmuls (where torch uses them) pick the candidates; a wider margin keeps them exact.
    rng = np.random.default_rng(4)
    x = normalised_with_duplicates(rng, 400, 32)
    queries = queries_for(rng, x, 20)
    want = FactIndex(x).search(queries, 25)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        got = TorchFlatSearch(x, fact_chunk=50).search(queries, 25)
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)


def test_k_is_clamped_and_zero_rows_score_zero():
    x = np.eye(4, 8, dtype=np.float32)
    x[2] = 0
    scores, ids = TorchFlatSearch(x, fact_chunk=3).search(np.ones((2, 8)), 10)
    assert ids.shape == (2, 4)
    np.testing.assert_array_equal(ids[0], [0, 1, 3, 2])
    np.testing.assert_allclose(scores[0], [8**-0.5] * 3 + [0], rtol=1e-6)


def test_bad_input_is_named():
    x = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="at least one fact"):
        TorchFlatSearch(np.ones((0, 4)))
    with pytest.raises(ValueError, match="fact_ids"):
        TorchFlatSearch(x, np.arange(2))
    with pytest.raises(ValueError, match="fact_chunk"):
        TorchFlatSearch(x, fact_chunk=0)
    with pytest.raises(ValueError, match=r"shape \(Q, 4\)"):
        TorchFlatSearch(x).search(np.ones((1, 5)), 1)
    with pytest.raises(ValueError, match="k: expected"):
        TorchFlatSearch(x).search(np.ones((1, 4)), 0)
    with pytest.raises(ValueError, match="NaN"):
        TorchFlatSearch(x).search(np.full((1, 4), np.nan), 1)


# --- ShardedFactIndex: when torch searches, and the same results when it does ----------------------


def test_sharded_index_on_a_torch_device_equals_faiss_shards():
    rng = np.random.default_rng(2)
    x = normalised_with_duplicates(rng, 700, 24)
    ids = rng.permutation(700)
    queries = queries_for(rng, x, 25)
    for k in (1, 30, 250):  # k beyond a shard
        want = ShardedFactIndex(24, shard_size=200, gpu=False)
        got = ShardedFactIndex(24, shard_size=200, device="cpu")
        for part in np.array_split(np.arange(700), 3):
            want.add(x[part], ids[part])
            got.add(x[part], ids[part])
        want_s, want_i = want.search(queries, k)
        got_s, got_i = got.search(queries, k)
        assert all(isinstance(s, TorchFlatSearch) for s in got.shards) and len(got.shards) == 4
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)


def test_torch_is_chosen_for_flat_search_only_where_faiss_cannot_use_the_gpus(monkeypatch):
    # No GPU here: nothing changes by default.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ShardedFactIndex(8).devices == []
    # As on a machine with two GPUs and faiss-cpu: flat shards go to both, round-robin.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(sharded, "gpu_count", lambda: 0)
    assert ShardedFactIndex(8).devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert ShardedFactIndex(8, "hnsw").devices == []  # approximate kinds stay with FAISS
    assert ShardedFactIndex(8, gpu=False).devices == []
    monkeypatch.setattr(sharded, "gpu_count", lambda: 2)  # faiss-gpu: FAISS keeps the GPUs
    assert ShardedFactIndex(8).devices == [] and ShardedFactIndex(8).gpus == 2
    assert ShardedFactIndex(8, device="cpu").devices == [torch.device("cpu")]


def test_bad_device_requests_are_named(monkeypatch):
    with pytest.raises(ValueError, match="kind 'flat' only"):
        ShardedFactIndex(8, "ivf", device="cpu")
    with pytest.raises(UserError, match="unknown option 'nprobe'"):
        ShardedFactIndex(8, device="cpu", nprobe=3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        ShardedFactIndex(8, device="cuda")


# --- on a GPU (pytest -m cuda) ----------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("seed", range(2))
def test_cuda_search_equals_faiss_flat_and_the_cpu_search(seed):
    rng = np.random.default_rng(seed)
    x = normalised_with_duplicates(rng, 5000, 192)
    queries = queries_for(rng, x, 300)
    before = torch.get_float32_matmul_precision()
    for k in (1, 10, 300):
        want_s, want_i = FactIndex(x).search(queries, k)
        cpu_s, cpu_i = TorchFlatSearch(x, device="cpu", fact_chunk=1024).search(queries, k)
        for fact_chunk, query_chunk, precision in ((1 << 16, 2048, "highest"), (1000, 128, "high"), (37, 5, "highest")):
            torch.set_float32_matmul_precision(precision)  # "high": TF32 matmuls pick the candidates
            try:
                got_s, got_i = TorchFlatSearch(x, None, "cuda", query_chunk, fact_chunk).search(queries, k)
            finally:
                torch.set_float32_matmul_precision(before)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)
            # products and a fixed-order sum: the same bits as on the CPU
            np.testing.assert_array_equal(got_s, cpu_s)
            np.testing.assert_array_equal(got_i, cpu_i)


@pytest.mark.cuda
@needs_cuda
def test_sharded_index_searches_on_the_gpu_by_default_with_faiss_cpu():
    rng = np.random.default_rng(3)
    x = normalised_with_duplicates(rng, 3000, 64)
    queries = queries_for(rng, x, 100)
    index = ShardedFactIndex.from_chunks(np.array_split(x, 4), 64, shard_size=1000)
    if sharded.gpu_count():
        pytest.skip("this faiss has GPU support: FAISS searches on the GPU")
    assert index.devices and all(s.device.type == "cuda" for s in index.shards)
    want_s, want_i = FactIndex(x).search(queries, 20)
    got_s, got_i = index.search(queries, 20)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)
