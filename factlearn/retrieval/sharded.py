"""Fact stores larger than one index: several FAISS indexes searched as one.

A :class:`ShardedFactIndex` keeps consecutive runs of at most ``shard_size`` facts, each in its own
:class:`~factlearn.retrieval.index.FactIndex`. Embeddings arrive chunk by chunk (:meth:`add`); a
shard is built as soon as it is full (or at the first search), so the whole store never has to be
one array, and no single FAISS index has to hold it.

A search asks every shard for its top k and merges the candidates by (-score, global row): the
tie rule of FactIndex (ties go to the row added first). Every fact of the overall top k is in its
own shard's top k, so for ``"flat"`` shards the result is exactly that of one flat index over all
rows, ids and scores; ``"hnsw"`` and ``"ivf"`` shards merge their own approximate results.

GPUs: where the installed faiss has GPU support (``faiss.StandardGpuResources``) and sees a GPU,
flat and IVF shards are moved onto the GPUs, round-robin (HNSW has no GPU version and stays on
the CPU). Where it has none (faiss-cpu) but torch sees CUDA GPUs, flat shards are searched by
torch on the GPUs instead, round-robin (:class:`~factlearn.retrieval.torch_search.TorchFlatSearch`:
the same ids, scores to float rounding); ``device=`` asks for that torch search explicitly, on one
device, CPU included. Otherwise every shard is a CPU FAISS index. Only CPU paths are tested here
(faiss-cpu); the torch search's CUDA tests run where a GPU is (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import logging
from typing import Iterable

import faiss
import numpy as np
import torch

from .index import FactIndex, _resolve_options
from .torch_search import TorchFlatSearch

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1 << 20  # facts per shard: 0.75 GB of float32 vectors at 192 dimensions


def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


class ShardedFactIndex:
    """Cosine nearest-fact search over shards of at most ``shard_size`` facts.

    Args:
        dim: embedding dimension D.
        kind: ``"flat"``, ``"hnsw"`` or ``"ivf"``, for every shard (see FactIndex).
        shard_size: facts per shard.
        gpu: put flat and IVF shards on GPUs with faiss; default: when faiss has GPU support and
            sees a GPU. ``False``: no GPU at all (not torch's either).
        device: search flat shards with torch on this device (``"cpu"``, ``"cuda"``, ``"cuda:1"``)
            instead of FAISS. Default: on every CUDA GPU torch sees, round-robin, when ``kind`` is
            ``"flat"``, faiss has no GPU support and ``gpu`` is not ``False``; else FAISS.
        **options: per-kind options, passed to every shard's FactIndex.
    """

    def __init__(self, dim: int, kind: str = "flat", shard_size: int = DEFAULT_SHARD_SIZE, gpu: bool | None = None,
                 *, device: str | torch.device | None = None, **options: int):
        if shard_size < 1:
            raise ValueError(f"shard_size: expected a positive number of facts, got {shard_size}")
        self.dim, self.kind, self.shard_size, self.options = dim, kind, shard_size, options
        self.gpus = gpu_count() if gpu is None or gpu else 0
        if gpu and not self.gpus:
            raise ValueError("gpu=True: this faiss has no GPU support or sees no GPU")
        self.devices = _torch_devices(kind, device, gpu, self.gpus)  # torch flat search; [] = FAISS
        if self.devices:
            self.gpus = 0
            _resolve_options(kind, options)  # "flat" takes none: the same error as FactIndex's
        self._resources: dict[int, object] = {}  # GPU number -> faiss.StandardGpuResources
        self.shards: list[FactIndex | TorchFlatSearch] = []
        self._pending: list[np.ndarray] = []  # rows of the shard being filled, (n_i, D) float32 each
        self._ids: list[np.ndarray] = []  # the caller's fact ids of the rows added, chunk by chunk
        self._built = 0  # rows already in self.shards

    @classmethod
    def from_chunks(cls, chunks: Iterable[np.ndarray], dim: int, kind: str = "flat",
                    shard_size: int = DEFAULT_SHARD_SIZE, gpu: bool | None = None, *,
                    device: str | torch.device | None = None, **options: int) -> ShardedFactIndex:
        """An index over the rows of ``chunks`` ((n_i, D) arrays), added one after another."""
        index = cls(dim, kind, shard_size, gpu, device=device, **options)
        for chunk in chunks:
            index.add(chunk)
        return index

    def __len__(self) -> int:
        return self._built + sum(len(p) for p in self._pending)

    def add(self, embeddings: np.ndarray, fact_ids: np.ndarray | None = None) -> None:
        """Append (n, D) fact embeddings (copied; normalised as FactIndex does when their shard is
        built) after the rows added so far.

        ``fact_ids``: the caller's (n,) id of each row; default their global row numbers.
        """
        x = self._rows(embeddings, "embeddings")  # (n, D)
        start = len(self)
        ids = np.arange(start, start + len(x), dtype=np.int64) if fact_ids is None else np.asarray(fact_ids, np.int64)
        if ids.shape != (len(x),):
            raise ValueError(f"fact_ids: expected shape ({len(x)},), got {ids.shape}")
        self._ids.append(ids)
        self._pending.append(x)
        while sum(len(p) for p in self._pending) >= self.shard_size:
            rows = np.concatenate(self._pending)
            self._pending = [rows[self.shard_size :]] if len(rows) > self.shard_size else []
            self._build(rows[: self.shard_size])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k facts nearest each query over every shard; same contract as :meth:`FactIndex.search`.

        Returns:
            scores: (Q, k) float32 cosine similarities, best first; ids: (Q, k) int64 fact ids,
            ties by the order the rows were added; -1 and -inf where an approximate shard found
            fewer than k.
        """
        if self._pending:  # a partly filled last shard: built now, later rows start a new one
            rows, self._pending = np.concatenate(self._pending), []
            self._build(rows)
        if not self.shards:
            raise ValueError("the index is empty: add embeddings before searching")
        if k < 1:
            raise ValueError(f"k: expected a positive number of neighbours, got {k}")
        q = self._rows(queries, "queries")  # (Q, D), normalised by each shard as by one FactIndex
        k = min(k, self._built)
        found = [shard.search(q, k) for shard in self.shards]  # per shard (Q, k_s): scores, global rows
        scores = np.concatenate([s for s, _ in found], axis=1)  # (Q, sum k_s)
        rows = np.concatenate([r for _, r in found], axis=1)
        # (-score, global row), as FactIndex ranks; missing places (-1, -inf) last
        order = np.lexsort((np.where(rows < 0, self._built, rows), -scores), axis=-1)[:, :k]  # (Q, k)
        scores = np.take_along_axis(scores, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        if len(self._ids) > 1:
            self._ids = [np.concatenate(self._ids)]
        return scores, np.where(rows >= 0, self._ids[0][np.maximum(rows, 0)], -1)

    def _rows(self, x: np.ndarray, name: str) -> np.ndarray:
        x = np.array(x, dtype=np.float32, order="C", copy=True)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name}: expected shape (n, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        return x

    def _build(self, rows: np.ndarray) -> None:
        # The shard's ids are global row numbers; search maps them to the caller's ids.
        global_rows = np.arange(self._built, self._built + len(rows))
        shard: FactIndex | TorchFlatSearch
        if self.devices:
            shard = TorchFlatSearch(rows, global_rows, self.devices[len(self.shards) % len(self.devices)])
        else:
            shard = FactIndex(rows, global_rows, self.kind, **self.options)
            if self.gpus and self.kind in ("flat", "ivf"):
                device = len(self.shards) % self.gpus
                if device not in self._resources:
                    self._resources[device] = faiss.StandardGpuResources()
                shard.index = faiss.index_cpu_to_gpu(self._resources[device], device, shard.index)
        self.shards.append(shard)
        self._built += len(rows)
        logger.debug("built %s shard %d of %d facts (%s)", self.kind, len(self.shards), len(rows),
                     shard.device if self.devices else "faiss")


def _torch_devices(kind: str, device: str | torch.device | None, gpu: bool | None,
                   faiss_gpus: int) -> list[torch.device]:
    """The devices of torch's flat search, one per shard round-robin; [] where FAISS searches."""
    if device is None:
        # torch takes over only what faiss-cpu cannot do: exact search on CUDA GPUs.
        if kind != "flat" or gpu is False or faiss_gpus or not torch.cuda.is_available():
            return []
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if kind != "flat":
        raise ValueError(f"device={device!r}: torch search is exact search, for kind 'flat' only, not {kind!r}")
    if gpu:
        raise ValueError(f"device={device!r} and gpu=True: pass one (torch search or faiss GPU search)")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine")
    return [device]
