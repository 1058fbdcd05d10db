"""Side-by-side comparison of runs from their metrics.json: a table and PNG plots.

Both candidate protocols are shown by default (:func:`shared_protocols`): with a dozen facts per
task the standard protocol's top-5 is near 1 for any model, and the generalized one (every fact
seen so far) tells the methods apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_path
from .results import PROTOCOLS, Metrics
from .run import RunDir


@dataclass
class _Run:
    path: str
    label: str  # unique among the compared runs, safe in a file name
    metrics: Metrics
    protocol: str  # the one compared

    @property
    def method(self) -> str:
        return self.metrics.method

    @property
    def tasks(self) -> list[str]:
        return self.metrics.tasks

    def final(self, task: str, metric: str) -> float:
        return self.metrics.final(self.protocol)[task][metric]

    def matrix(self, metric: str) -> list[list[float]]:
        return self.metrics.matrix(metric, self.protocol)

    def sequence(self, metric: str) -> dict:
        return self.metrics.sequence(metric, self.protocol)


def _load_runs(run_dirs: list[str], protocol: str | None) -> list[_Run]:
    runs = []
    for path in run_dirs:
        RunDir(path).require()
        metrics = Metrics.read(path)
        metrics.block(protocol)  # a missing protocol is named here, once
        runs.append(_Run(path, "", metrics, protocol or metrics.protocol))
    for run in runs[1:]:
        if run.tasks != runs[0].tasks:
            raise UserError(f"{run.path}: tasks {run.tasks} differ from {runs[0].path}'s {runs[0].tasks}")
    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(r.path).resolve().name) or "run" for r in runs]
    for i, run in enumerate(runs):
        run.label = names[i] if names.count(names[i]) == 1 else f"{i + 1}_{names[i]}"
    return runs


def shared_protocols(run_dirs: list[str]) -> list[str]:
    """The protocols (standard first) every run's metrics.json holds: what ``compare`` shows by default."""
    runs = _load_runs(run_dirs, None)
    return [p for p in PROTOCOLS if all(p in run.metrics.doc["protocols"] for run in runs)]


def compare_table(run_dirs: list[str], metrics: list[str], protocol: str | None = None) -> str:
    """Markdown table, one row per run: each task's final metric after the last task trained,
    then per metric the average accuracy over the tasks trained and BWT (metrics.json's
    ``sequence`` block; BWT < 0 means forgetting, ``-`` when only one task was trained)."""
    runs = _load_runs(run_dirs, protocol)
    tasks = runs[0].tasks
    header = ["run", "method"] + [f"{t} {m}" for m in metrics for t in tasks]
    header += [f"{stat} {m}" for m in metrics for stat in ("avg", "BWT")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run.path, run.method]
        cells += [_cell(run.final(t, m)) for m in metrics for t in tasks]
        cells += [_cell(run.sequence(m)[key]) for m in metrics for key in ("average", "bwt")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_plots(run_dirs: list[str], out_dir: str | Path, metrics: list[str], protocol: str | None = None) -> list[Path]:
    """PNG plots of the compared runs, one set per metric; returns the files written.

    - ``<run>_<metric>_matrix.png`` per run: the accuracy matrix as a heatmap, row i = after
      training task i, column j = evaluated on task j, values annotated.
      Tasks not trained yet at row i (j > i) are greyed out, without a number.
    - ``sequence_<metric>.png``: one subplot per task, its accuracy after each task trained,
      one line per run; the dashed line marks where that task was trained.
    - ``tradeoff_<metric>.png`` (two tasks trained or more): the old tasks' mean against the newest
      task, after the last task trained, one point per run (as the reproduction's lambda trade-off).
    """
    runs = _load_runs(run_dirs, protocol)
    out_dir = Path(out_dir)
    written = []
    for metric in metrics:
        for run in runs:
            written.append(save_png(_matrix_figure(run, metric), out_dir / f"{run.label}_{metric}_matrix.png"))
        written.append(save_png(_sequence_figure(runs, metric), out_dir / f"sequence_{metric}.png"))
        if min(len(run.matrix(metric)) for run in runs) >= 2:
            written.append(save_png(_tradeoff_figure(runs, metric), out_dir / f"tradeoff_{metric}.png"))
    return written


def _matrix_figure(run: _Run, metric: str):
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    acc = np.array(run.matrix(metric), dtype=float)  # (tasks trained, tasks evaluated)
    rows, cols = acc.shape
    untrained = np.arange(cols)[None, :] > np.arange(rows)[:, None]  # (rows, cols): task j after task i < j
    fig = Figure(figsize=(1.1 * cols + 2.2, 0.9 * rows + 1.6), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_array(acc, untrained), vmin=0.0, vmax=1.0, cmap=cmap)
    for i in range(rows):
        for j in range(cols):
            if untrained[i, j]:
                ax.text(j, i, "not\ntrained", ha="center", va="center", fontsize=7, color="dimgrey")
                continue
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if acc[i, j] > 0.6 else "white")
    ax.set_xticks(range(cols), run.tasks[:cols])
    ax.set_yticks(range(rows), run.tasks[:rows])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after training")
    ax.set_title(f"{run.label} ({run.method}): {metric}, {run.protocol}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _sequence_figure(runs: list[_Run], metric: str):
    from matplotlib.figure import Figure

    tasks = runs[0].tasks
    ncols = min(len(tasks), 4)
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for j, (ax, task) in enumerate(zip(axes, tasks)):
        for run in runs:
            acc = [row[j] for row in run.matrix(metric)]  # task j after each task trained
            ax.plot(range(len(acc)), acc, marker="o", label=f"{run.method} ({run.label})")
        ax.axvline(j, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(task)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_xlabel("after training")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    axes[0].set_ylabel(metric)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(runs), 3))
    fig.suptitle(f"{metric} of each task across the sequence ({runs[0].protocol})")
    return fig


def _tradeoff_figure(runs: list[_Run], metric: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for k, run in enumerate(runs):
        last = run.matrix(metric)[-1]  # after the last task trained
        newest = len(run.matrix(metric)) - 1
        old = float(np.mean(last[:newest]))
        ax.plot([last[newest]], [old], "o", ms=8, color=f"C{k % 10}", label=f"{run.method} ({run.label})")
        ax.annotate(run.label, (last[newest], old), textcoords="offset points", xytext=(5, 4), fontsize=8)
    trained = runs[0].tasks[: len(runs[0].matrix(metric))]
    old_names = trained[0] if len(trained) == 2 else f"{trained[0]}-{trained[-2]}"
    ax.set_xlabel(f"new task: {trained[-1]} after {trained[-1]}, {metric}")
    ax.set_ylabel(f"old tasks: mean of {old_names} after {trained[-1]}, {metric}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"old vs new task: {metric}, {runs[0].protocol}", fontsize=10)
    return fig


def save_png(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _cell(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
