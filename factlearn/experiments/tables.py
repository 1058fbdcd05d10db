"""A suite's results and its markdown tables: mean ± std over seeds of the complete runs'
metrics (read through :class:`factlearn.results.Metrics`) and of their probes.

Every number of a table is a :class:`Cell` (a quantity's values and the seeds they come from), made
by one function per kind of table (:func:`final_cells`, :func:`matrix_cells`,
:func:`adaptation_cells`, :func:`topic_cells`); the markdown shows them and summary.json
(:mod:`.summary`) records them, so the two always agree.

Two meanings of "protocol" meet here: the TRAINING protocol of the runs (scratch, faithful, modern:
:mod:`.protocols`), named in every heading, and the EVALUATION protocol (standard: among the task's
facts; generalized: among all facts seen so far), called "evaluation" in the headings.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..results import PROTOCOLS, Metrics
from .config import TOPIC_SUITES, SuiteSpec
from .execute import read_metrics, read_probe, run_diverged
from .plan import Plan

METRICS = ("top1", "top5")  # the metrics the tables and plots show
METRIC_NAMES = {"top1": "top-1", "top5": "top-5"}


@dataclass
class SuiteResults:
    """The metrics of a suite's complete runs: per entry, one metrics.json (and probes) per seed."""

    tasks: list[str]
    metrics: dict[str, list[Metrics]]  # entry label -> one per seed
    probes: dict[str, dict[str, list[dict]]]  # entry label -> view -> probe documents (of :mod:`.probe`)
    seed0: dict[str, Path]  # entry label -> run directory of the first seed (for plots)
    seeds: dict[str, list[int]] = field(default_factory=dict)  # entry label -> the seed of each metrics
    probe_seeds: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # label -> view -> seeds
    variants: dict[str, str] = field(default_factory=dict)  # entry label -> its runs' variant
    diverged: dict[str, list[int]] = field(default_factory=dict)  # entry label -> seeds whose run diverged


def collect(plan: Plan, suite: str) -> SuiteResults:
    """The results of a suite's complete runs (incomplete and missing ones are left out; the seeds
    whose run diverged are listed apart, :attr:`SuiteResults.diverged`), with the probes of the
    suite's own views (a run shared by suites is probed on every suite's)."""
    seq, entries = plan.suites[suite]
    views = plan.suite_probes.get(suite)
    res = SuiteResults([], {}, {}, {})
    for e in entries:
        res.metrics[e.label], res.probes[e.label], res.seeds[e.label] = [], {}, []
        res.probe_seeds[e.label], res.variants[e.label], res.diverged[e.label] = {}, e.variant, []
        for seed in plan.seeds:
            run = plan.runs[f"{seq}/seed{seed}/{e.variant}"]
            metrics = read_metrics(plan.run_dir(run))
            if metrics is None or not metrics.complete():
                if run_diverged(plan.run_dir(run)) is not None:
                    res.diverged[e.label].append(seed)
                continue
            res.tasks = metrics.tasks
            res.metrics[e.label].append(metrics)
            res.seeds[e.label].append(seed)
            res.seed0.setdefault(e.label, plan.run_dir(run))
            for view in run.probes:
                if views is not None and view not in views:
                    continue
                doc = read_probe(plan, run, view)
                if doc is not None:
                    res.probes[e.label].setdefault(view, []).append(doc)
                    res.probe_seeds[e.label].setdefault(view, []).append(seed)
    return res


@dataclass(frozen=True)
class Cell:
    """One number of a table: a quantity's values over the seeds that have one (a missing or NaN
    value leaves its seed out)."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, seeds: list[int], values: list[float | None]) -> Cell:
        """The cell of ``values`` (aligned with ``seeds``)."""
        kept = [(s, v) for s, v in zip(seeds, values) if v is not None and not math.isnan(v)]
        return cls(tuple(s for s, _ in kept), tuple(float(v) for _, v in kept))

    @property
    def mean(self) -> float | None:
        """The mean over the seeds (None: no value)."""
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation over the seeds (None with fewer than two)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        """Percent, one decimal: ``72.8 ± 1.2`` over seeds, ``72.8`` for one, ``-`` for none."""
        if self.mean is None:
            return "-"
        return f"{100 * self.mean:.1f}" if self.std is None else f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"


def mean_std(values: list[float]) -> str:
    """Percent, one decimal: ``72.8 ± 1.2`` over seeds, ``72.8`` for one, ``-`` for none."""
    return Cell.of(list(range(len(values))), values).text()


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


BASELINE = "finetune"  # the entry the paired differences are taken against
VS_BASELINE = "vs finetune"  # the column of :func:`final_cells`: the mean's paired difference


def final_cells(res: SuiteResults, proto: str, metric: str) -> dict[str, dict[str, Cell]]:
    """Per entry: each task's accuracy after the last task, their ``mean``, ``BWT`` (< 0:
    forgetting) and, when the suite has a finetune entry, ``vs finetune``: the mean minus
    finetune's mean of the same training seed, over the seeds both have (paired: the seeds share
    the split and, up to B1 for the forked runs, the first task; a paired difference leaves out
    what the seeds have in common)."""
    out = {}
    for label, runs in res.metrics.items():
        seeds = res.seeds[label]
        cells = {t: Cell.of(seeds, [m.final(proto)[t][metric] for m in runs]) for t in res.tasks}
        cells["mean"] = Cell.of(seeds, [m.sequence(metric, proto)["average"] for m in runs])
        cells["BWT"] = Cell.of(seeds, [m.sequence(metric, proto)["bwt"] for m in runs])
        out[label] = cells
    base = out.get(BASELINE)
    if base is not None:
        ref = dict(zip(base["mean"].seeds, base["mean"].values))
        for label, cells in out.items():
            if label != BASELINE:
                pairs = [(s, v - ref[s]) for s, v in zip(cells["mean"].seeds, cells["mean"].values) if s in ref]
                cells[VS_BASELINE] = Cell.of([s for s, _ in pairs], [d for _, d in pairs])
    return out


def final_table(res: SuiteResults, proto: str, metric: str) -> str:
    """Per entry: each task's accuracy after the last task, their mean, BWT (< 0: forgetting) and
    the mean's paired difference to finetune (when the suite has finetune)."""
    cells = final_cells(res, proto, metric)
    extra = [VS_BASELINE] if BASELINE in cells else []
    columns = [*res.tasks, "mean", "BWT", *extra]
    return md_table(["method", *columns],
                    [[label, *(row[c].text() if c in row else "-" for c in columns)] for label, row in cells.items()])


def matrix_cells(res: SuiteResults, label: str, proto: str, metric: str) -> list[list[Cell | None]]:
    """Row i: after training task i; column j: the entry's accuracy on task j (None: not trained yet)."""
    matrices = [m.matrix(metric, proto) for m in res.metrics[label]]
    n = len(res.tasks)
    return [[Cell.of(res.seeds[label], [m[i][j] for m in matrices]) if j <= i else None for j in range(n)]
            for i in range(n)]


def matrix_table(res: SuiteResults, label: str, proto: str, metric: str) -> str:
    """The accuracy matrix of an entry (tasks not trained yet left blank)."""
    rows = matrix_cells(res, label, proto, metric)
    return md_table(["", *res.tasks], [[f"after {t}", *(c.text() if c else "" for c in row)]
                                      for t, row in zip(res.tasks, rows)])


def adaptation_cells(res: SuiteResults, proto: str, metric: str) -> dict[str, dict[str, Cell]]:
    """Per entry, after the last task: B1 and B2 test accuracy and accuracy on each half's probe view:
    ``B11 images`` (image halves: the half's own images) or ``B11 test`` (fact halves, a view
    named ``...-B11-test``: the test images of the half's facts)."""
    first, last = res.tasks[0], res.tasks[-1]
    out = {}
    for label, runs in res.metrics.items():
        cells = {f"{t} test": Cell.of(res.seeds[label], [m.final(proto)[t][metric] for m in runs]) for t in res.tasks}
        for view, probes in sorted(res.probes[label].items()):
            parts = view.split("-")
            column = f"{parts[-2]} test" if parts[-1] == "test" else f"{parts[-1]} images"
            cells[column] = Cell.of(res.probe_seeds[label][view],
                                              [p["after"][last][proto][first][metric] for p in probes])
        out[label] = cells
    return out


def shift_cells(res: SuiteResults, proto: str, metric: str) -> dict[str, dict[str, Cell]]:
    """Per entry: the first task's test accuracy right after it (``B1 test after B1``: what there is
    to keep), then after the last task each task's (``B1 test``); the same on the test images in the
    shifted style, from the probe view ``test-<style>`` (``B1 test, dark after B1``, ``B1 test, dark``)."""
    first, last = res.tasks[0], res.tasks[-1]
    out = {}
    for label, runs in res.metrics.items():
        seeds = res.seeds[label]
        cells = {f"{first} test after {first}": Cell.of(seeds, [m.matrix(metric, proto)[0][0] for m in runs])}
        cells.update({f"{t} test": Cell.of(seeds, [m.final(proto)[t][metric] for m in runs]) for t in res.tasks})
        for view, probes in sorted(res.probes[label].items()):
            style, probe_seeds = view.removeprefix("test-"), res.probe_seeds[label][view]
            cells[f"{first} test, {style} after {first}"] = Cell.of(
                probe_seeds, [p["after"][first][proto][first][metric] for p in probes])
            for t in res.tasks:
                cells[f"{t} test, {style}"] = Cell.of(probe_seeds, [p["after"][last][proto][t][metric] for p in probes])
        out[label] = cells
    return out


# the suites whose table is one row of columns per entry, after the last task: their cells
COLUMN_CELLS = {"adaptation": adaptation_cells, "adaptation-facts": adaptation_cells,
                "adaptation-groups": adaptation_cells, "shift": shift_cells}


def monitored_curve(probes: list[dict], tasks: list[str], proto: str, metric: str) -> list[list[float]]:
    """Per seed, after each task: the view's accuracy over the facts of the tasks trained so far
    (an image-weighted mean of the per-task results)."""
    curves = []
    for p in probes:
        curve = []
        for i, after in enumerate(tasks):
            parts = [p["after"][after][proto][t] for t in tasks[: i + 1] if t in p["after"][after][proto]]
            n = sum(x["n"] for x in parts)
            curve.append(sum(x[metric] * x["n"] for x in parts) / n if n else float("nan"))
        curves.append(curve)
    return curves


def topic_cells(res: SuiteResults, proto: str, metric: str) -> dict[str, dict[str, Cell]]:
    """Per entry, after each task (``after B1`` ...): the monitored group's accuracy over its facts
    trained so far (:func:`monitored_curve`), over the seeds that probed it."""
    out = {}
    for label in res.metrics:
        seeds = [s for view in res.probes[label] for s in res.probe_seeds[label][view]]
        curves = [c for p in res.probes[label].values() for c in monitored_curve(p, res.tasks, proto, metric)]
        out[label] = {f"after {t}": Cell.of(seeds, [c[i] for c in curves]) for i, t in enumerate(res.tasks)}
    return out


def suite_sections(suite: str, sc: SuiteSpec, res: SuiteResults, protocol: str = "scratch") -> list[str]:
    """The markdown tables of a suite trained under ``protocol``; the first is its headline table."""
    if not res.tasks:
        return ["No complete run yet."]
    if suite in COLUMN_CELLS:
        return [_columns_section(res, COLUMN_CELLS[suite], proto, protocol) for proto in PROTOCOLS]
    if suite in TOPIC_SUITES:
        return [_topic_section(res, sc.group, proto, metric, protocol) for proto in PROTOCOLS for metric in METRICS]
    out = [f"### Final accuracy after {res.tasks[-1]}: {METRIC_NAMES[metric]}, {proto} evaluation "
           f"({protocol} protocol)\n\n" + final_table(res, proto, metric) for proto in PROTOCOLS for metric in METRICS]
    if len(res.tasks) > 2:
        for label, runs in res.metrics.items():
            if runs:
                out.append(f"<details><summary>Accuracy matrix: {label} (standard evaluation, {protocol} protocol)"
                           "</summary>\n\n" + "\n\n".join(f"{METRIC_NAMES[m]}\n\n" + matrix_table(res, label, "standard", m)
                                                       for m in METRICS) + "\n\n</details>")
    return out


def _columns_section(res: SuiteResults, cells_of, proto: str, protocol: str) -> str:
    cells = {m: cells_of(res, proto, m) for m in METRICS}
    cols = list(dict.fromkeys(c for v in cells["top1"].values() for c in v))
    rows = [[label, *(cells[m][label][c].text() if c in cells[m][label] else "-" for m in METRICS for c in cols)]
            for label in res.metrics]
    return (f"### After {res.tasks[-1]}, {proto} evaluation ({protocol} protocol)\n\n"
            + md_table(["method", *(f"{c} {METRIC_NAMES[m]}" for m in METRICS for c in cols)], rows))


def _topic_section(res: SuiteResults, group: str, proto: str, metric: str, protocol: str) -> str:
    cells = topic_cells(res, proto, metric)
    rows = [[label, *(c.text() for c in row.values())] for label, row in cells.items()]
    return (f"### Group `{group}`: {METRIC_NAMES[metric]}, {proto} evaluation ({protocol} protocol)\n\n"
            f"Accuracy on the test images of the group's facts trained so far, after each task.\n\n"
            + md_table(["method", *(f"after {t}" for t in res.tasks)], rows))
