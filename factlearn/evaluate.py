"""Per-task evaluation: nearest-fact retrieval through a FAISS index of the model's facts.

For every task: embed its test images and its candidate facts (:func:`task_views`), rank the
candidates per image through a :class:`FactIndex` (fact recognition: top-k, MRR, overall and
per fact order), rank the images per candidate from the dense score matrix (image retrieval:
mAP, mAP@100), and optionally write the embeddings out (:func:`export_views`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data.splits import Task
from .facts import FactTable
from .io import atomic_path
from .model import FactModel
from .retrieval.index import FactIndex, normalised_rows, sized_options
from .retrieval.metrics import correct_matrix, rank_metrics_from_topk, retrieval_ap

logger = logging.getLogger(__name__)

KS = (1, 5, 10)
AP_AT = 100
RECALL_AT = 10  # approximate index vs exact search, on the same queries
ORDERS = (1, 2, 3)  # <S>, <S,P>, <S,P,O>


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


def task_views(
    model: FactModel,
    facts: FactTable,
    tasks: Sequence[Task],
    images: torch.Tensor,
    image_fact_ids: np.ndarray,
    trained: int,
    protocol: str = "standard",
    batch_size: int = 256,
) -> list[TaskView]:
    """Embed all test images and facts once and cut them into one :class:`TaskView` per task.

    Args:
        images: (N, 3, H, W) uint8 test images of all tasks; image_fact_ids: (N,) their fact ids.
        trained: how many tasks the model has been trained on (for the generalized protocol).
    """
    image_fact_ids = np.asarray(image_fact_ids)
    # Normalised once here as the index would, so exported arrays and dense scores are cosines.
    img_emb = normalised_rows(model.encode_images(images, batch_size=batch_size).numpy(), "images")  # (N, D)
    fact_emb = normalised_rows(model.encode_facts(facts.facts).numpy(), "facts")  # (F, D)
    views = []
    for j, task in enumerate(tasks):
        cand = np.array(candidates_for(tasks, j, trained, protocol), dtype=np.int64)
        rows = np.flatnonzero(np.isin(image_fact_ids, task.facts))
        views.append(TaskView(task.name, rows, image_fact_ids[rows], cand, img_emb[rows], fact_emb[cand]))
    return views


def evaluate_view(
    view: TaskView, facts: FactTable, index_kind: str = "flat", index_options: dict[str, int] | None = None
) -> dict:
    """Recognition and retrieval metrics of one task.

    Recognition ranks the candidates per image through a ``index_kind`` FactIndex (ties by
    candidate order); retrieval ranks the images per candidate by the same cosine scores,
    computed densely (n x C is small per task). Both use the wildcard ground truth of
    :func:`factlearn.retrieval.metrics.correct_matrix`.

    Returns:
        ``{"top1", "top5", "top10", "mrr", "n"}`` over the task's images, ``"map"`` and
        ``"map@100"`` over the candidates with at least one positive image, ``"by_order"``:
        ``{"1" | "2" | "3": {"top1", ..., "mrr", "n"}}`` over the images of <S>, <S,P>, <S,P,O>
        facts (orders without images left out), and for approximate kinds ``"recall@10"``:
        the mean fraction of the exact top-10 that the index returned.
    """
    image_facts = [facts[i] for i in view.image_fact_ids]
    correct = correct_matrix(image_facts, [facts[c] for c in view.candidates])  # (n, C) bool
    n_cand = len(view.candidates)
    # exact top-k with g correct candidates needs the first k + g - 1 positions
    depth = min(n_cand, max(KS) + int(correct.sum(1).max(initial=1)) - 1)
    options = {**sized_options(index_kind, n_cand), **(index_options or {})}
    index = FactIndex(view.fact_emb, kind=index_kind, **options)
    _, ranked = index.search(view.image_emb, depth)  # (n, depth) positions into candidates
    result: dict = rank_metrics_from_topk(ranked, correct, ks=KS)

    ap = retrieval_ap(view.image_emb @ view.fact_emb.T, correct, at=AP_AT)  # scores (n, C)
    result["map"] = ap["map"]
    result[f"map@{AP_AT}"] = ap[f"map@{AP_AT}"]

    orders = np.array([f.order for f in image_facts], dtype=np.int64)
    result["by_order"] = {
        str(o): rank_metrics_from_topk(ranked[orders == o], correct[orders == o], ks=KS)
        for o in ORDERS
        if (orders == o).any()
    }
    if index_kind != "flat":
        k = min(RECALL_AT, n_cand)
        _, exact = FactIndex(view.fact_emb).search(view.image_emb, k)  # (n, k)
        result[f"recall@{RECALL_AT}"] = _recall(ranked[:, :k], exact)
    return result


def evaluate_tasks(
    model: FactModel,
    facts: FactTable,
    tasks: Sequence[Task],
    images: torch.Tensor,
    image_fact_ids: np.ndarray,
    trained: int,
    protocol: str = "standard",
    batch_size: int = 256,
    index_kind: str = "flat",
    index_options: dict[str, int] | None = None,
) -> dict[str, dict]:
    """Recognition and retrieval metrics of every task's test images.

    Args:
        images: (N, 3, H, W) uint8 test images of all tasks; image_fact_ids: (N,) their fact ids.
        trained: how many tasks the model has been trained on (for the generalized protocol).
        protocol: ``"standard"`` or ``"generalized"`` candidates (:func:`candidates_for`).
        index_kind, index_options: the FactIndex used for recognition (``"flat"`` is exact).
    Returns:
        task name -> the dict of :func:`evaluate_view`.
    """
    views = task_views(model, facts, tasks, images, image_fact_ids, trained, protocol, batch_size)
    return {v.name: evaluate_view(v, facts, index_kind, index_options) for v in views}


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


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    # found, exact: (n, k) ids; -1 in found is an empty place, never a hit.
    if not len(exact):
        return float("nan")
    hits = [len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, exact)]
    return float(np.mean(hits))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


def _save_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
