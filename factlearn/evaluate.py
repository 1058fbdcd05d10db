"""Per-task evaluation: nearest-fact retrieval through a FAISS index of the model's facts.

One pipeline, :func:`evaluate_tasks` (the training loop calls it after every task), and one entry
point for a run directory's checkpoints, :func:`evaluate_run` (``factlearn evaluate`` and the
experiment code's probes).

For every task: embed its test images and its candidate facts (:func:`embed_test_set`, then
:func:`cut_views`; the test set is embedded once for every task and protocol), rank the candidates
per image through a :class:`ShardedFactIndex` (fact recognition: top-k, MRR, overall
and per fact order), rank the images per candidate by the same cosine scores (image retrieval:
mAP, mAP@100), and optionally write the embeddings out (:func:`export_views`).

Memory does not grow with the test set beyond its embeddings: images are embedded, and searched,
``chunk`` at a time; the (n, C) ground truth and score matrices exist only ``chunk`` rows (search)
or ``_BLOCK_ELEMENTS / n`` columns (retrieval) at a time. What is held whole is the embeddings,
n x D float32 (0.75 KB per image at D = 192), because a fact's AP ranks all n images at once. The
uint8 images (16 times that at 64 px) are read a chunk at a time from what the caller passes: a
tensor, or an :class:`~factlearn.data.store.ImageStore` (a view of the data set's memory-mapped
store, so a large test set is never resident at once). The fact index is sharded
(:mod:`factlearn.retrieval.sharded`). Chunking changes no metric: they are computed once from
per-image results.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data.images import open_images
from .data.manifest import load_dataset
from .data.splits import Task, image_splits
from .data.store import ImageStore
from .device import resolve_device
from .errors import UserError
from .facts import FactTable
from .io import atomic_path
from .model import FactModel
from .retrieval.index import normalised_rows, sized_options
from .retrieval.metrics import ap_at_top, hit_metrics, retrieval_ap
from .retrieval.truth import GroundTruth
from .retrieval.sharded import ShardedFactIndex
from .run import RunDir

logger = logging.getLogger(__name__)

KS = (1, 5, 10)
AP_AT = 100
RECALL_AT = 10  # approximate index vs exact search, on the same queries
ORDERS = (1, 2, 3)  # <S>, <S,P>, <S,P,O>
CHUNK = 8192  # images embedded and searched at a time (and facts embedded at a time)
_BLOCK_ELEMENTS = 1 << 22  # score-matrix elements per retrieval block
# Above this many test images in a task, retrieval reports mAP@100 only (map is NaN): the full AP
# ranks every image for every candidate, O(C N log N), hours at 200,000 facts on a CPU; mAP@100
# needs each candidate's first 100 places only (retrieval.metrics.ap_at_top, the same values).
FULL_AP_MAX_IMAGES = 50_000


def candidates_for(tasks: Sequence[Task], j: int, trained: int, protocol: str) -> list[int]:
    """Fact ids competing for task j's images after ``trained`` tasks.

    standard: task j's own facts. generalized: every fact seen so far (tasks 0..trained-1) plus
    task j's, so a task not yet trained is still scored against everything the model knows.
    """
    if protocol == "standard":
        return list(tasks[j].facts)
    seen = {f for t in tasks[:trained] for f in t.facts}
    return sorted(seen | set(tasks[j].facts))


@dataclass
class TaskView:
    """One task's test images and candidate facts, embedded and L2-normalised (dot = cosine)."""

    name: str
    rows: np.ndarray  # (n,) positions of the task's images in the evaluated image set
    image_fact_ids: np.ndarray  # (n,) fact id of each image
    candidates: np.ndarray  # (C,) candidate fact ids, in ranking tie order
    image_emb: np.ndarray  # (n, D) float32
    fact_emb: np.ndarray  # (C, D) float32


def embed_test_set(
    model: FactModel, facts: FactTable, images: torch.Tensor | ImageStore, batch_size: int = 256, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Embed the test images and the whole fact table once, for every task and protocol.

    Args:
        images: (N, 3, H, W) uint8 test images of all tasks: a tensor, or an ImageStore read a
            chunk at a time.
        batch_size: images per forward pass; chunk: images (rounded up to whole batches) and facts
            embedded per call, so only the (N, D) embeddings grow with N.
    Returns:
        (N, D) image and (F, D) fact embeddings, float32, L2-normalised (dot = cosine).
    """
    # Normalised once here as the index would, so exported arrays and dense scores are cosines.
    img_emb = np.empty((len(images), model.dim), dtype=np.float32)  # (N, D)
    step = batch_size * -(-chunk // batch_size)  # whole batches: the same passes as one call
    for lo in range(0, len(images), step):
        img_emb[lo : lo + step] = normalised_rows(
            model.encode_images(images[lo : lo + step], batch_size=batch_size).numpy(), "images")
    fact_emb = np.concatenate([normalised_rows(model.encode_facts(facts.facts[lo : lo + chunk]).numpy(), "facts")
                               for lo in range(0, len(facts.facts), chunk)])  # (F, D)
    return img_emb, fact_emb


def cut_views(
    tasks: Sequence[Task], image_fact_ids: np.ndarray, img_emb: np.ndarray, fact_emb: np.ndarray,
    trained: int, protocol: str = "standard",
) -> list[TaskView]:
    """One :class:`TaskView` per task from the embeddings of :func:`embed_test_set`."""
    image_fact_ids = np.asarray(image_fact_ids)
    views = []
    for j, task in enumerate(tasks):
        cand = np.array(candidates_for(tasks, j, trained, protocol), dtype=np.int64)
        rows = np.flatnonzero(np.isin(image_fact_ids, task.facts))
        views.append(TaskView(task.name, rows, image_fact_ids[rows], cand, img_emb[rows], fact_emb[cand]))
    return views


def evaluate_view(
    view: TaskView, facts: FactTable, index_kind: str = "flat", index_options: dict[str, int] | None = None,
    chunk: int = CHUNK,
) -> dict:
    """Recognition and retrieval metrics of one task.

    Recognition ranks the candidates per image through a ``index_kind`` ShardedFactIndex (ties by
    candidate order), ``chunk`` images at a time; retrieval ranks the images per candidate by
    the same cosine scores, computed a block of candidates at a time. Both use the wildcard
    ground truth of :func:`factlearn.retrieval.metrics.correct_matrix`, computed through integer keys
    (:class:`factlearn.retrieval.truth.GroundTruth`: no images x candidates matrix). ``chunk`` bounds memory
    and changes no result.

    Returns:
        ``{"top1", "top5", "top10", "mrr", "n"}`` over the task's images, ``"map"`` and
        ``"map@100"`` over the candidates with at least one positive image, ``"by_order"``:
        ``{"1" | "2" | "3": {"top1", ..., "mrr", "n"}}`` over the images of <S>, <S,P>, <S,P,O>
        facts (orders without images left out), and for approximate kinds ``"recall@10"``:
        the mean fraction of the exact top-10 that the index returned.
    """
    truth = GroundTruth.from_ids(facts, view.image_fact_ids, view.candidates)
    n, n_cand = len(view.image_fact_ids), len(view.candidates)
    g = truth.counts()  # (n,) correct candidates per image
    # exact top-k with g correct candidates needs the first k + g - 1 positions
    depth = min(n_cand, max(KS) + int(g.max(initial=1)) - 1)
    options = {**sized_options(index_kind, n_cand), **(index_options or {})}
    index = _index(view.fact_emb, index_kind, chunk, **options)
    exact = _index(view.fact_emb, "flat", chunk) if index_kind != "flat" else None
    k = min(RECALL_AT, n_cand)
    first = np.empty(n, dtype=np.int64)  # place of the first correct candidate, -1: not within depth
    recall = np.empty(n)
    for lo in range(0, n, chunk):
        part = slice(lo, lo + chunk)
        _, ranked = index.search(view.image_emb[part], depth)  # (b, depth) positions into candidates
        hit = truth.at(part, ranked)  # (b, depth) bool
        first[part] = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
        if exact is not None:
            recall[part] = _recall(ranked[:, :k], exact.search(view.image_emb[part], k)[1])
    result: dict = hit_metrics(first, g, KS)
    result.update(_retrieval(view, truth))
    orders = truth.level + 1
    result["by_order"] = {str(o): hit_metrics(first[orders == o], g[orders == o], KS) for o in ORDERS
                          if (orders == o).any()}
    if exact is not None:
        result[f"recall@{RECALL_AT}"] = float(recall.mean()) if n else float("nan")
    return result


def _index(fact_emb: np.ndarray, kind: str, chunk: int, **options: int) -> ShardedFactIndex:
    return ShardedFactIndex.from_chunks((fact_emb[lo : lo + chunk] for lo in range(0, len(fact_emb), chunk)),
                                        fact_emb.shape[1], kind, **options)


def _retrieval(view: TaskView, truth: GroundTruth) -> dict[str, float]:
    """mAP and mAP@AP_AT over the candidates with a positive image, a block of candidates at a time
    (per candidate, AP ranks all n images: the block's (n, b) scores and ground truth). Above
    FULL_AP_MAX_IMAGES images only mAP@AP_AT, from each candidate's first places (map: NaN)."""
    n = len(view.image_fact_ids)
    full = n <= FULL_AP_MAX_IMAGES
    width = max(1, _BLOCK_ELEMENTS // max(1, n))
    ap, ap_at = [], []
    for lo in range(0, len(view.candidates), width):
        cols = slice(lo, lo + width)
        scores, correct = view.image_emb @ view.fact_emb[cols].T, truth.block(cols)  # (n, b)
        if full:
            block = retrieval_ap(scores, correct, at=AP_AT)
            ap.append(block["ap"])
            ap_at.append(block[f"ap@{AP_AT}"])
        else:
            ap_at.append(ap_at_top(scores, correct, AP_AT))
            ap.append(np.where(np.isnan(ap_at[-1]), np.nan, np.inf))  # counted, but unknown: NaN below
    ap = np.concatenate(ap) if ap else np.empty(0)
    ap_at = np.concatenate(ap_at) if ap_at else np.empty(0)
    counted = ~np.isnan(ap)  # candidates without a positive image have no AP
    return {"map": float(ap[counted].mean()) if counted.any() and full else float("nan"),
            f"map@{AP_AT}": float(ap_at[counted].mean()) if counted.any() else float("nan")}


def sample_per_task(fact_ids: np.ndarray, tasks: Sequence[Task], cap: int | None, seed: int) -> np.ndarray:
    """Positions of the images kept for evaluation (``eval.max_images_per_task``): of each task, at
    most ``cap`` images, drawn with ``seed`` (the split's: the same images after every task and for
    every run of the split), in their order; every position when ``cap`` is None. Images of facts
    in no task are left out only when sampling."""
    fact_ids = np.asarray(fact_ids)
    if cap is None:
        return np.arange(len(fact_ids))
    rng = np.random.default_rng([seed, 11])
    keep = []
    for task in tasks:
        rows = np.flatnonzero(np.isin(fact_ids, task.facts))
        keep.append(rows if len(rows) <= cap else rng.choice(rows, cap, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


def evaluate_tasks(
    model: FactModel,
    facts: FactTable,
    tasks: Sequence[Task],
    images: torch.Tensor | ImageStore,
    image_fact_ids: np.ndarray,
    trained: int,
    protocol: str | Sequence[str] = "standard",
    batch_size: int = 256,
    index_kind: str = "flat",
    index_options: dict[str, int] | None = None,
    chunk: int = CHUNK,
    skip_empty: bool = False,
    views_out: dict[str, list[TaskView]] | None = None,
) -> dict[str, dict]:
    """Recognition and retrieval metrics of every task's test images: THE evaluation pipeline
    (the training loop calls it on the model in memory, :func:`evaluate_run` on a checkpoint).

    Args:
        images: (N, 3, H, W) uint8 test images of all tasks (a tensor, or an ImageStore read a chunk
            at a time); image_fact_ids: (N,) their fact ids.
        trained: how many tasks the model has been trained on (for the generalized protocol).
        protocol: ``"standard"`` or ``"generalized"`` candidates (:func:`candidates_for`), or a
            sequence of them: the images are embedded once for all of them.
        index_kind, index_options: the FactIndex used for recognition (``"flat"`` is exact).
        chunk: images (and facts) embedded and searched at a time; bounds memory, changes no result.
        skip_empty: leave out tasks with no image among ``images`` (a probe set of some facts).
        views_out: when given, filled with protocol -> the evaluated :class:`TaskView` list (for
            :func:`export_views`).
    Returns:
        task name -> the dict of :func:`evaluate_view`; for a sequence of protocols,
        protocol -> task name -> that dict.
    """
    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    img_emb, fact_emb = embed_test_set(model, facts, images, batch_size, chunk)
    out = {}
    for proto in protocols:
        views = [v for v in cut_views(tasks, image_fact_ids, img_emb, fact_emb, trained, proto)
                 if len(v.rows) or not skip_empty]
        if views_out is not None:
            views_out[proto] = views
        out[proto] = {v.name: evaluate_view(v, facts, index_kind, index_options, chunk) for v in views}
    return out[protocol] if isinstance(protocol, str) else out


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    after: str | Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    index_kind: str = "flat",
    device: str | torch.device = "auto",
    images: str = "test",
    export_dir: str | Path | None = None,
) -> dict[str, dict[str, dict[str, dict]]]:
    """Evaluate checkpoints of a run directory: the entry point of ``factlearn evaluate`` and of
    the experiment code's probes (both through :func:`evaluate_tasks`).

    Args:
        run_dir: a run directory; data_dir: its data (default: the one it was trained on).
        after: the checkpoint(s) to evaluate, by task name (default: the last completed one);
            the images are decoded once for all of them.
        protocols: candidate sets (default: the run's ``eval.protocol``).
        index_kind: the fact index for recognition (``flat`` exact; ``hnsw``, ``ivf`` approximate,
            which also report recall@10 against flat).
        images: ``"test"``: the run's test split of ``data_dir``, which must hold the run's own fact
            table; ``"all"``: every image of ``data_dir`` (e.g. a probe set of some facts under
            other conditions), whose facts must be in the run's table; tasks without an image are
            left out.
        export_dir: write each task's embeddings under ``export_dir/<TASK>/`` (:func:`export_views`;
            only with one checkpoint and one protocol).
    Returns:
        checkpoint task -> protocol -> task -> the metrics of :func:`evaluate_view`.
    """
    dev = resolve_device(device)
    run = RunDir(run_dir)
    run.require()
    cfg, tasks, facts = run.config(), run.tasks(), run.facts()
    done = run.completed()
    if not done:
        raise UserError(f"{run.path} has no completed task yet")
    names = [done[-1]] if after is None else [after] if isinstance(after, str) else list(after)
    for name in names:
        if name not in done:
            raise UserError(f"--after {name}: not a completed task of {run.path} (completed: {', '.join(done)})")
    protocols = [cfg.eval.protocol] if protocols is None else list(protocols)
    if export_dir is not None and (len(names) > 1 or len(protocols) > 1):
        raise UserError("--export writes one checkpoint's embeddings under one protocol")
    dataset = load_dataset(data_dir or run.data_dir())
    if images == "test":
        if dataset.facts.facts != facts.facts:
            raise UserError(f"the data's facts differ from {run.file('facts.json')}: "
                            "not the data this run was trained on")
        rows = np.flatnonzero(image_splits(dataset, cfg.split.test_fraction, cfg.split.seed))
        rows = rows[sample_per_task(np.array(dataset.fact_ids())[rows], tasks, cfg.eval.max_images_per_task,
                                    cfg.split.seed)]  # the images training evaluated on
        fact_ids = np.array(dataset.fact_ids())[rows]
    elif images == "all":
        rows = np.arange(len(dataset.records))
        fact_ids = np.array(facts.ids([r.fact for r in dataset.records]), dtype=np.int64)
    else:
        raise ValueError(f"images must be 'test' or 'all', not {images!r}")
    # The data set's store, the one training mapped (viewed at these rows), or these rows in memory.
    pixels = open_images([r.image for r in dataset.records], cfg.model.image_size, data_dir=dataset.root, rows=rows)
    out: dict[str, dict] = {}
    for name in names:
        model, _ = run.load_model(name, dev)
        views: dict[str, list[TaskView]] = {}
        out[name] = evaluate_tasks(model, facts, tasks, pixels, fact_ids, [t.name for t in tasks].index(name) + 1,
                                   protocols, cfg.eval.batch_size, index_kind, skip_empty=images == "all",
                                   views_out=views)
        if export_dir is not None:
            export_views(export_dir, views[protocols[0]], facts,
                         [_data_relative(dataset.records[i].image, dataset.root) for i in rows])
    return out


def _data_relative(image: Path, root: Path) -> str:
    # Manifest images normally lie inside the data directory; one allowed outside keeps its path.
    return image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)


def export_views(out_dir: str | Path, views: Sequence[TaskView], facts: FactTable, image_names: Sequence[str]) -> None:
    """Write each task's embeddings and their labels under ``out_dir/<TASK>/``.

    Files (each written atomically): ``image_embeddings.npy`` (n, D) and ``fact_embeddings.npy``
    (C, D) float32, L2-normalised so a dot product is the cosine score the evaluation ranks by;
    ``images.csv`` (``image,fact_id``, one row per embedding row) and ``facts.csv``
    (``fact_id,subject,predicate,object``, empty for a missing slot, one row per fact row).

    Args:
        image_names: the name written for each image of the evaluated set (indexed by ``view.rows``).
    """
    out_dir = Path(out_dir)
    for view in views:
        folder = out_dir / view.name
        _save_npy(folder / "image_embeddings.npy", view.image_emb)
        _save_npy(folder / "fact_embeddings.npy", view.fact_emb)
        _save_csv(folder / "images.csv", ["image", "fact_id"],
                  [[image_names[r], int(f)] for r, f in zip(view.rows, view.image_fact_ids)])
        _save_csv(folder / "facts.csv", ["fact_id", "subject", "predicate", "object"],
                  [[int(c), *(s or "" for s in facts[int(c)].slots)] for c in view.candidates])
    logger.info("exported %d tasks to %s", len(views), out_dir)


def _recall(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    # found, exact: (b, k) ids -> (b,) fraction of each row's exact top k found; -1 in found is an
    # empty place, never a hit.
    return np.array([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, exact)], dtype=np.float64)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


def _save_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
