"""How concentrated each task's importance is, and how it overlaps the first task's: runs compared.

    python scripts/importance_stats.py RUN_DIR [RUN_DIR ...] [--tower image_tower] [--json OUT]
    python scripts/importance_stats.py RUN_DIR [RUN_DIR ...] --between [--json OUT]

Runs are grouped by their path below the runs' common folder with the ``seed<k>`` folders left out
(``semantic4/seed0/mas`` and ``semantic4/seed1/mas`` are two runs of ``semantic4/mas``, or of ``mas``
when every run is under ``semantic4``): per group and task, the mean ± std over its runs of
- the share of the task's own Omega held by its top 1% and top 10% of the tower's entries (0.01 and
  0.10 for uniform anchoring, l2);
- the share of the first task's top 10% that is also in this task's top 10%, and Spearman's rank
  correlation with the first task's Omega.
(:func:`factlearn.importance.task_importance_stats`; the math: :mod:`factlearn.continual.concentration`.)

``--between``: the runs form exactly two groups, paired in the order given (``.../seed0/mas-imp-B11``
with ``.../seed0/mas-imp-B12``: runs that share their model up to the importance, such as variants
forked from one first task); per task, how far the pair's own importances agree: the share of the
first group's top 1% and top 10% also in the second's, and Spearman's rank correlation
(:func:`factlearn.importance.importance_agreement`).

Works on any run of a quadratic-penalty method (mas, lmas, ewc, online_ewc, si, l2).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factlearn.errors import UserError  # noqa: E402
from factlearn.experiments.tables import Cell  # noqa: E402
from factlearn.importance import importance_agreement, task_importance_stats  # noqa: E402

COLUMNS = (("top 1% share", "top_share", 0.01), ("top 10% share", "top_share", 0.1),
           ("top 10% overlap with first", "overlap_first", 0.1), ("rank corr. with first", "rank_corr_first", None))
BETWEEN = (("top 1% overlap", "overlap", 0.01), ("top 10% overlap", "overlap", 0.1), ("rank corr.", "rank_corr", None))


def group_names(runs: list[Path]) -> list[str]:
    """Each run's group: its path below the runs' common folder, ``seed<k>`` folders left out."""
    paths = [[p for p in run.resolve().parts if not re.fullmatch(r"seed\d+", p)] for run in runs]
    common = 0
    while all(len(p) > common + 1 and p[common] == paths[0][common] for p in paths):
        common += 1
    return ["/".join(p[common:]) for p in paths]


def value(row: dict, key: str, fraction: float | None) -> float | None:
    """One statistic of a task's row (None where the row has none: the first task's overlap)."""
    if key not in row:
        return None
    return row[key] if fraction is None else row[key][fraction]


def cell(values: list[float | None]) -> str:
    """``mean ± std`` (``mean`` alone for one run) of the values that are numbers, as fractions."""
    c = Cell.of(list(range(len(values))), values)  # its NaN/None filter, mean and std
    if c.mean is None:
        return ""
    return f"{c.mean:.2f}" if c.std is None else f"{c.mean:.2f} ± {c.std:.2f}"


def table(groups: dict[str, list[list[dict]]], columns=COLUMNS, head: str = "run") -> str:
    """The markdown table: one row per group and task."""
    lines = [f"| {head} | task | runs | " + " | ".join(c for c, _, _ in columns) + " |",
             "|---|---|---:|" + "---:|" * len(columns)]
    for name, runs in groups.items():
        tasks = [r["task"] for r in runs[0]]
        for i, task in enumerate(tasks):
            rows = [run[i] for run in runs if i < len(run)]
            cells = [cell([value(r, key, q) for r in rows]) for _, key, q in columns]
            lines.append(f"| {name} | {task} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def between(runs: list[Path], names: list[str], tower: str) -> tuple[str, dict]:
    """``--between``: the table of the pairs' agreement, and every pair's rows."""
    order = list(dict.fromkeys(names))
    if len(order) != 2:
        raise UserError(f"--between needs runs of exactly two groups, got {len(order)}: {', '.join(order)}")
    a, b = ([r for r, n in zip(runs, names) if n == g] for g in order)
    if len(a) != len(b):
        raise UserError(f"--between: {len(a)} runs of {order[0]} but {len(b)} of {order[1]}; give them in pairs")
    pairs = {f"{x} vs {y}": importance_agreement(x, y, tower) for x, y in zip(a, b)}
    return table({f"{order[0]} vs {order[1]}": list(pairs.values())}, BETWEEN, "runs compared"), pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="Run directories (grouped as above).")
    parser.add_argument("--tower", default="image_tower", choices=("image_tower", "language_tower"))
    parser.add_argument("--between", action="store_true",
                        help="Compare the runs of two groups pairwise instead (see above).")
    parser.add_argument("--json", type=Path, default=None, help="Also write every run's statistics here.")
    args = parser.parse_args(argv)
    groups: dict[str, list[list[dict]]] = {}
    per_run = {}
    try:
        if args.between:
            text, per_run = between(args.runs, group_names(args.runs), args.tower)
        else:
            for run, group in zip(args.runs, group_names(args.runs)):
                stats = task_importance_stats(run, args.tower)
                groups.setdefault(group, []).append(stats)
                per_run[str(run)] = stats
            text = table(groups)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.tower}, each task's own importance:\n")
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tower": args.tower, "runs": per_run}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
