"""Cosine nearest-fact search over fact embeddings, backed by FAISS.

Fact and image embeddings are L2-normalised, so the inner product FAISS computes is the
cosine similarity. Three index kinds:

- ``"flat"``: ``IndexFlatIP``, exact search.
- ``"hnsw"``: ``IndexHNSWFlat`` (inner product), options ``M``, ``ef_search``, ``ef_construction``.
- ``"ivf"``: ``IndexIVFFlat`` (inner product, trained on the fact embeddings), options
  ``nlist``, ``nprobe``.

Tie order: facts with equal scores are ranked by ascending index row (the order the
embeddings were given in), i.e. the ranking is ``np.argsort(-scores, kind="stable")``, the
same rule as :mod:`factlearn.retrieval.metrics`. FAISS's own order among ties is arbitrary
(it returns them in reverse row order in practice), so :meth:`FactIndex.search` fetches a
few extra neighbours and re-sorts them by (-score, row).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import UserError
from ..io import atomic_path

logger = logging.getLogger(__name__)

# Documented defaults per kind; every option a kind accepts appears here.
DEFAULT_OPTIONS: dict[str, dict[str, int]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_search": 128, "ef_construction": 200},
    "ivf": {"nlist": 100, "nprobe": 10},
}


def sized_options(kind: str, n: int) -> dict[str, int]:
    """Defaults for an index over ``n`` facts, where they differ from ``DEFAULT_OPTIONS``.

    IVF's 100 lists suit large fact tables; a task's candidates number tens to hundreds, which
    would only get the lists capped with warnings. Here ``nlist`` follows FAISS's k-means rule
    of about 39 facts per list (at least 1, at most the default) and ``nprobe`` is capped at it.
    Other kinds get ``{}``. Pass the result before the caller's own options so those win.
    """
    if kind != "ivf":
        return {}
    nlist = max(1, min(DEFAULT_OPTIONS["ivf"]["nlist"], n // 39))
    return {"nlist": nlist, "nprobe": min(DEFAULT_OPTIONS["ivf"]["nprobe"], nlist)}

_FORMAT = 1
_CLASSES = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}


class FactIndex:
    """Cosine nearest-fact search over fact embeddings (normalised inner product).

    Args:
        embeddings: (F, D) fact embeddings; copied, cast to float32 and L2-normalised
            (zero rows stay zero and score 0 against every query).
        fact_ids: (F,) the caller's id of each row; default ``arange(F)``.
        kind: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate).
        **options: per-kind options, see ``DEFAULT_OPTIONS``. For ``"ivf"``, ``nlist`` is
            capped at F and ``nprobe`` at ``nlist``.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        fact_ids: np.ndarray | None = None,
        kind: str = "flat",
        **options: int,
    ):
        x = normalised_rows(embeddings, "embeddings")  # (F, D)
        n, dim = x.shape
        if n == 0:
            raise ValueError("embeddings: expected at least one fact, got shape (0, D)")
        options = _resolve_options(kind, options)
        if kind == "ivf":
            options["nlist"] = _capped(options, "nlist", n, "the number of facts")
            options["nprobe"] = _capped(options, "nprobe", options["nlist"], "nlist")
        index = _build(kind, dim, options)
        if kind == "ivf":
            # FAISS's own rule of thumb for k-means (one list needs no clustering)
            if options["nlist"] > 1 and n < 39 * options["nlist"]:
                logger.warning("ivf: %d facts for %d lists; k-means wants about 39 per list", n, options["nlist"])
            index.train(x)
        index.add(x)
        logger.debug("built %s index over %d facts of dim %d", kind, n, dim)
        self._init(index, kind, options, _fact_ids(fact_ids, n))

    def _init(self, index: faiss.Index, kind: str, options: dict[str, int], fact_ids: np.ndarray) -> None:
        _set_search_options(index, kind, options)
        self.index = index
        self.kind = kind
        self.options = options
        self.fact_ids = fact_ids  # (F,) int64, row -> caller's fact id
        self._identity_ids = bool((fact_ids == np.arange(len(fact_ids))).all())

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Width of the indexed vectors."""
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k facts nearest each query by cosine similarity.

        Args:
            queries: (Q, D) query embeddings (copied and normalised; the caller's array is untouched).
            k: neighbours per query; clamped to the number of facts.

        Returns:
            scores: (Q, k) float32 cosine similarities, best first.
            ids: (Q, k) int64 fact ids (from ``fact_ids``); ties ordered by ascending row.
            An approximate index may find fewer than k facts for a query: the missing
            places have id -1 and score -inf.
        """
        if k < 1:
            raise ValueError(f"k: expected a positive number of neighbours, got {k}")
        q = normalised_rows(queries, "queries")  # (Q, D)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries: expected shape (Q, {self.dim}), got {q.shape}")
        n = len(self)
        k = min(k, n)
        fetch = min(n, k + 1)
        s, r = self._search_sorted(q, fetch)  # (Q, fetch)
        # The top k is settled when the k-th score beats the last one fetched (so the whole tie
        # group at place k was seen), or when every fact was fetched. Rows with a tie group that
        # runs past the fetched places are searched again with twice as many places.
        todo = np.flatnonzero(~(s[:, k - 1] > s[:, -1])) if fetch < n else np.empty(0, dtype=np.int64)
        scores, rows = s[:, :k].copy(), r[:, :k].copy()  # (Q, k)
        while len(todo):
            fetch = min(n, 2 * fetch)
            s, r = self._search_sorted(q[todo], fetch)  # (T, fetch)
            done = (s[:, k - 1] > s[:, -1]) | (fetch == n)
            scores[todo[done]] = s[done, :k]
            rows[todo[done]] = r[done, :k]
            todo = todo[~done]
        missing = rows < 0
        if self._identity_ids and not missing.any():
            return scores, rows  # the common case: row numbers are the ids, no lookup or copy
        ids = self.fact_ids[np.maximum(rows, 0)]
        ids[missing] = -1
        return scores, ids

    def _search_sorted(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top ``fetch``, ordered by (score descending, row ascending); missing places last."""
        s, r = self.index.search(q, fetch)  # (T, fetch) each, scores non-increasing
        missing = r < 0
        if missing.any():
            s[missing] = -np.inf
        # FAISS orders equal scores arbitrarily: re-sort the few rows where two places tie (or,
        # defensively, are out of order). lexsort's last key is the primary one.
        unsure = np.flatnonzero((s[:, 1:] >= s[:, :-1]).any(axis=1))
        if len(unsure):
            su, ru = s[unsure], r[unsure]
            order = np.lexsort((np.where(ru < 0, len(self), ru), -su), axis=-1)
            s[unsure] = np.take_along_axis(su, order, axis=1)
            r[unsure] = np.take_along_axis(ru, order, axis=1)
        return s, r

    def save(self, path: str | os.PathLike) -> None:
        """Write the FAISS index to ``path`` and its metadata to ``path + ".json"``.

        Each file is written to a temporary file in the same folder and then renamed, so a
        crash never leaves a half-written file under either name.
        """
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "kind": self.kind,
            "options": self.options,
            "dim": self.dim,
            "fact_ids": self.fact_ids.tolist(),
        }
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        with atomic_path(_sidecar(path)) as tmp:
            tmp.write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FactIndex":
        """Read an index written by :meth:`save`; a missing or corrupt file is a UserError."""
        path = Path(path)
        sidecar = _sidecar(path)
        for p in (path, sidecar):
            if not p.is_file():
                raise UserError(f"index file not found: {p}")
        try:
            meta = json.loads(sidecar.read_text())
            kind = meta["kind"]
            options = _resolve_options(kind, meta["options"])
            fact_ids = _fact_ids(meta["fact_ids"], len(meta["fact_ids"]))
            dim = int(meta["dim"])
            if meta["format"] != _FORMAT:
                raise ValueError(f"format {meta['format']}, expected {_FORMAT}")
        except (OSError, ValueError, KeyError, TypeError, UserError) as e:
            raise UserError(f"corrupt index metadata {sidecar}: {e}") from None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise UserError(f"corrupt index file {path}: FAISS cannot read it") from None
        expected = _CLASSES[kind]
        if (
            type(index) is not expected
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
            or index.d != dim
            or index.ntotal != len(fact_ids)
        ):
            raise UserError(
                f"index file {path} does not match {sidecar}: "
                f"{type(index).__name__} of {index.ntotal}x{index.d}, metadata says "
                f"{expected.__name__} of {len(fact_ids)}x{dim}"
            )
        loaded = cls.__new__(cls)
        loaded._init(index, kind, options, fact_ids)
        return loaded


def normalised_rows(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """A float32 C-contiguous copy of the (rows, D) array ``x`` with L2-normalised rows, as the
    index stores and searches them (zero rows stay zero); ``name`` labels shape errors."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    faiss.normalize_L2(x)  # in place; leaves zero rows at zero
    return x


def _fact_ids(fact_ids: np.ndarray | None, n: int) -> np.ndarray:
    if fact_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(fact_ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"fact_ids: expected shape ({n},), got {ids.shape}")
    return ids


def _resolve_options(kind: str, given: dict[str, Any]) -> dict[str, int]:
    if kind not in DEFAULT_OPTIONS:
        raise UserError(f"unknown index kind {kind!r}; expected one of {', '.join(DEFAULT_OPTIONS)}")
    defaults = DEFAULT_OPTIONS[kind]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        allowed = ", ".join(defaults) or "none"
        raise UserError(f"unknown option {unknown[0]!r} for index kind {kind!r}; allowed: {allowed}")
    options = {**defaults, **given}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"index option {key!r} must be a positive integer, got {value!r}")
        options[key] = int(value)
    return options


def _capped(options: dict[str, int], key: str, limit: int, what: str) -> int:
    if options[key] > limit:
        logger.warning("ivf: %s=%d capped at %s (%d)", key, options[key], what, limit)
        return limit
    return options[key]


def _build(kind: str, dim: int, options: dict[str, int]) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options["ef_construction"]
        return index
    # The Python wrapper keeps the quantizer alive as long as the IVF index.
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, options["nlist"], faiss.METRIC_INNER_PRODUCT)
    # We log our own warning for small training sets; stop FAISS printing one to stderr.
    index.cp.min_points_per_centroid = 1
    return index


def _set_search_options(index: faiss.Index, kind: str, options: dict[str, int]) -> None:
    # Search-time parameters are set on every build and load, whatever the file holds.
    if kind == "hnsw":
        index.hnsw.efSearch = options["ef_search"]
    elif kind == "ivf":
        index.nprobe = options["nprobe"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")

