"""``factlearn importance``: a trained run's importance after the fact, added from new unlabeled
images or summarised. A run-directory operation (like query), not a continual-learning method.

MAS importance needs no labels, so a deployed model can keep protecting what matters where it is
used: ``add_importance`` computes the image tower's importance on new images and accumulates it
into the latest checkpoint's method state (``method.accumulate``), without training. The anchor and
the language tower's importance stay as they are (unlabeled images carry no facts).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .continual import concentration, create_method
from .continual.base import QuadraticPenalty
from .continual.unlabeled import IMAGE_TOWER, DataImportance, image_source, unlabeled_task
from .errors import UserError
from .run import RunDir, read_tensors

logger = logging.getLogger(__name__)


def add_importance(run_dir: str | Path, images: str | Path, device: str | torch.device = "cpu") -> dict:
    """Accumulate image-tower importance from ``images`` into the run's latest checkpoint.

    Args:
        run_dir: a run directory trained with a label-free importance method (mas, lmas).
        images: a folder of images, or a data directory / manifest (its facts are ignored).
        device: where to compute.
    Returns:
        ``{"checkpoint": task name, "images": number of images used, "source": str(images)}``.
    """
    run = RunDir(run_dir)
    run.config()  # a directory that is not a run is told before anything is created in it
    # The checkpoint is read, changed and written back under the run's lock: a training process
    # writing to the run at the same time is refused, not raced.
    with run.lock():
        return _add_importance(run, images, device)


def _add_importance(run: RunDir, images: str | Path, device: str | torch.device) -> dict:
    model, task = run.load_model(None, device)
    cfg = run.config().method
    method = create_method(cfg)
    if not isinstance(method, DataImportance):
        raise UserError(f"{run.path}: method {cfg.name!r} cannot take importance from unlabeled images "
                        "(only mas and lmas can: their importance needs no labels)")
    folder = run.checkpoint(task)
    method.load_state_dict(read_tensors(folder / "method.safetensors"), model.device)
    paths, data_dir = image_source(images)
    data = unlabeled_task(paths, model.cfg.image_size, model.device, cfg.max_importance_samples, name=str(images),
                          data_dir=data_dir)
    method.accumulate(method.tower_importance(model, data, (IMAGE_TOWER,)))
    state = run.read_json(f"checkpoints/{task}/state.json")
    state.setdefault("importance_added", []).append({"source": str(images), "images": data.num_samples})
    run.save_checkpoint(task, model, method, state)
    logger.info("added importance from %d images of %s to checkpoint %s", data.num_samples, images, task)
    return {"checkpoint": task, "images": data.num_samples, "source": str(images)}


def importance_summary(run_dir: str | Path, task: str | None = None) -> list[dict]:
    """Per parameter of a checkpoint (default: the latest): name, numel, mean and max of omega."""
    run = RunDir(run_dir)
    done = _completed(run)
    omega = _omega(run, task or done[-1])
    return [{"name": n, "numel": o.numel(), "mean": float(o.float().mean()), "max": float(o.float().max())}
            for n, o in sorted(omega.items())]


def task_importances(run_dir: str | Path, tower: str = "image_tower") -> dict[str, torch.Tensor]:
    """Each completed task's own importance of one tower, flattened (:func:`concentration.flatten`).

    A checkpoint holds the importance accumulated up to its task; each task's own is recovered with
    the run's accumulation rule (``method.accumulate``, online EWC's gamma), which every quadratic
    penalty applies as ``keep * old + weight * new``.

    Returns:
        task name -> (P,) float64 tensor, in the order the tasks were learned.
    """
    run = RunDir(run_dir)
    done = _completed(run)
    method = create_method(run.config().method)
    if not isinstance(method, QuadraticPenalty):
        raise UserError(f"{run.path}: method {method.name!r} keeps no importance (omega)")
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    keep, weight = float(method.combine(one, zero)), float(method.combine(zero, one))
    out, previous = {}, None
    for task in done:
        total = concentration.flatten(_omega(run, task), tower + ".")
        out[task] = concentration.uncombine(total, previous, keep, weight)
        previous = total
    return out


def task_importance_stats(run_dir: str | Path, tower: str = "image_tower",
                          fractions: tuple[float, ...] = (0.01, 0.1)) -> list[dict]:
    """How each task's own importance (:func:`task_importances`) is spread, and how it overlaps the
    first task's (:mod:`factlearn.continual.concentration`), for one tower of a run's completed tasks.

    Returns:
        one dict per task: ``task``, ``top_share`` (fraction -> share of the task's Omega held by
        that fraction of the tower's entries) and, from the second task on, ``overlap_first``
        (fraction -> share of the first task's top entries among this task's) and ``rank_corr_first``
        (Spearman's rank correlation with the first task's Omega).
    """
    rows, first = [], None
    for task, own in task_importances(run_dir, tower).items():
        row = {"task": task, "top_share": {q: concentration.top_share(own, q) for q in fractions}}
        if first is None:
            first = own
        else:
            row["overlap_first"] = {q: concentration.top_overlap(first, own, q) for q in fractions}
            row["rank_corr_first"] = concentration.rank_correlation(first, own)
        rows.append(row)
    return rows


def importance_agreement(run_a: str | Path, run_b: str | Path, tower: str = "image_tower",
                         fractions: tuple[float, ...] = (0.01, 0.1)) -> list[dict]:
    """How far two runs' own importances agree, task by task (the tasks both completed): e.g. MAS
    with its importance from two different sets of images.

    Returns:
        one dict per shared task: ``task``, ``overlap`` (fraction -> share of run_a's top entries
        among run_b's) and ``rank_corr`` (Spearman's rank correlation).
    """
    a, b = task_importances(run_a, tower), task_importances(run_b, tower)
    rows = []
    for task in (t for t in a if t in b):
        if a[task].shape != b[task].shape:
            raise UserError(f"{run_a} and {run_b}: the importances of {task} differ in shape (other models)")
        rows.append({"task": task, "overlap": {q: concentration.top_overlap(a[task], b[task], q) for q in fractions},
                     "rank_corr": concentration.rank_correlation(a[task], b[task])})
    return rows


def _completed(run: RunDir) -> list[str]:
    run.require()
    done = run.completed()
    if not done:
        raise UserError(f"{run.path} has no completed task yet")
    return done


def _omega(run: RunDir, task: str) -> dict[str, torch.Tensor]:
    state = read_tensors(run.checkpoint(task) / "method.safetensors")
    omega = {k[len("omega.") :]: v for k, v in state.items() if k.startswith("omega.")}
    if not omega:
        raise UserError(f"{run.path}: method {run.config().method.name!r} keeps no importance (omega)")
    return omega
