"""Per-task evaluation: nearest-fact retrieval through a FAISS index of the model's facts."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from .data.splits import Task
from .facts import FactTable
from .model import FactModel
from .retrieval.index import FactIndex
from .retrieval.metrics import correct_matrix, rank_metrics_from_topk

logger = logging.getLogger(__name__)

KS = (1, 5, 10)


def candidates_for(tasks: Sequence[Task], j: int, trained: int, protocol: str) -> list[int]:
    """Fact ids competing for task j's images after ``trained`` tasks.

    standard: task j's own facts. generalized: every fact seen so far (tasks 0..trained-1) plus
    task j's, so a task not yet trained is still scored against everything the model knows.
    """
    if protocol == "standard":
        return list(tasks[j].facts)
    seen = {f for t in tasks[:trained] for f in t.facts}
    return sorted(seen | set(tasks[j].facts))


def evaluate_tasks(
    model: FactModel,
    facts: FactTable,
    tasks: Sequence[Task],
    images: torch.Tensor,
    image_fact_ids: np.ndarray,
    trained: int,
    protocol: str = "standard",
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Recognition metrics (top-1/5/10, MRR) of every task's test images.

    Args:
        images: (N, 3, H, W) uint8 test images of all tasks; image_fact_ids: (N,) their fact ids.
        trained: how many tasks the model has been trained on (for the generalized protocol).
    Returns:
        task name -> {"top1", "top5", "top10", "mrr", "n"}.
    """
    img_emb = model.encode_images(images, batch_size=batch_size).numpy()  # (N, D)
    fact_emb = model.encode_facts(facts.facts).numpy()  # (F, D)
    results = {}
    for j, task in enumerate(tasks):
        cand = candidates_for(tasks, j, trained, protocol)
        rows = np.flatnonzero(np.isin(image_fact_ids, task.facts))
        image_facts = [facts[i] for i in image_fact_ids[rows]]
        correct = correct_matrix(image_facts, [facts[c] for c in cand])  # (n, C) bool
        # exact top-k with g correct candidates needs the first k + g - 1 positions
        depth = min(len(cand), max(KS) + int(correct.sum(1).max(initial=1)) - 1)
        index = FactIndex(fact_emb[cand])
        _, ranked = index.search(img_emb[rows], depth)  # positions into cand
        results[task.name] = rank_metrics_from_topk(ranked, correct, ks=KS)
    return results
