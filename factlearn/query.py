"""Query a trained run by image or by fact: the top-k facts from the FAISS fact index.

:class:`RunIndex` is one checkpoint of a run held in memory (the model, the fact table, the
candidate facts and their index). ``factlearn query`` builds one per call (:func:`query_images`);
``factlearn serve`` keeps one live and swaps it when training completes a task, so both answer with
the same code and the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data.images import expand_images, read_images
from .device import resolve_device
from .facts import Fact, FactTable
from .model import FactModel
from .retrieval.index import FactIndex, sized_options
from .run import RunDir


@dataclass(frozen=True)
class RunIndex:
    """A run's checkpoint in memory, ready to answer: never changed once built, so a caller that
    holds one answers from one model only, whatever replaces it elsewhere.

    Attributes:
        run_dir: the run directory.
        task: the task the checkpoint was saved after.
        model: the model of that checkpoint, in eval mode.
        facts: the run's fact table.
        ids: the candidate fact ids (the tasks trained so far, or every fact), ascending.
        index: the FAISS index of the candidates' embeddings.
        loaded_at: when it was built (``time.time()``).
    """

    run_dir: Path
    task: str
    model: FactModel
    facts: FactTable
    ids: list[int]
    index: FactIndex
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, run_dir: str | Path, task: str | None = None, all_facts: bool = False, device: str = "cpu",
             index_kind: str = "flat") -> RunIndex:
        """The checkpoint after ``task`` (default: the last completed one) of ``run_dir``.

        Candidates are the facts of the tasks trained up to it (``all_facts``: every fact of the
        run), searched through a ``index_kind`` FactIndex (flat: exact; hnsw, ivf: approximate).
        A run directory that is not one, or has no completed task, is a UserError.
        """
        run = RunDir(run_dir)
        model, task = run.load_model(task, resolve_device(device))
        facts = run.facts()
        if all_facts:
            ids = list(range(len(facts)))
        else:
            tasks = run.tasks()
            upto = [t.name for t in tasks].index(task) + 1
            ids = sorted({f for t in tasks[:upto] for f in t.facts})
        index = FactIndex(model.encode_facts([facts[i] for i in ids]).numpy(), fact_ids=ids, kind=index_kind,
                          **sized_options(index_kind, len(ids)))
        return cls(Path(run_dir), task, model, facts, ids, index)

    @property
    def image_size(self) -> int:
        """Side of the square images the model takes."""
        return self.model.cfg.image_size

    def search_images(self, images: torch.Tensor, top_k: int) -> list[list[dict]]:
        """uint8 images (N, 3, size, size) -> per image its top-k facts (:meth:`search`)."""
        return self.search(self.model.encode_images(images).numpy(), top_k)

    def search_fact(self, fact: Fact, top_k: int) -> list[dict]:
        """The top-k candidate facts nearest ``fact`` (zero-shot: any composition of the model's
        words; wildcard slots are left out of the cosine). Unknown words embed as the shared
        unknown-word vector: check ``model.vocab.unknown_words`` first where that matters."""
        return self.search(self.model.encode_facts([fact]).numpy(), top_k)[0]

    def search(self, embeddings: np.ndarray, top_k: int) -> list[list[dict]]:
        """(N, 3*d) normalised embeddings -> per row ``[{"fact": "<s, p, o>", "slots": [...],
        "score": cosine}]``, best first (an approximate index may find fewer than k)."""
        scores, found = self.index.search(embeddings, top_k)
        return [[self._hit(int(f), float(s)) for s, f in zip(srow, frow) if f >= 0] for srow, frow in zip(scores, found)]

    def _hit(self, fact_id: int, score: float) -> dict:
        fact = self.facts[fact_id]
        return {"fact": str(fact), "slots": list(fact.slots), "score": score}


def query_images(
    run_dir: str, images: list[str], top_k: int = 5, all_facts: bool = False, device: str = "cpu",
    index_kind: str = "flat",
) -> list[dict]:
    """Per image: ``{"image": path, "facts": [{"fact": "<s, p, o>", "slots": [...], "score": cos}]}``.

    Candidates are the facts of the tasks trained so far (``all_facts``: every fact of the run),
    searched through a ``index_kind`` FactIndex (flat: exact; hnsw, ivf: approximate).
    """
    index = RunIndex.load(run_dir, None, all_facts, device, index_kind)
    paths = expand_images(images)
    hits = index.search_images(read_images(paths, index.image_size), top_k)
    return [{"image": str(p), "facts": h} for p, h in zip(paths, hits)]
