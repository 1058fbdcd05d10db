"""Reproduce the experiments of issues 7 and 17 with one command: tables and plots, from the world up.

    scripts/reproduce.py --suite {two-task,four-task,semantic,adaptation,adaptation-facts,adaptation-groups,topic,topic-distinct,shift,all} [SUITE ...] [--quick]
                         [--protocol {scratch,faithful,modern}] [--seeds N] [--out DIR] [--data DIR]
                         [--jobs J] [--device D] [--dry-run]

Training protocols (:mod:`.protocols`; configs/reproduce/experiments.yaml names their files):

- scratch     (the default) the scale's config as it is: both towers from scratch, the contrastive
              loss, Adam. Results in OUT itself, as before protocols existed.
- faithful    configs/reproduce/faithful.yaml: the reference's setup (pretrained image tower, fixed
              fact vectors, the raw distance, SGD with momentum, each task to a plateau).
- modern      configs/reproduce/modern.yaml: the scale's two-tower setting from the pretrained tower.

The protocols with a pretrained tower make it once per scale (shared by them): the base world in
``OUT/data/base`` (``factlearn synth --preset base --exclude <the world>``, the scale's ``base``
size) and ``factlearn pretrain`` on it with the scale's config into ``OUT/pretrained``; their
results go to ``OUT/<protocol>/``, laid out as OUT is for scratch. Their lambdas come from
configs/reproduce/lambda-<protocol>.yaml (``scripts/sweep_lambda.py --protocol P`` writes it) and,
for a method it does not list, from methods.yaml; the README says which. A protocol's
``variants`` (MAS's controls, and in modern MAS with the normalized output or the decoupled pull)
are more rows of the two-task suite.

Suites (configs/reproduce/experiments.yaml says which methods and splits each uses):

- two-task    B1 -> B2, random split; every method. B1, B2 and their mean after B2.
- four-task   B1 -> ... -> B4, random split; accuracy matrix, final accuracy per task, mean.
- semantic    the same with a semantic split (whole groups of facts per task).
- adaptation  MAS importance from one half of B1's training images (B11), the other half (B12),
              or all of B1 (plain mas), with finetune as the baseline; after B2: accuracy on the
              B1 and B2 test images, and fact recognition on the B11 and B12 images themselves
              (training images of B1, never test images: how much of what the model learnt on
              each half it keeps, which is what importance on a half is meant to protect).
- adaptation-facts  the MAS paper's adaptation (Table 4): B11 and B12 are halves of B1's FACTS
              (`factlearn split --adaptation`, 0.2 of each fact's training images held out, never
              trained on); MAS importance from the held-out images of B11, of B12, of both, or
              from B1's training images; after B2: accuracy on the test images of B11's and B12's facts.
- adaptation-groups  the same with halves of whole semantic groups of B1's facts
              (`factlearn split --adaptation --adaptation-by group`): halves that differ in content.
- topic       four tasks with a monitored semantic group (e.g. colour): its test images' accuracy
              after each task, over the group's facts trained so far; finetune, mas (importance
              from each task's images), mas with importance from the group's unlabeled training
              images only (every task's, as unlabeled data from the conditions of use), joint.
- topic-distinct  the MAS paper's sports facts: four tasks on the world made with ``--topic``
              (``OUT/data/world-topic``: the world's facts and a small, visually distinctive group
              ``topic``), 0.2 of each fact's training images held out (``factlearn split --held-out``);
              the group's curve for finetune, mas (importance from each task's images) and mas with
              importance from the held-out images of the group's facts learned so far. Not with --data.
- shift       a test-condition shift: the world rendered again in each of the suite's styles
              (``OUT/data/world-<style>``, ``factlearn synth --style``: the same facts, splits and scenes);
              MAS importance from B1's training images clean (plain mas) or in a style; finetune as the
              baseline; after B2: each task's test accuracy, clean and in each style. Not with --data
              (it renders the world).

Every number is the standard protocol (a task's images ranked among that task's facts) and the
generalized one (among all facts seen so far), top-1 and top-5, mean ± std over the seeds
(``--seeds N``: training seeds 0..N-1; the split stays fixed). Results go to OUT (default
``results/full``, ``results/quick`` with ``--quick``): ``README.md`` (index and headline
tables), ``<suite>.md`` (all tables), ``summary.json`` (every number of the tables, with the seeds
it covers: :mod:`.summary`), ``plots/<suite>/`` (PNG; accuracy matrices and per-task curves from
:mod:`factlearn.compare`, of seed 0), and the work: ``data/world`` (the built-in
world when ``--data`` is not given: preset small with ``--quick``, 6ds otherwise), ``tasks/``
(task files), ``views/`` (small data directories: the adaptation halves and the group's images,
whose images are hard links, or copies, of the data's), ``configs/`` (each method's config),
``runs/<sequence>/seed<k>/<variant>/`` (factlearn run directories), ``probes/`` (evaluations of
every checkpoint on a view), ``logs/`` and ``timings.json``.

Runs go through the command line, ``sys.executable -m factlearn train``, with this environment
and ``OMP_NUM_THREADS=1``, from OUT/logs (:mod:`.children`). ``--jobs J`` runs J at a time. A run
whose metrics.json covers every task is skipped, a started one continues with ``--resume``, so an
interrupted reproduction continues where it stopped; a run made with another config than the one
asked for now is an error (use another ``--out``). Runs shared by suites (mas on the two-task
split serves two-task and adaptation) are trained once.

The command's modules: :mod:`.config` (the experiments file), :mod:`.plan` (runs, views, paths),
:mod:`.prepare` (world, task files, views, configs), :mod:`.execute` (training and probing),
:mod:`.tables`, :mod:`.plots` and :mod:`.report` (the results folder's pages).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import UserError
from .config import BUILTIN_WORLD_SUITES, SUITES, load_experiments
from .execute import Outcome, config_mismatch, execute, run_complete, train_command
from .plan import Plan, make_plan
from .prepare import prepare, pretrain_steps, run_configs, train_steps
from .protocols import SCRATCH, load_protocol, now
from .report import read_timings, record_timings, write_report

CONFIG_DIR = Path("configs") / "reproduce"  # of the checkout: the experiments file and what it names


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``scripts/reproduce.py``."""
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, nargs="+", choices=[*SUITES, "all"],
                   help="One or more suites (or all), trained together: --jobs packs their runs.")
    p.add_argument("--quick", action="store_true", help="Small world and model, 1 seed: about 15 min on 2 cores.")
    p.add_argument("--protocol", default=SCRATCH,
                   help="Training protocol: scratch (default: the scale's config as it is), faithful, modern "
                        "(configs/reproduce/<protocol>.yaml; results in OUT/<protocol>/).")
    p.add_argument("--seeds", type=int, default=None, help="Training seeds 0..N-1 (default: 1 quick, 3 full).")
    p.add_argument("--out", type=Path, default=None, help="Results folder (default: results/quick or results/full).")
    p.add_argument("--data", type=Path, default=None, help="Data directory (default: generate the built-in world).")
    p.add_argument("--jobs", type=int, default=1, help="Training processes at once (each OMP_NUM_THREADS=1).")
    p.add_argument("--device", default="auto", help="Passed to factlearn train (auto, cpu, cuda).")
    p.add_argument("--experiments", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="Print the runs it would launch and exit.")
    p.add_argument("--no-plots", action="store_true", help="Tables only.")
    p.add_argument("--report-only", action="store_true",
                   help="Train nothing: rewrite the tables and plots from the runs of OUT complete so far.")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: list[str] | None, root: Path) -> int:
    """``scripts/reproduce.py ARGV``; ``root`` is the checkout whose configs/reproduce/ is read and
    whose results/ holds the default OUT. Returns the exit code: 0, 1 (a run failed), 2 (a
    problem the user can fix, said in one line), 130 (Ctrl-C)."""
    try:
        return _main(sys.argv[1:] if argv is None else argv, root)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches the children too: they save a checkpoint and stop
        print("Interrupted: run the same command again to continue.", file=sys.stderr)
        return 130


def _main(argv: list[str], root: Path) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    scale = "quick" if args.quick else "full"
    exp = load_experiments(args.experiments or root / CONFIG_DIR / "experiments.yaml")
    protocol = load_protocol(exp, args.protocol)
    suites = list(exp.suites) if "all" in args.suite else list(dict.fromkeys(args.suite))
    if "all" in args.suite and args.data is not None:
        left = [s for s in suites if s in BUILTIN_WORLD_SUITES]  # they make variants of the built-in world
        suites = [s for s in suites if s not in BUILTIN_WORLD_SUITES]
        if left:
            print(f"--suite all --data: {', '.join(left)} left out (they need the built-in world)", flush=True)
    seeds = args.seeds or (1 if args.quick else 3)
    out = args.out or root / "results" / scale
    plan = make_plan(exp, suites, scale, seeds, out, args.data, protocol)
    check_protocol(plan)
    configs = run_configs(plan, exp)
    for run in plan.runs.values():
        why = config_mismatch(plan, run, configs[run.config or run.method])
        if why:
            raise UserError(f"{plan.run_dir(run)} was trained with another config ({why}): "
                            "use another --out, or delete that run")
    command = "scripts/reproduce.py " + " ".join(argv)
    # the index covers every suite with complete runs in OUT, not only those of this invocation
    everything = make_plan(exp, list(exp.suites), scale, seeds, out, args.data, protocol)
    if args.dry_run:
        plateau = any((c.get("train") or {}).get("val_fraction") for c in configs.values())
        print_plan(plan, args.device, train_steps(plan, configs), pretrain_steps(plan, exp), plateau)
        return 0
    if args.report_only:
        readme = write_report(everything, exp, invocation(command, 0, 0.0, [], protocol.name), plots=not args.no_plots)
        print(f"report of the complete runs so far: {readme}")
        return 0
    if args.data is not None and not args.data.exists():
        raise UserError(f"--data {args.data}: not found")
    prepare(plan, exp, args.jobs, configs, args.device)
    steps = train_steps(plan, configs)
    runs = sorted(plan.runs.values(), key=lambda r: -steps.get(r.id, 0))  # longest first: they pack better
    print(f"{len(runs)} runs ({sum(not run_complete(plan.run_dir(r)) for r in runs)} to train), "
          f"{args.jobs} at a time; logs in {plan.out / 'logs'}", flush=True)
    outcomes = execute(plan, runs, args.jobs, args.device)
    done = invocation(command, args.jobs, time.perf_counter() - started, outcomes, protocol.name)
    record_timings(plan.out, outcomes, steps, done)
    readme = write_report(everything, exp, done, plots=not args.no_plots)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {readme}")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED {o.run.id}: {o.message}", file=sys.stderr)
    return 1 if failed else 0


def check_protocol(plan: Plan) -> None:
    """Refuse a results folder whose invocations (timings.json) trained another protocol (a folder
    from before protocols existed is scratch's)."""
    for record in read_timings(plan.out).get("invocations", []):
        theirs = record.get("protocol", SCRATCH)
        if theirs != plan.protocol.name:
            raise UserError(f"{plan.out} holds results of the {theirs} protocol, not {plan.protocol.name}: "
                            "use another --out")


def invocation(command: str, jobs: int, seconds: float, outcomes: list[Outcome], protocol: str = SCRATCH) -> dict:
    """The record of an invocation in timings.json and the report (``jobs`` 0: report only)."""
    return {"command": command, "protocol": protocol, "jobs": jobs, "finished": now(),
            "seconds": round(seconds, 1),
            "trained": sum(o.status in ("trained", "resumed") for o in outcomes),
            "skipped": sum(o.status in ("skipped", "probed") for o in outcomes),
            "failed": sum(o.status == "failed" for o in outcomes)}


def print_plan(plan: Plan, device: str, steps: dict[str, int], pretraining: int | None = None,
               upper_bound: bool = False) -> None:
    """The runs, their state (complete, resume, new), commands and training steps (once the data
    exists; ``upper_bound``: tasks may stop early, at a plateau)."""
    generate = plan.world is not None and not (plan.data / "manifest.jsonl").is_file()
    print(f"{plan.scale} scale, {plan.protocol.name} protocol, results in {plan.out}, data {plan.data}"
          + (" (to generate)" if generate else ""))
    if plan.pretrained is not None:
        made = (plan.pretrained / "pretrain.json").is_file()
        print(f"pretrained image tower {plan.pretrained}: " + ("made" if made else (
              f"to make (base world {plan.base_dir}: synth {' '.join(plan.base.synth_options())}; "
              f"pretrain {plan.pretrain_epochs} epochs" + (f", {pretraining} steps)" if pretraining else ")"))))
    for suite, (seq, entries) in plan.suites.items():
        print(f"{suite}: {seq}, {len(entries)} rows x {len(plan.seeds)} seed(s)")
    for run in plan.runs.values():
        state = "complete" if run_complete(plan.run_dir(run)) else (
            "resume" if (plan.run_dir(run) / "run.json").is_file() else "new")
        probes = f" probes: {', '.join(run.probes)}" if run.probes else ""
        n = f" ({steps[run.id]} steps)" if run.id in steps else ""
        print(f"  [{state}] {run.id}{n}{probes}")
        if state != "complete":
            print("    " + " ".join(train_command(plan, run, device)))
    bound = " at most (tasks stop at a plateau)" if upper_bound else ""
    print(f"{len(plan.runs)} runs" + (f", {sum(steps.values())} optimizer steps{bound}" if steps else ""))
