"""Sweep the lambda of one or more methods on a validation split: the tables, the trade-off plot, and
(under a protocol with a file) the lambdas picked.

    scripts/sweep_lambda.py --method {all | M [M ...]} [--protocol {scratch,faithful,modern}] [--quick]
                            [--grid 0.1,1,10,100] [--split random] [--tasks 2] [--val-fraction 0.2]
                            [--seeds N] [--out DIR] [--data DIR] [--jobs J] [--metric top1] [--dry-run]

``--method all``: mas, l2, ewc, si and lwf, the protocol's variants (MAS's controls; in modern also
MAS with the normalized output and with the decoupled pull), and finetune and joint as single points.

Never tuned on test images. The validation split is carved out of the TRAINING images: OUT/data/val
is a data directory holding only the data's training rows (test rows are left out altogether),
without their split column, so factlearn draws a seeded per-fact validation share of them
(``split.test_fraction`` = ``--val-fraction``, ``split.seed`` = the experiments' split seed: at
least one training and one validation image per fact). Each lambda of the grid (``--grid``, or the
protocol file's ``sweep`` grids, or the default) trains the method on the same task sequence as the
reproduction (``factlearn split`` of the same facts with the same seed) and config (the protocol's:
:func:`~factlearn.experiments.protocols.run_config`, lambda replaced); its "test" metrics are
validation metrics.

The reported lambda of each method is picked by :func:`~factlearn.experiments.tradeoff.pick_lambda`:
the best mean over tasks of the final ``--metric`` (standard evaluation), each task averaged over
seeds; ties go to the smaller lambda. A variant with ``lam_from`` (a control at MAS's lambda) gets a
curve but no lambda of its own.

Runs go to OUT (default results/sweep-quick or results/sweep-full; a protocol's to OUT/<protocol>/,
the data and the pretrained backbone shared in OUT), resumable like a reproduction's
(:mod:`.reproduce`). Written there: ``<method>.md`` (one method's validation tables),
``tradeoff.md`` (every point, the lambdas picked, the rule), ``plots/tradeoff_<evaluation>.png``
(old- against new-task accuracy) and ``summary.json`` (:mod:`.summary`, images: validation). Under
faithful or modern the lambdas picked (of the methods whose every lambda has every seed) are
recorded with this command in configs/reproduce/lambda-<protocol>.yaml, which reproduce.py reads;
under scratch, put them into configs/reproduce/methods.yaml by hand.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from ..data.manifest import Dataset, Record, load_dataset
from ..data.splits import image_splits
from ..errors import UserError
from ..io import atomic_write_text
from ..results import PROTOCOLS
from .children import check_child_factlearn
from .config import Experiments, load_experiments
from .execute import config_mismatch, execute
from .plan import Entry, Plan, RunSpec, assign_parents, protocol_plan
from .prepare import ensure_pretrained, ensure_world, train_steps, write_config, write_tasks_files, write_view
from .protocols import SCRATCH, LambdaChoice, Protocol, load_protocol, now, run_config, write_lambdas
from .reproduce import CONFIG_DIR
from .summary import suite_records, write_summary
from .tables import METRIC_NAMES, METRICS, SuiteResults, collect, final_table
from .tradeoff import RULE, Point, chosen, curve, old_new_names, tradeoff_figure, tradeoff_table

DEFAULT_GRID = (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)
TRADEOFF_METHODS = ("mas", "l2", "ewc", "si", "lwf")  # --method all: their curves ...
POINTS = ("finetune", "joint")  # ... and these, which have no lambda, as single points


def sweep_plan(exp: Experiments, protocol: Protocol, grids: dict[str, list[float] | None], scale: str, seeds: int,
               out: Path, kind: str, tasks: int, val_fraction: float) -> tuple[Plan, dict[str, dict]]:
    """The runs of a sweep (per method or variant, one per lambda of its grid and seed; one per seed
    for a grid of None) on OUT/data/val, and their configs by name (``<method>-lam<lambda>``)."""
    plan = protocol_plan(exp, protocol, scale, seeds, out, out.resolve() / "data" / "val")
    plan.test_fraction = val_fraction
    seq = f"{kind}{tasks}"
    plan.sequences[seq] = (kind, tasks)
    configs = {}
    for name, grid in grids.items():
        if name not in (exp.method_defaults[scale] or {}) and name not in protocol.variants:
            raise UserError(f"{exp.methods_path}: {scale}: no entry for method {name!r}"
                            + (f" (nor is it a variant of {protocol.path.name})" if protocol.path else ""))
        base = run_config(exp, protocol, scale, name, plan.pretrained)
        base["split"]["test_fraction"] = val_fraction
        method = base["method"]["name"]
        entries = []
        for lam in grid or [None]:
            run_name = name if lam is None else f"{name}-lam{lam:g}"
            configs[run_name] = copy.deepcopy(base)
            if lam is not None:
                configs[run_name]["method"]["lam"] = float(lam)
            entries.append(Entry(name if lam is None else f"λ={lam:g}", run_name))
            for s in plan.seeds:
                run = RunSpec(seq, run_name, method, s, config=run_name)
                plan.runs[run.id] = run
        plan.suites[name] = (seq, entries)
    return assign_parents(plan), configs


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[float] | None]:
    """The options of ``scripts/sweep_lambda.py`` and the ``--grid`` of lambdas, sorted (None: not given)."""
    p = argparse.ArgumentParser(prog="sweep_lambda.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, nargs="+",
                   help=f"Methods or variants, or all ({', '.join(TRADEOFF_METHODS)}, the protocol's variants, "
                        f"and {' and '.join(POINTS)} as points).")
    p.add_argument("--protocol", default=SCRATCH, help="Training protocol (scratch, faithful, modern).")
    p.add_argument("--grid", default=None, help="Comma-separated lambdas (default: the protocol file's, or "
                                                f"{','.join(map(str, DEFAULT_GRID))}).")
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
    p.add_argument("--experiments", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="Print the runs and their optimizer steps and exit.")
    p.add_argument("--no-record", action="store_true",
                   help="Leave the protocol's lambda file as it is (a diagnostic sweep: other seeds or a narrower grid).")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    if args.seeds < 1 or args.jobs < 1 or args.tasks < 2:
        p.error("--seeds and --jobs must be at least 1, --tasks at least 2")
    grid = None
    try:
        grid = sorted({float(v) for v in args.grid.split(",")}) if args.grid else None
    except ValueError:
        p.error(f"--grid {args.grid!r}: expected comma-separated numbers")
    return args, grid


def sweep_grids(methods: list[str], protocol: Protocol, grid: list[float] | None) -> dict[str, list[float] | None]:
    """Each method's or variant's lambdas (None: a single point): ``grid``, or the protocol file's."""
    names = [*TRADEOFF_METHODS, *protocol.variants, *POINTS] if "all" in methods else list(dict.fromkeys(methods))
    own = protocol.sweep.grids
    return {n: None if n in POINTS else sorted(map(float, grid or own.get(n) or protocol.sweep.grid or DEFAULT_GRID))
            for n in names}


def main(argv: list[str] | None, root: Path) -> int:
    """``scripts/sweep_lambda.py ARGV``; ``root`` is the checkout whose configs/reproduce/ is read
    (and where a protocol's lambda file is written) and whose results/ holds the default OUT.
    Returns the exit code: 0, 1 (a run failed), 2 (a problem the user can fix, said in one line)."""
    argv = sys.argv[1:] if argv is None else argv
    args, grid = parse_args(argv)
    scale = "quick" if args.quick else "full"
    try:
        exp = load_experiments(args.experiments or root / CONFIG_DIR / "experiments.yaml")
        protocol = load_protocol(exp, args.protocol)
        grids = sweep_grids(args.method, protocol, grid)
        out = args.out or root / "results" / f"sweep-{scale}"
        world = args.data.resolve() if args.data else out.resolve() / "data" / "world"
        plan, configs = sweep_plan(exp, protocol, grids, scale, args.seeds, out, args.split, args.tasks,
                                   args.val_fraction)
        for run in plan.runs.values():
            why = config_mismatch(plan, run, configs[run.config])
            if why:
                raise UserError(f"{plan.run_dir(run)} was trained with another config ({why})")
        if args.dry_run:
            print_sweep(plan, configs, world, exp, scale)
            return 0
        log = plan.log_file("prepare")
        check_child_factlearn(log)
        if args.data is None:
            ensure_world(world, exp.world[scale], args.jobs, log)
        ensure_pretrained(plan, exp, world, args.jobs, args.device, log)
        if not (plan.data / "manifest.jsonl").is_file():
            test_fraction = exp.scale_config(scale).split.test_fraction
            write_view(world, training_rows(world, test_fraction, exp.split_seed), plan.data, keep_split=False)
        write_tasks_files(plan, log)
        for name, cfg in configs.items():
            write_config(plan.config_file(name), cfg, scale)
        outcomes = execute(plan, list(plan.runs.values()), args.jobs, args.device)
        text = write_sweep(plan, exp, grids, args, "scripts/sweep_lambda.py " + " ".join(argv))
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def training_rows(world: Path, test_fraction: float, seed: int) -> list[int]:
    """The data's training rows: its split column, and for rows without one the draw training makes
    (the reproduction's test_fraction and split seed, not --val-fraction)."""
    is_test = image_splits(load_dataset(world), test_fraction, seed)
    return [i for i, test in enumerate(is_test) if not test]


def print_sweep(plan: Plan, configs: dict[str, dict], world: Path, exp: Experiments, scale: str) -> None:
    """The runs of a sweep with their optimizer steps (from OUT/data/val, or before it exists from
    the world's training rows, as OUT/data/val will hold them)."""
    dataset = None
    if not (plan.data / "manifest.jsonl").is_file() and (world / "manifest.jsonl").is_file():
        full = load_dataset(world)
        rows = training_rows(world, exp.scale_config(scale).split.test_fraction, exp.split_seed)
        records = [Record(full.records[i].image, full.records[i].fact, full.records[i].group, None) for i in rows]
        dataset = Dataset(full.root, records, full.facts)
    steps = train_steps(plan, configs, dataset)
    print(f"{plan.scale} scale, {plan.protocol.name} protocol, results in {plan.out}, validation data {plan.data}")
    for name, (_, entries) in plan.suites.items():
        print(f"{name}: " + ", ".join(e.label for e in entries))
    for run in plan.runs.values():
        print(f"  {run.id}" + (f" ({steps[run.id]} steps)" if run.id in steps else ""))
    plateau = any((c.get("train") or {}).get("val_fraction") for c in configs.values())
    print(f"{len(plan.runs)} runs" + (f", {sum(steps.values())} optimizer steps" + (" at most" if plateau else "")
                                      if steps else ""))


def write_sweep(plan: Plan, exp: Experiments, grids: dict[str, list[float] | None], args: argparse.Namespace,
                command: str) -> str:
    """Write each method's page, tradeoff.md, the trade-off plots, summary.json and (under a
    protocol with a file) the lambdas picked; returns the text to print."""
    results = {name: collect(plan, name) for name in grids}
    lams = {name: {e.label: (None if grids[name] is None else float(e.label.split("=")[1]))
                   for e in plan.suites[name][1]} for name in grids}
    records, texts = [], []
    for name, res in results.items():
        records += suite_records(plan.protocol.name, "sweep", res, lams=lams[name], entry=name)
        if grids[name] is not None:
            text = method_page(name, res, lams[name], args, plan)
            atomic_write_text(plan.out / f"{name}.md", text + "\n")
            texts.append(text)
    write_summary(plan.out, scale=plan.scale, protocol=plan.protocol.name, images="validation", data=plan.data,
                  seeds=plan.seeds, records=records, written=now())
    done = {n: r for n, r in results.items() if r.tasks}
    if not done:
        return "\n\n".join(texts) or "no complete run"
    tasks = next(iter(done.values())).tasks
    old, new = old_new_names(tasks)
    curves = {metric: {n: curve(r, lams[n], "standard", metric) for n, r in done.items()} for metric in METRICS}
    picked = {n: chosen(points, len(plan.seeds)) for n, points in curves[args.metric].items() if grids[n]}
    rule = RULE.format(metric=METRIC_NAMES[args.metric])
    title = f"λ trade-off on the validation split ({plan.protocol.name} protocol, {plan.scale} scale)"
    for proto in PROTOCOLS:
        by_metric = {m: {n: curve(r, lams[n], proto, m) for n, r in done.items()} for m in METRICS}
        tradeoff_figure(by_metric, picked if proto == "standard" else {}, old, new, f"{title}, {proto} evaluation",
                        plan.out / "plots" / f"tradeoff_{proto}.png", args.metric)
    recorded = record_lambdas(plan, exp, grids, picked, args, command, rule)
    page = tradeoff_page(plan, curves[args.metric], picked, old, new, args, command, rule, recorded)
    atomic_write_text(plan.out / "tradeoff.md", page + "\n")
    return "\n\n".join([*texts, page])


def record_lambdas(plan: Plan, exp: Experiments, grids: dict, picked: dict[str, Point | None],
                   args: argparse.Namespace, command: str, rule: str) -> Path | None:
    """Write the lambdas picked (of methods and variants with their own lambda) to the protocol's
    lambda file; None under scratch or when no curve is complete."""
    variants = plan.protocol.variants
    own = {n: p for n, p in picked.items() if p is not None and not (n in variants and variants[n].lam_from)}
    if plan.protocol.path is None or not own or getattr(args, "no_record", False):
        return None
    when = now()
    choices = {n: LambdaChoice(p.lam, round(p.score, 6), args.metric, list(plan.seeds), list(grids[n]), command, when)
               for n, p in own.items()}
    return write_lambdas(plan.protocol, plan.scale, choices, rule)


def method_page(name: str, res: SuiteResults, lams: dict[str, float | None], args: argparse.Namespace,
                plan: Plan) -> str:
    """One method's validation tables, and the lambda the rule picks."""
    if not res.tasks:
        return f"# lambda sweep: {name}\n\nno complete run"
    lines = [f"# lambda sweep: {name} ({plan.protocol.name} protocol)", "",
             (f"Validation split: {args.val_fraction:g} of each fact's training images "
              f"({args.split} split, {args.tasks} tasks, {args.seeds} seed(s)); final accuracy, percent."), ""]
    for proto in PROTOCOLS:
        for metric in METRICS:
            lines += [f"## {METRIC_NAMES[metric]}, {proto} evaluation", "", final_table(res, proto, metric), ""]
    best = chosen(curve(res, lams, "standard", args.metric), len(plan.seeds))
    if best is None:
        return "\n".join(lines + ["best: not yet (a lambda misses a seed)"])
    lines.append(f"best: λ={best.lam:g} (mean validation {METRIC_NAMES[args.metric]} {100 * best.score:.1f}, "
                 "standard evaluation)")
    grid = sorted(v for v in lams.values() if v is not None)
    if len(grid) > 1 and best.lam in (grid[0], grid[-1]):
        lines += ["", "(the best lambda is at the edge of the grid: widen it)"]
    return "\n".join(lines)


def tradeoff_page(plan: Plan, curves: dict[str, list[Point]], picked: dict[str, Point | None], old: str, new: str,
                  args: argparse.Namespace, command: str, rule: str, recorded: Path | None) -> str:
    """tradeoff.md: the rule, the lambdas picked, every point of every curve, the plots."""
    lines = [f"# λ trade-off ({plan.protocol.name} protocol, {plan.scale} scale)", "",
             f"Training protocol: {plan.protocol.about}.", "",
             (f"Validation split ({args.val_fraction:g} of each fact's training images; never test images), "
              f"{args.split} split, {args.tasks} tasks, {len(plan.seeds)} seed(s); command: `{command}`. "
              f"{METRIC_NAMES[args.metric]}, standard evaluation, percent (mean ± std over seeds)."), "",
             f"Rule: {rule}.", ""]
    lines += ["| method | λ picked | validation mean |", "|---|---:|---:|"]
    for name, p in picked.items():
        lines.append(f"| {name} | {'-' if p is None else f'{p.lam:g}'} | "
                     f"{'not every λ has every seed yet' if p is None else f'{100 * p.score:.1f}'} |")
    if recorded is not None:
        lines += ["", f"Recorded in `configs/reproduce/{recorded.name}` (read by scripts/reproduce.py)."]
    lines += ["", tradeoff_table(curves, picked, old, new), "",
              "![trade-off, standard evaluation](plots/tradeoff_standard.png)",
              "![trade-off, generalized evaluation](plots/tradeoff_generalized.png)"]
    return "\n".join(lines)
