"""ShardedFactIndex against one flat FactIndex, and chunked evaluation against unchunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tied_unit_rows
from factlearn.data.splits import Task
from factlearn.evaluate import evaluate_tasks
from factlearn.facts import Fact, FactTable
from factlearn.model import Vocabulary, create_model
from factlearn.retrieval.index import FactIndex
from factlearn.retrieval.sharded import ShardedFactIndex


def with_ties(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) random rows, a quarter of them copies of others: exact ties across shards."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[rng.choice(n, n // 4, replace=False)] = x[rng.integers(0, n, n // 4)]
    return x


def add_in_chunks(index: ShardedFactIndex, x: np.ndarray, ids: np.ndarray, pieces: int) -> None:
    for part in np.array_split(np.arange(len(x)), pieces):
        index.add(x[part], ids[part])


@pytest.mark.parametrize("seed", range(4))
def test_sharded_search_equals_flat_search_exactly(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(200, 900)), 24
    x = with_ties(rng, n, d)
    ids = rng.permutation(n) + 1000  # the caller's ids, in no particular order
    queries = np.concatenate([x[rng.integers(0, n, 30)], rng.standard_normal((40, d)).astype(np.float32)])
    for k in (1, 7, 40, n + 5):  # k beyond a shard, and beyond every fact
        want = FactIndex(x, ids).search(queries, k)
        for shard_size, pieces in ((n // 3 + 1, 5), (97, 1), (n, 7), (1, 3)):
            index = ShardedFactIndex(d, shard_size=shard_size)
            add_in_chunks(index, x, ids, pieces)
            got = index.search(queries, k)
            assert len(index) == n and len(index.shards) == -(-n // shard_size)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])


def test_ties_go_to_the_row_added_first_across_shards():
    # Unit vectors with entries in {0, +-0.5}: every score is exact, and many are equal.
    rng = np.random.default_rng(0)
    x = tied_unit_rows(rng)
    queries = x[rng.integers(0, 300, 50)]
    index = ShardedFactIndex(16, shard_size=64)
    add_in_chunks(index, x, np.arange(300), 4)
    scores, rows = index.search(queries, 25)
    brute = queries @ x.T  # exact in float32
    for q in range(len(queries)):
        order = np.argsort(-brute[q], kind="stable")[:25]  # ties by ascending row
        np.testing.assert_array_equal(rows[q], order)
        np.testing.assert_array_equal(scores[q], brute[q, order])


@pytest.mark.parametrize("kind, options", [("hnsw", {"M": 8}), ("ivf", {"nlist": 2, "nprobe": 2})])
def test_approximate_shards_that_probe_everything_find_the_exact_top_k(kind, options):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    index = ShardedFactIndex(16, kind, shard_size=150, **options)
    add_in_chunks(index, x, np.arange(400), 3)
    want = FactIndex(x).search(q, 10)
    got = index.search(q, 10)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_bad_input_is_named():
    index = ShardedFactIndex(8, shard_size=4)
    with pytest.raises(ValueError, match="empty"):
        index.search(np.ones((1, 8)), 1)
    with pytest.raises(ValueError, match=r"expected shape \(n, 8\)"):
        index.add(np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match="shard_size"):
        ShardedFactIndex(8, shard_size=0)


# --- chunked evaluation ------------------------------------------------------------------------

FACTS = FactTable([
    Fact("star"), Fact("circle"), Fact("cross"), Fact("star", "red"), Fact("star", "blue"),
    Fact("circle", "red"), Fact("star", "left of", "circle"), Fact("star", "red", "circle"),
    Fact("circle", "above", "star"), Fact("cross", "inside", "circle"),
])
TASKS = [Task("B1", [0, 3, 6, 8]), Task("B2", [1, 2, 4, 5, 7, 9])]


@pytest.mark.parametrize("protocol, index_kind", [("standard", "flat"), ("generalized", "flat"),
                                                  ("generalized", "hnsw")])
def test_chunked_evaluation_gives_the_same_metrics(protocol, index_kind, tiny_model_config):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = create_model(cfg, Vocabulary(FACTS.words())).eval()
    rng = np.random.default_rng(0)
    fact_ids = rng.integers(len(FACTS), size=70)
    images = torch.from_numpy(rng.integers(0, 256, size=(70, 3, 32, 32), dtype=np.uint8))
    whole = evaluate_tasks(model, FACTS, TASKS, images, fact_ids, 1, protocol, batch_size=8, index_kind=index_kind)
    for chunk in (1, 3, 16):  # also chunks of facts, and of candidates added to the index
        got = evaluate_tasks(model, FACTS, TASKS, images, fact_ids, 1, protocol, batch_size=8,
                             index_kind=index_kind, chunk=chunk)
        assert got == whole
