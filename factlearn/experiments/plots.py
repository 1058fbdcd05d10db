"""A suite's figures (PNG): its own figure (final accuracy per task, the adaptation halves or the
shifted style's columns, or the monitored group's curve; mean ± std over seeds) and :func:`factlearn.compare.compare_plots` of the
first seed's runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..compare import compare_plots, save_png
from ..results import PROTOCOLS
from .config import TOPIC_SUITES, SuiteSpec
from .tables import (
    COLUMN_CELLS,
    METRIC_NAMES,
    METRICS,
    VS_BASELINE,
    Cell,
    SuiteResults,
    final_cells,
    monitored_curve,
)

COLUMN_FIGURES = {"adaptation": ("halves", "Importance from one half of {first}"),
                  "adaptation-facts": ("halves", "Importance from one half of {first}"),
                  "adaptation-groups": ("halves", "Importance from one half of {first}"),
                  "shift": ("shift", "Importance from clean or restyled images of {first}")}  # file stem, title


def suite_plots(out: Path, suite: str, sc: SuiteSpec, res: SuiteResults, protocol: str = "scratch") -> list[Path]:
    """Write the figures of a suite trained under ``protocol`` under ``out/plots/<suite>/``; returns
    the PNG files to show (compare_plots' per-run matrices are left in the folder, not listed)."""
    folder = out / "plots" / suite
    runs = [str(p) for p in res.seed0.values()]
    if not runs:
        return []
    if suite in COLUMN_CELLS:
        stem, _ = COLUMN_FIGURES[suite]
        written = [_columns_figure(res, suite, proto, protocol, folder / f"{stem}_{proto}.png") for proto in PROTOCOLS]
    elif suite in TOPIC_SUITES:
        written = [_topic_figure(res, sc.group, proto, protocol, folder / f"group_{sc.group}_{proto}.png")
                   for proto in PROTOCOLS]
    else:
        written = [_final_figure(res, suite, proto, protocol, folder / f"final_{proto}.png") for proto in PROTOCOLS]
    for proto in PROTOCOLS:
        pngs = compare_plots(runs, folder / proto, list(METRICS), proto)
        written += sorted(p for p in pngs if p.name.startswith("sequence_"))
    return written


def _figure(ncols: int):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False).ravel()


def _bars(ax, values: dict[str, dict[str, Cell]], ylabel: str) -> None:
    """Grouped bars: one group per row label, one bar per column, mean with the std over seeds."""
    labels = list(values)
    columns = list(dict.fromkeys(c for v in values.values() for c in v))
    width = 0.8 / len(columns)
    for k, col in enumerate(columns):
        cells = [values[lab].get(col, Cell((), ())) for lab in labels]
        means = [np.nan if c.mean is None else c.mean for c in cells]
        stds = [c.std or 0 for c in cells]
        ax.bar(np.arange(len(labels)) + (k - (len(columns) - 1) / 2) * width, means, width, yerr=stds, label=col)
    ax.set_xticks(range(len(labels)), [textwrap.fill(lab, 16) for lab in labels], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _columns_figure(res: SuiteResults, suite: str, proto: str, protocol: str, path: Path) -> Path:
    fig, axes = _figure(len(METRICS))
    for ax, metric in zip(axes, METRICS):
        _bars(ax, COLUMN_CELLS[suite](res, proto, metric), f"{METRIC_NAMES[metric]} after {res.tasks[-1]}")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{COLUMN_FIGURES[suite][1].format(first=res.tasks[0])} ({proto} evaluation, {protocol} protocol)")
    return save_png(fig, path)


def _final_figure(res: SuiteResults, suite: str, proto: str, protocol: str, path: Path) -> Path:
    """Each task's accuracy after the last task, and their mean, per method (mean ± std over seeds)."""
    fig, axes = _figure(len(METRICS))
    for ax, metric in zip(axes, METRICS):
        values = {label: {k: c for k, c in cells.items() if k not in ("BWT", VS_BASELINE)}
                  for label, cells in final_cells(res, proto, metric).items()}
        _bars(ax, values, f"{METRIC_NAMES[metric]} after {res.tasks[-1]}")
    axes[0].legend(fontsize=8, ncols=len(res.tasks) + 1)
    fig.suptitle(f"{suite}: each task's accuracy after the last one ({proto} evaluation, {protocol} protocol)")
    return save_png(fig, path)


def _topic_figure(res: SuiteResults, group: str, proto: str, protocol: str, path: Path) -> Path:
    fig, axes = _figure(len(METRICS))
    x = np.arange(len(res.tasks))
    for ax, metric in zip(axes, METRICS):
        for label in res.metrics:
            curves = np.array([c for p in res.probes[label].values() for c in monitored_curve(p, res.tasks, proto, metric)])
            if not len(curves):
                continue
            mean = curves.mean(0)
            ax.plot(x, mean, marker="o", label=label)
            if len(curves) > 1:
                std = curves.std(0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xticks(x, [f"after {t}" for t in res.tasks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"{METRIC_NAMES[metric]} on group '{group}'")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # no curve: runs complete, the group not probed yet
        axes[0].legend(fontsize=8)
    fig.suptitle(f"Monitored group '{group}': its facts trained so far ({proto} evaluation, {protocol} protocol)")
    return save_png(fig, path)


