"""Evaluation metrics of the Sherlock / lifelong fact learning reference code, over numpy arrays.

Conventions shared by every function here:

- ``scores`` is (N, F): row n scores every candidate fact against image n (cosine similarity).
- ``correct`` is (N, F) bool: the wildcard-aware ground truth (:func:`correct_matrix`).
- A ranking sorts by score descending; ties go to the lower index (candidate for fact
  recognition, image for image retrieval), i.e. ``np.argsort(-scores, kind="stable")``.
  :class:`factlearn.retrieval.index.FactIndex` ranks ties the same way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..facts import Fact, matches

# Elements per block of the (rows, F) or (facts, N) temporaries, to bound memory at N ~ 50k.
_BLOCK_ELEMENTS = 1 << 22


def correct_matrix(image_facts: Sequence[Fact], candidates: Sequence[Fact]) -> np.ndarray:
    """Wildcard-aware ground truth: ``out[n, f] = matches(image_facts[n], candidates[f])``.

    Args:
        image_facts: the fact of each of N images.
        candidates: the F candidate facts.

    Returns:
        (N, F) bool array.
    """
    # Images share few distinct facts: evaluate each distinct fact's row once.
    distinct: dict[Fact, int] = {}
    inverse = np.empty(len(image_facts), dtype=np.int64)
    for n, fact in enumerate(image_facts):
        inverse[n] = distinct.setdefault(fact, len(distinct))
    rows = np.array(
        [[matches(fact, c) for c in candidates] for fact in distinct], dtype=bool
    ).reshape(len(distinct), len(candidates))  # (U, F)
    return rows[inverse]


def recognition_metrics(
    scores: np.ndarray, correct: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Fact recognition: rank the candidates for each image; top-k hit ratios and MRR.

    With g correct candidates for an image, top-k counts a hit if any correct candidate is
    within the first k+g-1 places (Sherlock's wildcard rule). MRR averages 1/rank of the first
    correct candidate (rank 1-based). An image with no correct candidate (g = 0) is a miss at
    every k and adds 0 to MRR, but still counts in ``n``.

    Args:
        scores: (N, F) image-by-candidate scores.
        correct: (N, F) bool ground truth.
        ks: the k of each top-k.

    Returns:
        ``{"top1": ..., "top5": ..., "top10": ..., "mrr": ..., "n": N}`` (fractions in [0, 1];
        NaN when N = 0).
    """
    scores, correct = _check_pair(scores, correct)
    n, f = scores.shape
    first = np.empty(n, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(f, 1))
    for lo in range(0, n, block):
        rows = slice(lo, lo + block)
        first[rows] = _first_correct_position(scores[rows], correct[rows])
    return hit_metrics(first, correct.sum(axis=1), ks)


def rank_metrics_from_topk(
    topk_ids: np.ndarray, correct: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """:func:`recognition_metrics` from ranked candidate lists, as an index search returns them.

    Args:
        topk_ids: (N, K) candidate ids (column indices of ``correct``), best first; -1 marks
            an empty place and is never correct.
        correct: (N, F) bool ground truth over all candidates (g is counted over all F, not
            only over the K listed).
        ks: the k of each top-k.

    Returns:
        The dict of :func:`recognition_metrics`. Exactness: top-k equals the full-ranking
        value when K >= max(ks) + max(g) - 1 (no hit can lie beyond K); MRR is exact when
        every image with g > 0 has a correct candidate within its K, otherwise it is a lower
        bound (such an image adds 0 instead of less than 1/K).
    """
    topk_ids = np.asarray(topk_ids)
    correct = np.asarray(correct, dtype=bool)
    if topk_ids.ndim != 2 or correct.ndim != 2 or len(topk_ids) != len(correct):
        raise ValueError(
            f"expected topk_ids (N, K) and correct (N, F), got {topk_ids.shape} and {correct.shape}"
        )
    if topk_ids.size and (topk_ids.max() >= correct.shape[1] or topk_ids.min() < -1):
        raise ValueError(f"topk_ids: expected ids in [-1, {correct.shape[1]}), got values outside")
    return hit_metrics(first_correct_in_topk(topk_ids, correct), correct.sum(axis=1), ks)


def first_correct_in_topk(topk_ids: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(N,) 0-based place of the first correct id in each row of ``topk_ids`` (N, K), -1 when none
    is (ids as in :func:`rank_metrics_from_topk`). With :func:`hit_metrics`, metrics over images
    processed in chunks: concatenate the chunks' places and counts, then compute once."""
    valid = topk_ids >= 0
    hit = correct[np.arange(len(correct))[:, None], np.where(valid, topk_ids, 0)] & valid  # (N, K)
    # Not found within K (-1): the rank is worse than K, a miss for every k the caller can
    # trust (see Exactness), and 0 towards MRR.
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def retrieval_ap(scores: np.ndarray, correct: np.ndarray, at: int | None = 100) -> dict:
    """Image retrieval per fact: rank the N images by ``scores[:, f]``; AP and AP@at.

    AP is the non-interpolated average precision: the mean, over the fact's positive images
    (``correct[:, f]``), of the precision at each positive's place. AP@at sums the precision
    at the positives within the first ``at`` places and divides by min(#positives, at).
    Facts with no positive image are skipped (NaN per fact, left out of the means).

    Args:
        scores: (N, F) image-by-fact scores.
        correct: (N, F) bool ground truth.
        at: the cut-off of AP@at; None computes AP only.

    Returns:
        ``{"map": float, "map@100": float, "n": facts counted, "ap": (F,) array,
        "ap@100": (F,) array}`` (the ``@`` keys named after ``at``, absent when it is None;
        the means are NaN when no fact has a positive).
    """
    if at is not None and at < 1:
        raise ValueError(f"at: expected a positive cut-off or None, got {at}")
    scores, correct = _check_pair(scores, correct)
    n, f = scores.shape
    ap = np.full(f, np.nan)
    ap_at = np.full(f, np.nan)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for lo in range(0, f, block):
        cols = slice(lo, lo + block)
        # One row per fact (contiguous), so each sort runs over a contiguous row of images.
        s = np.ascontiguousarray(scores[:, cols].T)  # (B, N)
        order = np.argsort(-s, axis=1, kind="stable")  # (B, N)
        rel = np.take_along_axis(np.ascontiguousarray(correct[:, cols].T), order, axis=1)  # (B, N), ranked
        n_pos = rel.sum(axis=1)  # (B,)
        precision = np.cumsum(rel, axis=1) / np.arange(1, n + 1)  # (B, N)
        gained = np.where(rel, precision, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[cols] = np.where(n_pos > 0, gained.sum(axis=1) / n_pos, np.nan)
            if at is not None:
                ap_at[cols] = np.where(n_pos > 0, gained[:, :at].sum(axis=1) / np.minimum(n_pos, at), np.nan)
    counted = ~np.isnan(ap)
    out: dict = {"map": _mean(ap[counted]), "n": int(counted.sum()), "ap": ap}
    if at is not None:
        out[f"map@{at}"] = _mean(ap_at[counted])
        out[f"ap@{at}"] = ap_at
    return out


def ap_at_top(scores: np.ndarray, correct: np.ndarray, at: int = 100) -> np.ndarray:
    """(F,) AP@at of each fact without ranking all N images: only each column's first ``at`` places
    of the stable ranking (score descending, lower image row first among equals) are found, by a
    partition, O(N) per fact instead of the sort's O(N log N). Equal to :func:`retrieval_ap`'s
    ``ap@at`` (NaN for a fact with no positive image); the full AP needs every place and is not
    computed (evaluation uses this above ``FULL_AP_MAX_IMAGES`` images, factlearn.evaluate)."""
    scores, correct = _check_pair(scores, correct)
    n, f = scores.shape
    n_pos = correct.sum(axis=0)  # (F,) positives over all N images
    out = np.full(f, np.nan)
    if n == 0 or f == 0:
        return out
    k = min(at, n)
    # the k-th largest score per column; rows above it are in, rows equal to it fill the rest in row order
    kth = -np.partition(-scores, k - 1, axis=0)[k - 1]  # (F,)
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=0)  # (F,) places left for the tied rows
    chosen = above | (tied & (np.cumsum(tied, axis=0) <= room))  # exactly k per column
    rows = np.nonzero(chosen.T)[1].reshape(f, k)  # (F, k) rows, ascending per column
    top = np.take_along_axis(scores.T, rows, axis=1)  # (F, k)
    order = np.argsort(-top, axis=1, kind="stable")  # stable: lower row first among equals
    rel = np.take_along_axis(np.take_along_axis(correct.T, rows, axis=1), order, axis=1)  # (F, k) ranked
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    gained = np.where(rel, precision, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:] = np.where(n_pos > 0, gained / np.minimum(n_pos, at), np.nan)
    return out


def sequence_metrics(matrix: list[list[float]]) -> dict:
    """Continual-learning summary of a task-by-task accuracy matrix.

    ``matrix[i][j]`` is the accuracy on task j after training task i. Row i needs entries for
    tasks 0..i; entries for later tasks (j > i) may be present and are ignored. With T rows
    and ``last = T - 1`` (Chaudhry et al. 2018 for forgetting; Lopez-Paz & Ranzato 2017 for BWT):

    - ``average`` = mean over j <= last of acc[last][j];
    - ``forgetting[j]`` = max over i in [j, last-1] of acc[i][j] - acc[last][j], for j < last;
    - ``bwt`` = mean over j < last of acc[last][j] - acc[j][j] (negative means forgetting).

    Returns:
        ``{"average": float, "forgetting": [float] * last, "mean_forgetting": float,
        "bwt": float, "tasks": T}``; with a single row, forgetting is empty and
        ``mean_forgetting`` and ``bwt`` are NaN.
    """
    if not matrix:
        raise ValueError("matrix: expected at least one row")
    for i, row in enumerate(matrix):
        if len(row) < i + 1:
            raise ValueError(f"matrix row {i}: expected accuracies for tasks 0..{i}, got {len(row)} values")
    last = len(matrix) - 1
    acc = [[float(v) for v in row[: last + 1]] for row in matrix]
    final = acc[last]
    forgetting = [max(acc[i][j] for i in range(j, last)) - final[j] for j in range(last)]
    bwt = [final[j] - acc[j][j] for j in range(last)]
    return {
        "average": _mean(np.array(final)),
        "forgetting": forgetting,
        "mean_forgetting": _mean(np.array(forgetting)),
        "bwt": _mean(np.array(bwt)),
        "tasks": last + 1,
    }


def _check_pair(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    correct = np.asarray(correct, dtype=bool)
    if scores.ndim != 2 or scores.shape != correct.shape:
        raise ValueError(f"expected scores and correct of one shape (N, F), got {scores.shape} and {correct.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores: expected finite values, got NaN or infinity")
    return scores, correct


def _first_correct_position(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """0-based place of the first correct candidate in each row's stable ranking (-1 if none)."""
    # No sort needed: the first correct candidate is the best-scoring correct one (lowest
    # index among equals); its place is the number of candidates ranked ahead of it.
    masked = np.where(correct, scores, -np.inf)  # (B, F)
    best = masked.argmax(axis=1)  # first index of the maximum
    rows = np.arange(len(scores))
    s_best = scores[rows, best][:, None]  # (B, 1)
    ahead = (scores > s_best) | ((scores == s_best) & (np.arange(scores.shape[1]) < best[:, None]))
    return np.where(correct.any(axis=1), ahead.sum(axis=1), -1)


def hit_metrics(first: np.ndarray, g: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The dict of :func:`recognition_metrics` from, per image, the 0-based place of the first
    correct candidate (``first`` (N,), -1 if none was found) and the number of correct candidates
    (``g`` (N,)). Sherlock's rule: hit@k iff first < k + g - 1."""
    found = first >= 0
    out = {f"top{k}": _mean(found & (first < k + g - 1)) for k in ks}
    rr = np.zeros(len(first))
    np.divide(1.0, first + 1.0, out=rr, where=found)
    out["mrr"] = _mean(rr)
    out["n"] = len(first)
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")
