"""Exact cosine fact search with torch: a matmul and a top-k, chunk by chunk, on any torch device.

faiss-cpu (the build factlearn installs) cannot search on a GPU; torch can. :class:`TorchFlatSearch`
is the exact search of a flat :class:`~factlearn.retrieval.index.FactIndex` done with torch, so a
machine with a GPU and faiss-cpu still searches on the GPU (:mod:`factlearn.retrieval.sharded`
picks it there for flat shards).

Same contract as ``FactIndex(kind="flat")``: rows are normalised by the same function
(:func:`~factlearn.retrieval.index.normalised_rows`), the score is their inner product, and facts
with equal scores are ranked by ascending row.

How: per (query chunk, fact chunk) block, a matmul and a top-k pick the candidates; their scores
are then computed again as products and a pairwise sum in a fixed order (:func:`_scores`). A
matmul rounds a row's score by where the row sits in the block, so duplicate facts would not tie;
the second scores are a function of the two vectors alone, the same bits anywhere and on any
device. The candidates are every fact within the matmul's rounding bound of the k-th score
(:func:`_selection_margin`), so the top k by the second scores is exact. They differ from FAISS's
scores by float rounding only (about 1e-7): ids are FAISS's unless two different facts score
within that of each other.

Memory: the facts live on the device whole; a search holds one (query chunk, fact chunk) block of
scores at a time, ``query_chunk * fact_chunk * 4`` bytes (512 MiB with the defaults), plus the
candidates' products (at most 128 MiB) and the running top k of the query chunk.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .index import normalised_rows

logger = logging.getLogger(__name__)

QUERY_CHUNK = 2048  # queries scored at once
FACT_CHUNK = 1 << 16  # facts scored at once
_SCORE_ELEMENTS = 1 << 25  # products held at once by _scores (128 MiB of float32)


class TorchFlatSearch:
    """Exact cosine nearest-fact search with torch (normalised inner product, ties to the lower row).

    Args:
        embeddings: (F, D) fact embeddings; copied, cast to float32 and L2-normalised as
            FactIndex does (zero rows stay zero and score 0 against every query).
        fact_ids: (F,) the caller's id of each row; default ``arange(F)``.
        device: where the facts live and the search runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        query_chunk: queries scored at once.
        fact_chunk: facts scored at once.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        fact_ids: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        query_chunk: int = QUERY_CHUNK,
        fact_chunk: int = FACT_CHUNK,
    ):
        for name, value in (("query_chunk", query_chunk), ("fact_chunk", fact_chunk)):
            if value < 1:
                raise ValueError(f"{name}: expected a positive number of rows, got {value}")
        x = normalised_rows(embeddings, "embeddings")  # (F, D), FactIndex's normalisation
        if len(x) == 0:
            raise ValueError("embeddings: expected at least one fact, got shape (0, D)")
        ids = np.arange(len(x), dtype=np.int64) if fact_ids is None else np.asarray(fact_ids, dtype=np.int64)
        if ids.shape != (len(x),):
            raise ValueError(f"fact_ids: expected shape ({len(x)},), got {ids.shape}")
        self.device = torch.device(device)
        self.facts = torch.from_numpy(x).to(self.device)  # (F, D) float32
        self.fact_ids = ids
        self.query_chunk, self.fact_chunk = query_chunk, fact_chunk
        logger.debug("torch flat search over %d facts of dim %d on %s", len(x), x.shape[1], self.device)

    def __len__(self) -> int:
        return int(self.facts.shape[0])

    @property
    def dim(self) -> int:
        """Width of the indexed vectors."""
        return int(self.facts.shape[1])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k facts nearest each query by cosine similarity: the arguments, results and tie order
        of :meth:`factlearn.retrieval.index.FactIndex.search` (exact, so never an id of -1)."""
        if k < 1:
            raise ValueError(f"k: expected a positive number of neighbours, got {k}")
        q = normalised_rows(queries, "queries")  # (Q, D)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries: expected shape (Q, {self.dim}), got {q.shape}")
        k = min(k, len(self))
        scores = np.empty((len(q), k), dtype=np.float32)
        rows = np.empty((len(q), k), dtype=np.int64)
        with torch.no_grad():
            for lo in range(0, len(q), self.query_chunk):
                qc = torch.from_numpy(q[lo : lo + self.query_chunk]).to(self.device)  # (Qc, D)
                s, r = self._search_chunk(qc, k)
                scores[lo : lo + len(qc)] = s.cpu().numpy()
                rows[lo : lo + len(qc)] = r.cpu().numpy()
        return scores, self.fact_ids[rows]

    def _search_chunk(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top k of the (Qc, D) queries over every fact chunk, ordered by (-score, row)."""
        margin = _selection_margin(self.dim)
        best_s = q.new_empty((len(q), 0))  # (Qc, <= k) the running top k, ordered by (-score, row)
        best_r = torch.empty((len(q), 0), dtype=torch.int64, device=q.device)
        for lo in range(0, len(self), self.fact_chunk):
            facts = self.facts[lo : lo + self.fact_chunk]  # (Fc, D)
            kc = min(k, len(facts))
            rows = _candidates(q @ facts.T, kc, margin)  # (Qc, c) rows of the chunk, c >= kc
            s, r = _ordered(_scores(q, facts, rows), rows + lo, kc)
            best_s, best_r = _ordered(torch.cat([best_s, s], 1), torch.cat([best_r, r], 1), k)
        return best_s, best_r


def _selection_margin(dim: int) -> float:
    """How far below the k-th matmul score a fact can still be in the top k by :func:`_scores`.

    For unit rows, a float32 dot product summed in any order is within about ``dim * u`` of the
    exact one (u = 2**-24; Higham, Accuracy and Stability of Numerical Algorithms, section 3.1,
    with Cauchy-Schwarz), plus 2 u' where the matmul rounds its inputs to a shorter mantissa u'
    (TF32 or bf16, as torch's float32 matmul precision allows). So the two scores of a fact differ
    by at most d = 2 (dim u + u'), and a fact whose matmul score is more than 2 d below the k-th
    cannot be in the top k. Doubled again for slack (norms of 1 + a few u)."""
    shorter = {"highest": 0.0, "high": 2.0**-11}.get(torch.get_float32_matmul_precision(), 2.0**-8)
    return 8 * (dim * 2.0**-24 + shorter)


def _candidates(block: torch.Tensor, k: int, margin: float) -> torch.Tensor:
    """(Qc, c) columns of the (Qc, Fc) matmul scores ``block`` that hold every row's top k by the
    exact-order scores: each row's columns within ``margin`` of its k-th largest value, and a few
    more (the same c for every row; the extra ones cost only their scoring)."""
    qc, fc = block.shape
    c = min(fc, 2 * k + 8)  # near-ties are rare: usually one top-k covers them
    while c < fc:
        values, columns = torch.topk(block, c, dim=1)  # (Qc, c), values descending
        # Every column left out scores at most values[:, -1]: covered once that is below the margin.
        if bool((values[:, -1] < values[:, k - 1] - margin).all()):
            return columns
        c = min(fc, 2 * c)
    return torch.arange(fc, device=block.device).expand(qc, fc)


def _scores(q: torch.Tensor, facts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Inner products of the (Qc, D) queries with their (Qc, c) ``rows`` of ``facts``, (Qc, c).

    Computed as products and then a pairwise sum in a fixed order, elementwise operations only:
    the result is a function of the two vectors alone, the same bits wherever a fact sits (a
    matmul rounds equal rows differently by their place in the block, so duplicate facts would not
    tie) and on every device. A few queries at a time, to hold (n, c, D) within _SCORE_ELEMENTS."""
    n = max(1, _SCORE_ELEMENTS // max(1, rows.shape[1] * q.shape[1]))
    out = []
    for lo in range(0, len(q), n):
        p = q[lo : lo + n, None, :] * facts[rows[lo : lo + n]]  # (n, c, D)
        width = 1 << (p.shape[-1] - 1).bit_length()
        p = torch.nn.functional.pad(p, (0, width - p.shape[-1]))  # zeros: adding them is exact
        while p.shape[-1] > 1:
            half = p.shape[-1] // 2
            p = p[..., :half] + p[..., half:]
        out.append(p[..., 0])
    return torch.cat(out)


def _ordered(s: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of (scores, rows) (Qc, n) in (-score, row) order: sort by row, then stably by score."""
    by_row = torch.sort(r, dim=1).indices
    s, r = torch.gather(s, 1, by_row), torch.gather(r, 1, by_row)
    by_score = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(s, 1, by_score), torch.gather(r, 1, by_score)
