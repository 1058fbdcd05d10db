"""A suite's results and its markdown tables: mean ± std over seeds of the complete runs'
metrics (read through :class:`factlearn.results.Metrics`) and of their probes."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..results import PROTOCOLS, Metrics
from .config import SuiteSpec
from .execute import read_metrics, read_probe
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


def collect(plan: Plan, suite: str) -> SuiteResults:
    """The results of a suite's complete runs (incomplete and missing ones are left out)."""
    seq, entries = plan.suites[suite]
    res = SuiteResults([], {}, {}, {})
    for e in entries:
        res.metrics[e.label], res.probes[e.label] = [], {}
        for seed in plan.seeds:
            run = plan.runs[f"{seq}/seed{seed}/{e.variant}"]
            metrics = read_metrics(plan.run_dir(run))
            if metrics is None or not metrics.complete():
                continue
            res.tasks = metrics.tasks
            res.metrics[e.label].append(metrics)
            res.seed0.setdefault(e.label, plan.run_dir(run))
            for view in run.probes:
                doc = read_probe(plan, run, view)
                if doc is not None:
                    res.probes[e.label].setdefault(view, []).append(doc)
    return res


def mean_std(values: list[float]) -> str:
    """Percent, one decimal: ``72.8 ± 1.2`` over seeds, ``72.8`` for one, ``-`` for none."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def final_table(res: SuiteResults, proto: str, metric: str) -> str:
    """Per entry: each task's accuracy after the last task, their mean, and BWT (< 0: forgetting)."""
    rows = []
    for label, runs in res.metrics.items():
        cells = [mean_std([m.final(proto)[t][metric] for m in runs]) for t in res.tasks]
        cells += [mean_std([m.sequence(metric, proto)["average"] for m in runs]),
                  mean_std([m.sequence(metric, proto)["bwt"] for m in runs])]
        rows.append([label, *cells])
    return md_table(["method", *res.tasks, "mean", "BWT"], rows)


def matrix_table(runs: list[Metrics], tasks: list[str], proto: str, metric: str) -> str:
    """Row i: after training task i; column j: accuracy on task j (tasks not trained yet left blank)."""
    matrices = [m.matrix(metric, proto) for m in runs]
    rows = [[f"after {ti}", *(mean_std([m[i][j] for m in matrices]) if j <= i else "" for j in range(len(tasks)))]
            for i, ti in enumerate(tasks)]
    return md_table(["", *tasks], rows)


def adaptation_values(res: SuiteResults, proto: str, metric: str) -> dict[str, dict[str, list[float]]]:
    """Per entry, after the last task: B1 and B2 test accuracy and accuracy on each half's images."""
    first, last = res.tasks[0], res.tasks[-1]
    out = {}
    for label, runs in res.metrics.items():
        vals = {f"{t} test": [m.final(proto)[t][metric] for m in runs] for t in res.tasks}
        for view, probes in sorted(res.probes[label].items()):
            half = view.rsplit("-", 1)[-1]
            vals[f"{half} images"] = [p["after"][last][proto][first][metric] for p in probes]
        out[label] = vals
    return out


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


def suite_sections(suite: str, sc: SuiteSpec, res: SuiteResults) -> list[str]:
    """The markdown tables of a suite; the first is its headline table."""
    if not res.tasks:
        return ["No complete run yet."]
    if suite == "adaptation":
        return [_adaptation_section(res, proto) for proto in PROTOCOLS]
    if suite == "topic":
        return [_topic_section(res, sc.group, proto, metric) for proto in PROTOCOLS for metric in METRICS]
    out = [f"### Final accuracy after {res.tasks[-1]}: {METRIC_NAMES[metric]}, {proto} protocol\n\n"
           + final_table(res, proto, metric) for proto in PROTOCOLS for metric in METRICS]
    if len(res.tasks) > 2:
        for label, runs in res.metrics.items():
            if runs:
                out.append(f"<details><summary>Accuracy matrix: {label} (standard protocol)</summary>\n\n"
                           + "\n\n".join(f"{METRIC_NAMES[m]}\n\n" + matrix_table(runs, res.tasks, "standard", m)
                                         for m in METRICS) + "\n\n</details>")
    return out


def _adaptation_section(res: SuiteResults, proto: str) -> str:
    values = {m: adaptation_values(res, proto, m) for m in METRICS}
    cols = list(dict.fromkeys(c for v in values["top1"].values() for c in v))
    rows = [[label, *(mean_std(values[m][label].get(c, [])) for m in METRICS for c in cols)] for label in res.metrics]
    return (f"### After {res.tasks[-1]}, {proto} protocol\n\n"
            + md_table(["method", *(f"{c} {METRIC_NAMES[m]}" for m in METRICS for c in cols)], rows))


def _topic_section(res: SuiteResults, group: str, proto: str, metric: str) -> str:
    rows = []
    for label in res.metrics:
        curves = [c for p in res.probes[label].values() for c in monitored_curve(p, res.tasks, proto, metric)]
        rows.append([label, *(mean_std([c[i] for c in curves]) for i in range(len(res.tasks)))])
    return (f"### Group `{group}`: {METRIC_NAMES[metric]}, {proto} protocol\n\n"
            f"Accuracy on the test images of the group's facts trained so far, after each task.\n\n"
            + md_table(["method", *(f"after {t}" for t in res.tasks)], rows))
