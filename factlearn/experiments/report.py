"""The report of a reproduction, written into its results folder OUT: ``README.md`` (how the runs
were made, under which training protocol, and each suite's headline tables), ``<suite>.md`` (every
table and plot of a suite), ``plots/<suite>/`` and ``summary.json`` (every number of the tables:
:mod:`.summary`); and ``timings.json``, the record of every invocation and of each run's time.

The pages link only to what is published with them (the plots); a suite's task file is named with
the ``factlearn split`` command that writes it, since OUT/tasks/ is work, not results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import factlearn

from ..continual import METHODS
from ..errors import UserError
from ..io import atomic_write_text, read_json
from .config import TOPIC_SUITES, Experiments
from .execute import Outcome
from .plan import Plan
from .plots import suite_plots
from .prepare import split_options
from .summary import suite_records, write_summary
from .tables import SuiteResults, collect, suite_sections

SUITE_DOC = {
    "two-task": "B1 -> B2, random split: each task's accuracy after B2, their mean, and BWT (< 0: forgetting).",
    "four-task": "B1 -> B4, random split: each task's final accuracy, their mean, BWT, and the accuracy matrices.",
    "semantic": "B1 -> B4, semantic split (whole groups of facts per task): as four-task.",
    "adaptation": "MAS importance from one half of B1's training images (B11), the other half (B12), or all of B1, "
                  "finetune for reference. After B2: accuracy on the B1 and B2 test images, and fact recognition "
                  "on the B11 and B12 images themselves (training images of B1: how much of what was learnt on "
                  "each half is kept; the half the importance came from should keep more).",
    "adaptation-facts": "The MAS paper's adaptation experiment (Table 4): B11 and B12 are halves of B1's FACTS, and "
                        "0.2 of each fact's training images are held out, never trained on. MAS importance after B1 "
                        "from the held-out images of B11 only, of B12 only, or of all of B1 (unlabeled), or from B1's "
                        "training images; finetune for reference. After B2: accuracy on the test images of B1, B2, "
                        "and of B11's and B12's facts (the half the importance came from should keep more).",
    "adaptation-groups": "adaptation-facts with halves that differ in content: B11 and B12 are whole semantic groups of "
                         "B1's facts (`factlearn split --adaptation --adaptation-by group`), as the MAS paper's subsets "
                         "are; random halves of the facts share the world's shapes, colours and relations, so one "
                         "half's importance is nearly the other's. The same runs and measures as adaptation-facts.",
    "shift": "A test-condition shift (MAS paper, Sec. 5): the same world rendered in other styles (same facts, "
             "splits and scenes, other pixels). MAS importance after B1 from B1's training images as trained "
             "(clean) or from the same images in a shifted style (unlabeled images of the conditions of use); "
             "finetune for reference. After B2: each task's accuracy on its test images, clean and in each "
             "shifted style (importance from a style's images should keep more of B1 in that style).",
    "topic-distinct": "The MAS paper's sports facts (Fig. 4): four tasks, random split, on the world made with a small, "
                      "visually distinctive group `topic` (about a tenth of the facts, shapes no other fact shows); "
                      "0.2 of each fact's training images are held out, never trained on. Accuracy on the test images "
                      "of the group's facts trained so far, after each task. `importance: held-out images of the topic "
                      "facts learned so far` computes MAS's importance after each task from those images only (zero "
                      "before the first topic fact), instead of each task's training images.",
    "topic": "Four tasks, random split, a monitored group of facts: accuracy on the test images of the group's "
             "facts trained so far, after each task. `importance: <group> images only` computes the image "
             "tower's importance on the group's unlabeled training images (of every task) instead of each "
             "task's own images.",
}
HEADLINE_TABLES = {"adaptation": 1, "adaptation-facts": 1, "adaptation-groups": 1, "shift": 1}  # tables of a suite README.md shows (default 2: standard top-1 and top-5)


def write_report(plan: Plan, exp: Experiments, invocation: dict, plots: bool = True) -> Path:
    """``<suite>.md`` and plots for every suite of the plan with a complete run, README.md indexing
    them and summary.json; ``invocation`` (see :func:`record_timings`) stands in when timings.json
    has none."""
    timings = read_timings(plan.out)
    protocol = plan.protocol
    lines = [f"# Reproduction results ({plan.scale} scale, {protocol.name} protocol)", "",
             (f"Written by `scripts/reproduce.py` on {invocation['finished']} (command: `{invocation['command']}`; "
              f"factlearn {factlearn.__version__} from `{Path(factlearn.__file__).parent}`)."), "",
             f"- training protocol: {protocol.about} (every table and plot here)",
             f"- data: `{plan.data}`" + (f" (built-in world, preset {plan.world.preset}, seed {plan.world.seed})"
                                         if plan.world else ""),
             (f"- seeds: {len(plan.seeds)} (training seeds {', '.join(map(str, plan.seeds))}; split seed "
              f"{plan.split_seed} for every run)"),
             *config_lines(plan, exp),
             "- invocations (wall time to prepare, train and probe; timings.json):",
             *(f"  - {i['finished']}: `{i['command']}`: {i['seconds'] / 60:.1f} min, {i['jobs']} job(s), "
               f"{i['trained']} run(s) trained, {i['skipped']} already complete, {i['failed']} failed"
               for i in timings.get("invocations", [invocation])), ""]
    timed = [t for t in timings.get("runs", {}).values() if t.get("status") == "trained" and t.get("steps")]
    if timed:
        wall, cpu = sum(t["train_s"] for t in timed), sum(t.get("train_cpu_s", math.nan) for t in timed)
        steps = sum(t["steps"] for t in timed)
        lines += [(f"- training time of the {len(timed)} runs trained start to end (not resumed): {wall / 60:.1f} min wall, "
                   f"{cpu / 60:.1f} min CPU, for {steps} optimizer steps: {1000 * wall / steps:.0f} ms wall, "
                   f"{1000 * cpu / steps:.0f} ms CPU per step (start-up, importance and evaluation included)"), ""]
    records = []
    for suite in plan.suites:
        sc = exp.suites[suite]
        res = collect(plan, suite)
        if not res.tasks:  # nothing of it has run (in OUT, with these seeds)
            continue
        pngs = suite_plots(plan.out, suite, sc, res, protocol.name) if plots else []
        atomic_write_text(plan.out / f"{suite}.md", suite_markdown(plan, suite, exp, res, pngs))
        records += suite_records(protocol.name, suite, res, sc.group if suite in TOPIC_SUITES else None)
        lines += [f"## {suite}", "", SUITE_DOC[suite], "",
                  f"[All tables and plots]({suite}.md) (the generalized evaluation too); plots in `plots/{suite}/`.", "",
                  "\n\n".join(suite_sections(suite, sc, res, protocol.name)[: HEADLINE_TABLES.get(suite, 2)]), ""]
    write_summary(plan.out, scale=plan.scale, protocol=protocol.name, images="test", data=plan.data, seeds=plan.seeds,
                  records=records, written=invocation["finished"])
    readme = plan.out / "README.md"
    atomic_write_text(readme, "\n".join(lines))
    return readme


def config_lines(plan: Plan, exp: Experiments) -> list[str]:
    """The README's lines on the configs: the files layered, each config's lambda and where it comes
    from, the pretrained backbone, and the results of the scale's other protocols."""
    protocol, layers = plan.protocol, f"configs/reproduce/{exp.config_path[plan.scale].name}"
    if protocol.path is not None:
        layers += f", with configs/reproduce/{protocol.path.name} over it"
    lines = [f"- configs: `configs/` (model and training: {layers}; methods: configs/reproduce/"
             f"{exp.methods_path.name}" + (f" and {protocol.lambda_path.name} where written" if protocol.path else "")
             + "); each method's lambda:"]
    for name, method in sorted({(r.config or r.method, r.method) for r in plan.runs.values()}):
        if "lam" in METHODS[method].options:  # finetune and joint have none
            lam, source = protocol.lam(exp, plan.scale, name)
            lines.append(f"  - {name}: {lam:g} ({source})")
    if plan.pretrained is not None:
        try:
            record = read_json(plan.pretrained / "pretrain.json")
            lines.append(f"- image tower pretrained on the base world `{plan.base_dir}` ({record.get('facts')} facts, "
                         f"none of the world's; `factlearn pretrain`, {record.get('epochs_trained')} epochs in "
                         f"{record.get('seconds')} s; base-world test top-1 {100 * record.get('test_top1', 0):.1f}): "
                         f"`{plan.pretrained}`")
        except (UserError, TypeError):
            lines.append(f"- image tower pretrained on the base world: `{plan.pretrained}` (not made yet)")
    root = plan.root or plan.out
    folders = {"scratch": root, **{name: root / name for name in exp.protocols}}
    others = [f"[{name}]({Path(os.path.relpath(folder / 'README.md', plan.out)).as_posix()})"
              for name, folder in folders.items() if folder != plan.out and (folder / "README.md").is_file()]
    if others:
        lines.append("- the other protocols' results at this scale: " + ", ".join(others))
    return lines


def suite_markdown(plan: Plan, suite: str, exp: Experiments, res: SuiteResults, plots: list[Path]) -> str:
    """The page of a suite: what it measures, its task sequence, every table, and the plots."""
    sc = exp.suites[suite]
    seq = plan.suites[suite][0]
    n_seeds = max((len(d) for d in res.metrics.values()), default=0)
    about = (f"Task sequence `{seq}` ({sc.split} split, {sc.tasks} tasks: `factlearn split <data> "
             f"{' '.join(split_options(plan, seq))}`, in the results folder as `tasks/{seq}.json`), "
             f"{plan.scale} scale, {n_seeds} seed(s): mean ± std in percent (no ± with one seed); `-`: run missing "
             f"or incomplete. Training protocol: {plan.protocol.about}. Every number is also in summary.json.")
    lines = [f"# {suite}", "", SUITE_DOC[suite], "", about, ""]
    for section in suite_sections(suite, sc, res, plan.protocol.name):
        lines += [section, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.name}]({p.relative_to(plan.out).as_posix()})" for p in plots] + [""]
    return "\n".join(lines)


def read_timings(out: Path) -> dict:
    """OUT/timings.json: ``{"invocations": [...], "runs": {run id: {...}}}``; empty when missing
    (or unreadable: it is rewritten)."""
    try:
        doc = read_json(out / "timings.json")
    except UserError:
        return {}
    return doc if isinstance(doc, dict) else {}


def record_timings(out: Path, outcomes: list[Outcome], steps: dict[str, int], invocation: dict) -> None:
    """Add an invocation (``command``, ``jobs``, ``finished``, ``seconds``, ``trained``, ``skipped``,
    ``failed``) and the times of the runs it trained to OUT/timings.json."""
    timings = read_timings(out)
    for o in outcomes:
        # a resumed run's time covers only its rest: it does not replace a from-scratch timing
        if o.status == "trained" or (o.status == "resumed" and o.run.id not in timings.get("runs", {})):
            timings.setdefault("runs", {})[o.run.id] = {
                "status": o.status, "train_s": round(o.train_s, 1), "train_cpu_s": round(o.train_cpu_s, 1),
                "probe_s": round(o.probe_s, 1), "steps": steps.get(o.run.id)}
    timings.setdefault("invocations", []).append(invocation)
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=1) + "\n")
