"""The lambda trade-off of a sweep (issue 17): as lambda grows, a method keeps more of the old tasks
and learns the new one less. Per method (or variant), each lambda is a point: old-task accuracy
(B1 after B2 for two tasks; the mean over the tasks before the last otherwise) against new-task
accuracy (the last task after it), on the VALIDATION split; finetune and joint are single points.
At equal plasticity (new-task accuracy), the curve that keeps more of the old task protects better.

The reported lambda of each method is picked by one rule, :func:`pick_lambda`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..compare import save_png
from .tables import METRIC_NAMES, Cell, SuiteResults, final_cells, md_table

TIE = 1e-9  # scores closer than this are a tie (the same accuracies summed in another order)
RULE = ("the best mean over the tasks of the final {metric} (standard evaluation) on the validation split, "
        "each task's accuracy averaged over the seeds; ties go to the smaller lambda")


def pick_lambda(points: Mapping[float, Sequence[float]]) -> float:
    """The reported lambda of a method: the one whose final accuracies (B1 and B2 after B2 on the
    validation split, each averaged over seeds) have the best mean; a tie (within :data:`TIE`)
    goes to the smaller lambda, the weaker assumption.

    Args:
        points: lambda -> the final accuracy of each task (in [0, 1]).
    Returns:
        The lambda picked.
    """
    if not points:
        raise ValueError("no lambda to pick from")
    scores = {float(lam): statistics.fmean(values) for lam, values in points.items()}
    best = max(scores.values())
    return min(lam for lam, score in scores.items() if score >= best - TIE)


@dataclass
class Point:
    """One run configuration of a curve, over its seeds."""

    label: str  # the entry label of the sweep's tables
    lam: float | None  # None: a method without lambda (finetune, joint)
    old: Cell  # old-task accuracy after the last task
    new: Cell  # the last task's accuracy after it
    tasks: list[float | None]  # each task's final accuracy, averaged over seeds (None: no seed yet)
    seeds: int  # how many seeds it has
    diverged: int = 0  # how many seeds diverged (a lambda too large for the optimizer: never picked)

    @property
    def score(self) -> float | None:
        """The rule's score: the mean over tasks (None while a task has no value, or when a seed
        diverged)."""
        if self.diverged or not self.tasks or None in self.tasks:
            return None
        return statistics.fmean(self.tasks)


def curve(res: SuiteResults, lams: Mapping[str, float | None], proto: str = "standard",
          metric: str = "top1") -> list[Point]:
    """The points of one method's sweep results (``lams``: entry label -> its lambda), by lambda."""
    if not res.tasks:
        return []
    old_tasks, last = res.tasks[:-1], res.tasks[-1]
    points = []
    for label, cells in final_cells(res, proto, metric).items():
        runs, seeds = res.metrics[label], res.seeds[label]
        old = Cell.of(seeds, [statistics.fmean(m.final(proto)[t][metric] for t in old_tasks) if old_tasks
                              else None for m in runs])
        points.append(Point(label, lams.get(label), old, cells[last], [cells[t].mean for t in res.tasks], len(runs),
                            len(res.diverged.get(label, ()))))
    return sorted(points, key=lambda p: -1.0 if p.lam is None else p.lam)


def chosen(points: list[Point], seeds: int) -> Point | None:
    """The point :func:`pick_lambda` picks among those with every seed; None until every lambda
    of the curve has them all (or for a method without lambda). A lambda at which a seed diverged
    counts as done but is never picked (None when every lambda diverged)."""
    if not points or any(p.lam is None or p.seeds + p.diverged < seeds for p in points):
        return None
    if any(p.score is None and not p.diverged for p in points):
        return None
    finite = {p.lam: p.tasks for p in points if not p.diverged}
    if not finite:
        return None
    lam = pick_lambda(finite)
    return next(p for p in points if p.lam == lam)


def tradeoff_table(curves: dict[str, list[Point]], picked: dict[str, Point | None], old: str, new: str) -> str:
    """Every point of every curve: lambda, old and new task, their mean; ``*`` marks the lambda picked."""
    rows = []
    for name, points in curves.items():
        for p in points:
            mark = "*" if picked.get(name) is p else ""
            mean = f"diverged ({p.diverged} seed{'s' * (p.diverged > 1)})" if p.diverged else \
                "-" if p.score is None else f"{100 * p.score:.1f}"
            rows.append([name, "-" if p.lam is None else f"{p.lam:g}{mark}", p.old.text(), p.new.text(), mean])
    return md_table(["method", "λ", f"{old} (old)", f"{new} (new)", "mean over tasks"], rows)


def tradeoff_figure(curves: dict[str, dict[str, list[Point]]], picked: dict[str, Point | None], old: str,
                    new: str, title: str, path: Path, rule_metric: str = "top1") -> Path:
    """Old- against new-task accuracy, one panel per metric (``curves``: metric -> method -> points):
    a line per method with each lambda written at its point (the one picked, by ``rule_metric``,
    ringed), finetune and joint as single markers; mean over seeds, with the std as error bars."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6.4 * len(curves), 5.6), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False).ravel()
    for ax, (metric, by_name) in zip(axes, curves.items()):
        for k, (name, points) in enumerate(by_name.items()):
            points = [p for p in points if p.old.mean is not None and p.new.mean is not None]
            if not points:
                continue
            x, y = np.array([p.new.mean for p in points]), np.array([p.old.mean for p in points])
            xerr = [p.new.std or 0 for p in points]
            yerr = [p.old.std or 0 for p in points]
            if points[0].lam is None:  # finetune, joint
                style = {"fmt": "*", "color": "k"} if name == "finetune" else {"fmt": "s", "color": "grey"}
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, ms=10, label=name, zorder=3, **style)
                continue
            line = ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=4, lw=1.2, capsize=2, label=name,
                               color=f"C{k % 10}")
            for p, xi, yi in zip(points, x, y):
                ax.annotate(f"{p.lam:g}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=line[0].get_color())
            best = picked.get(name) if metric == rule_metric else None
            if best is not None and best in points:
                ax.plot([best.new.mean], [best.old.mean], "o", ms=11, mfc="none", color=line[0].get_color())
        ax.set_xlabel(f"new task: {new} after {new}, {METRIC_NAMES[metric]}")
        ax.set_ylabel(f"old task: {old} after {new}, {METRIC_NAMES[metric]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_png(fig, path)


def old_new_names(tasks: list[str]) -> tuple[str, str]:
    """The axes' names: the old task(s) and the new one (``B1`` and ``B2``; ``B1-B3`` and ``B4``)."""
    if len(tasks) <= 2:
        return tasks[0], tasks[-1]
    return f"{tasks[0]}-{tasks[-2]}", tasks[-1]

