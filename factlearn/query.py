"""Query a trained run by image: the top-k facts from the FAISS fact index."""

from __future__ import annotations

from .data.images import expand_images, read_images
from .device import resolve_device
from .retrieval.index import FactIndex, sized_options
from .run import RunDir


def query_images(
    run_dir: str, images: list[str], top_k: int = 5, all_facts: bool = False, device: str = "cpu",
    index_kind: str = "flat",
) -> list[dict]:
    """Per image: ``{"image": path, "facts": [{"fact": "<s, p, o>", "slots": [...], "score": cos}]}``.

    Candidates are the facts of the tasks trained so far (``all_facts``: every fact of the run),
    searched through a ``index_kind`` FactIndex (flat: exact; hnsw, ivf: approximate).
    """
    run = RunDir(run_dir)
    model, task = run.load_model(None, resolve_device(device))
    facts = run.facts()
    if all_facts:
        ids = list(range(len(facts)))
    else:
        tasks = run.tasks()
        upto = [t.name for t in tasks].index(task) + 1
        ids = sorted({f for t in tasks[:upto] for f in t.facts})
    paths = expand_images(images)
    index = FactIndex(model.encode_facts([facts[i] for i in ids]).numpy(), fact_ids=ids, kind=index_kind,
                      **sized_options(index_kind, len(ids)))
    scores, found = index.search(model.encode_images(read_images(paths, model.cfg.image_size)).numpy(), top_k)
    return [
        {"image": str(p), "facts": [{"fact": str(facts[int(f)]), "slots": list(facts[int(f)].slots), "score": float(s)}
                                    for s, f in zip(srow, frow) if f >= 0]}
        for p, srow, frow in zip(paths, scores, found)
    ]
