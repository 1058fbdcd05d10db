"""summary.json: every number of a results folder's tables, for tools that should not parse markdown.

Written next to the markdown (atomically) by the reproduction (:mod:`.report`) and the lambda
sweep (:mod:`.sweep`), from the same :class:`~factlearn.experiments.tables.Cell` objects the
tables show::

    {"format": "factlearn-experiments-summary", "version": 1, "factlearn_version": "...",
     "written": "2026-12-04 10:00 UTC", "scale": "quick", "protocol": "faithful",
     "images": "test" | "validation",          # what the runs were evaluated on
     "data": "/path/to/world", "seeds": [0, 1, 2],
     "records": [{"protocol": "faithful", "suite": "two-task", "entry": "mas", "variant": "mas",
                  "lam": null, "evaluation": "standard", "metric": "top1", "task": "B1", "after": "B2",
                  "mean": 0.81, "std": 0.012, "n": 3, "seeds": [0, 1, 2]}, ...]}

One record per protocol, suite, entry (a method, or a method with its importance source, or a
protocol's variant: the tables' row label), evaluation protocol, metric, task and checkpoint:
``after`` is the task after which it was measured. ``task`` is a task (``B1``), or a table's
column: ``mean`` and ``BWT`` of the final accuracy, ``B1 test`` / ``B11 images`` (adaptation), ``B1 test, dark`` (shift),
``group <name>`` (topic). ``mean`` and ``std`` are fractions (the tables show percent), ``std``
is the sample standard deviation (null with one seed), ``seeds`` the training seeds the values
come from (``n`` of them). ``lam`` is the run's lambda where the suite varies it (the sweep).
"""

from __future__ import annotations

import json
from pathlib import Path

import factlearn

from ..io import atomic_write_text
from ..results import PROTOCOLS
from .tables import COLUMN_CELLS, METRICS, Cell, SuiteResults, final_cells, matrix_cells, topic_cells

FORMAT = "factlearn-experiments-summary"
FILE = "summary.json"


def record(protocol: str, suite: str, entry: str, variant: str, evaluation: str, metric: str, task: str,
           after: str, cell: Cell, lam: float | None = None) -> dict:
    """One record of summary.json (see the module's docstring)."""
    return {"protocol": protocol, "suite": suite, "entry": entry, "variant": variant, "lam": lam,
            "evaluation": evaluation, "metric": metric, "task": task, "after": after, "mean": cell.mean,
            "std": cell.std, "n": len(cell.values), "seeds": list(cell.seeds)}


def suite_records(protocol: str, suite: str, res: SuiteResults, group: str | None = None,
                  lams: dict[str, float | None] | None = None, entry: str | None = None) -> list[dict]:
    """The records of a suite's results: the final accuracy (each task, mean, BWT) and the rows of
    the accuracy matrix before it, or the adaptation columns, or the monitored group's curve
    (``group``: the topic suite's). ``lams``: entry label -> its lambda; ``entry``: the entry of every
    record (a sweep's method), instead of each row's label."""
    if not res.tasks:
        return []
    lams, last, out = lams or {}, res.tasks[-1], []

    def add(label: str, evaluation: str, metric: str, task: str, after: str, cell: Cell) -> None:
        out.append(record(protocol, suite, entry or label, res.variants.get(label, label), evaluation, metric, task,
                          after, cell, lams.get(label)))

    for evaluation in PROTOCOLS:
        for metric in METRICS:
            if suite in COLUMN_CELLS:
                for label, cells in COLUMN_CELLS[suite](res, evaluation, metric).items():
                    for column, cell in cells.items():
                        add(label, evaluation, metric, column, last, cell)
            elif group is not None:
                for label, cells in topic_cells(res, evaluation, metric).items():
                    for column, cell in cells.items():
                        add(label, evaluation, metric, f"group {group}", column.removeprefix("after "), cell)
            else:
                for label, cells in final_cells(res, evaluation, metric).items():
                    for column, cell in cells.items():
                        add(label, evaluation, metric, column, last, cell)
                    if not res.metrics[label]:
                        continue
                    rows = matrix_cells(res, label, evaluation, metric)[:-1]  # the last row is the final accuracy
                    for after, row in zip(res.tasks, rows):
                        for task, cell in zip(res.tasks, row):
                            if cell is not None:
                                add(label, evaluation, metric, task, after, cell)
    return out


def write_summary(out: Path, *, scale: str, protocol: str, images: str, data: Path, seeds: list[int],
                  records: list[dict], written: str) -> Path:
    """Write ``out/summary.json`` atomically; returns its path."""
    doc = {"format": FORMAT, "version": 1, "factlearn_version": factlearn.__version__, "written": written,
           "scale": scale, "protocol": protocol, "images": images, "data": str(data), "seeds": list(seeds),
           "records": records}
    path = out / FILE
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path
