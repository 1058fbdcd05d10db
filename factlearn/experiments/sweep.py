"""Sweep a method's lambda on a validation split and print the table it produced.

    scripts/sweep_lambda.py --method mas [--grid 0.1,1,10,100] [--quick] [--split random] [--tasks 2]
                            [--val-fraction 0.2] [--seeds N] [--out DIR] [--data DIR] [--jobs J]
                            [--metric top1]

Never tuned on test images. The validation split is carved out of the TRAINING images: OUT/data/val
is a data directory holding only the data's training rows (test rows are left out altogether),
without their split column, so factlearn draws a seeded per-fact validation share of them
(``split.test_fraction`` = ``--val-fraction``, ``split.seed`` = the experiments' split seed: at
least one training and one validation image per fact). Each lambda of the grid trains the method
on the same task sequence as the reproduction (``factlearn split`` of the same facts with the same
seed) and config (configs/reproduce/<scale>.yaml, methods.yaml for the other method keys); its
"test" metrics are validation metrics. The best lambda maximises the mean over tasks of the final
``--metric`` (standard protocol), averaged over seeds; ties go to the smaller lambda. Put it into
configs/reproduce/methods.yaml by hand.

Runs go to OUT (default results/sweep-quick or results/sweep-full), resumable like a reproduction's
(:mod:`.reproduce`, whose planning, preparation and execution it uses); the table is also written
to OUT/<method>.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from ..data.manifest import load_dataset
from ..data.splits import image_splits
from ..errors import UserError
from ..io import atomic_write_text
from ..results import PROTOCOLS
from .children import check_child_factlearn
from .config import Experiments, load_experiments, method_config
from .execute import config_mismatch, execute
from .plan import Entry, Plan, RunSpec
from .prepare import ensure_world, write_config, write_tasks_files, write_view
from .reproduce import CONFIG_DIR
from .tables import METRIC_NAMES, METRICS, SuiteResults, collect, final_table

DEFAULT_GRID = (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)
NO_LAMBDA = ("finetune", "joint")


def sweep_plan(exp: Experiments, method: str, grid: list[float], scale: str, seeds: int, out: Path,
               kind: str, tasks: int, val_fraction: float) -> tuple[Plan, dict[str, dict]]:
    """The runs of a sweep (one per lambda and seed) on OUT/data/val, and their configs by name."""
    out = out.resolve()
    plan = Plan(scale, out, out / "data" / "val", None, list(range(seeds)), exp.split_seed, val_fraction)
    seq = f"{kind}{tasks}"
    plan.sequences[seq] = (kind, tasks)
    configs, entries = {}, []
    for lam in grid:
        name = f"{method}-lam{lam:g}"
        cfg = method_config(exp, scale, method)
        cfg["method"]["lam"] = float(lam)
        cfg["split"]["test_fraction"] = val_fraction
        configs[name] = cfg
        entries.append(Entry(f"λ={lam:g}", name))
        for s in plan.seeds:
            run = RunSpec(seq, name, method, s, config=name)
            plan.runs[run.id] = run
    plan.suites["sweep"] = (seq, entries)
    return plan, configs


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[float]]:
    """The options of ``scripts/sweep_lambda.py`` and the grid of lambdas, sorted."""
    p = argparse.ArgumentParser(prog="sweep_lambda.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True)
    p.add_argument("--grid", default=None, help=f"Comma-separated lambdas (default: {','.join(map(str, DEFAULT_GRID))}).")
    p.add_argument("--quick", action="store_true", help="The quick scale of configs/reproduce (small world, model).")
    p.add_argument("--split", choices=["random", "semantic"], default="random")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--val-fraction", type=float, default=0.2, help="Share of each fact's training images held out.")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None, help="Data directory (default: generate the built-in world).")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--metric", choices=list(METRICS), default="top1")
    args = p.parse_args(argv)
    if args.method in NO_LAMBDA:
        p.error(f"--method {args.method} has no lambda")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    try:
        grid = sorted({float(v) for v in args.grid.split(",")}) if args.grid else list(DEFAULT_GRID)
    except ValueError:
        p.error(f"--grid {args.grid!r}: expected comma-separated numbers")
    return args, grid


def main(argv: list[str] | None, root: Path) -> int:
    """``scripts/sweep_lambda.py ARGV``; ``root`` is the checkout whose configs/reproduce/ is read
    and whose results/ holds the default OUT. Returns the exit code: 0, 1 (a run failed), 2 (a
    problem the user can fix, said in one line)."""
    args, grid = parse_args(sys.argv[1:] if argv is None else argv)
    scale = "quick" if args.quick else "full"
    try:
        exp = load_experiments(root / CONFIG_DIR / "experiments.yaml")
        if args.method not in exp.method_defaults[scale]:
            raise UserError(f"{exp.methods_path}: {scale}: no entry for method {args.method!r}")
        out = args.out or root / "results" / f"sweep-{scale}"
        world = args.data or out / "data" / "world"
        plan, configs = sweep_plan(exp, args.method, grid, scale, args.seeds, out, args.split, args.tasks,
                                   args.val_fraction)
        for run in plan.runs.values():
            why = config_mismatch(plan, run, configs[run.config])
            if why:
                raise UserError(f"{plan.run_dir(run)} was trained with another config ({why})")
        log = plan.log_file("prepare")
        check_child_factlearn(log)
        if args.data is None:
            ensure_world(world, exp.world[scale], args.jobs, log)
        if not (plan.data / "manifest.jsonl").is_file():
            test_fraction = exp.scale_config(scale).split.test_fraction
            write_view(world, training_rows(world, test_fraction, exp.split_seed), plan.data, keep_split=False)
        write_tasks_files(plan, log)
        for name, cfg in configs.items():
            write_config(plan.config_file(name), cfg, scale)
        outcomes = execute(plan, list(plan.runs.values()), args.jobs, args.device)
        text = sweep_report(collect(plan, "sweep"), args, grid)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(plan.out / f"{args.method}.md", text + "\n")
    print(text)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def training_rows(world: Path, test_fraction: float, seed: int) -> list[int]:
    """The data's training rows: its split column, and for rows without one the draw training makes
    (the reproduction's test_fraction and split seed, not --val-fraction)."""
    is_test = image_splits(load_dataset(world), test_fraction, seed)
    return [i for i, test in enumerate(is_test) if not test]


def sweep_report(res: SuiteResults, args: argparse.Namespace, grid: list[float]) -> str:
    """The validation tables, and the best lambda by the mean final ``args.metric``."""
    if not res.tasks:
        return "no complete run"
    means = {label: statistics.fmean(m.sequence(args.metric, "standard")["average"] for m in runs)
             for label, runs in res.metrics.items() if runs}
    best = max(means, key=lambda k: (means[k], -float(k.split("=")[1])))
    lines = [f"# lambda sweep: {args.method}", "",
             (f"Validation split: {args.val_fraction:g} of each fact's training images "
              f"({args.split} split, {args.tasks} tasks, {args.seeds} seed(s)); final accuracy, percent."), ""]
    for proto in PROTOCOLS:
        for metric in METRICS:
            lines += [f"## {METRIC_NAMES[metric]}, {proto} protocol", "", final_table(res, proto, metric), ""]
    lines += [f"best: {best} (mean validation {METRIC_NAMES[args.metric]} {100 * means[best]:.1f}, standard protocol)",
              "", "configs/reproduce/methods.yaml:", "",
              f"    {args.method}: {{lam: {best.split('=')[1]}}}"]
    edge = best.split("=")[1] in (f"{grid[0]:g}", f"{grid[-1]:g}")
    if edge and len(grid) > 1:
        lines += ["", "(the best lambda is at the edge of the grid: widen it)"]
    return "\n".join(lines)
