"""The ``factlearn`` command: a thin click wrapper over the library."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .errors import UserError

# the keys of factlearn.continual.METHODS, listed here so --help does not import torch
METHOD_NAMES = ("finetune", "mas", "lmas", "l2", "ewc", "online_ewc", "si", "lwf", "joint")


def _rank() -> int:
    """This process's rank when torchrun started it (0 otherwise): only rank 0 prints results."""
    return int(os.environ.get("RANK", "0"))


class Group(click.Group):
    """Turns a UserError into one line on stderr and exit code 2, never a traceback.

    Under torchrun, an error every rank meets (see factlearn.distributed) is printed by rank 0
    alone; one only another rank meets is printed by it, naming its rank.
    """

    def invoke(self, ctx: click.Context):
        """Run the command; a UserError becomes one line and exit 2, Ctrl-C exit 130."""
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if not getattr(exc, "quiet", False):
                click.echo(f"Error: {exc}" if _rank() == 0 else f"Error (rank {_rank()}): {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            if _rank() == 0:
                click.echo(f"Interrupted: {exc}" if str(exc) else "Interrupted.", err=True)
            ctx.exit(130)


# Seeds feed numpy and torch generators: non-negative and within 32 bits.
SEED = click.IntRange(0, 2**32 - 1)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        """The number, refused when it is nan or infinite."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@click.group(cls=Group)
@click.version_option(package_name="factlearn")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """Learn facts about images continually, without forgetting the old ones."""
    level = logging.INFO if verbose else logging.WARNING
    # Under torchrun the other ranks log errors only: rank 0 speaks for all of them.
    logging.basicConfig(level=level if _rank() == 0 else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["small", "6ds"]), default="small", show_default=True, help="World size preset.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--facts", type=int, default=None, help="Number of facts (default: the preset's).")
@click.option("--images-per-fact", type=int, default=None, help="Images per fact (default: the preset's).")
@click.option("--size", type=int, default=None, help="Image side in pixels (default: the preset's).")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
def synth(out_dir: Path, preset: str, seed: int, facts, images_per_fact, size, workers) -> None:
    """Render the built-in world of fact images into OUT_DIR (same seed, same bytes)."""
    from tqdm import tqdm

    from .data.synth import generate_world

    with tqdm(desc="render", unit="img") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = generate_world(out_dir, seed=seed, facts=facts, images_per_fact=images_per_fact, size=size,
                                 preset=preset, workers=workers, progress=progress)
    click.echo(f"wrote {out_dir}: {json.dumps(summary)}")


@main.group()
def data() -> None:
    """Bring fact data sets into factlearn's manifest format (see data/README.md)."""


@data.group(name="import")
def import_() -> None:
    """Import a data set into a new data directory: manifest.jsonl, images/, import.json.

    Every row is validated and every image decoded. The first bad row is an error naming its
    file and line; with --skip-bad, bad rows are skipped and counted per reason. The output is
    built next to OUT_DIR and renamed at the end; a non-empty OUT_DIR is refused.
    """


SKIP_BAD = click.option("--skip-bad", is_flag=True, help="Skip bad rows (reported per reason) instead of failing.")
WORKERS = click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads that decode images.")
LINK = click.option("--link", is_flag=True, help="Hard-link images instead of copying them (same file system).")


@import_.command(name="manifest")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@SKIP_BAD
@LINK
@WORKERS
def import_manifest_cmd(src, out_dir, skip_bad, link, workers) -> None:
    """Validate a generic manifest (SRC: data directory or manifest.jsonl / .csv) and copy it with its
    images into OUT_DIR (images keep their paths, under images/)."""
    from .data.importers import import_manifest

    _echo_import(import_manifest(src, out_dir, skip_bad=skip_bad, link=link, workers=workers))


@import_.command(name="sherlock")
@click.argument("src", metavar="CSV_OR_SPLITS_DIR", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--images-root", type=click.Path(path_type=Path), default=None,
              help="Folder image_links are relative to (default: the parent of the splits/ folder, else the "
                   "folder of CSV_OR_SPLITS_DIR).")
@SKIP_BAD
@LINK
@WORKERS
def import_sherlock_cmd(src, out_dir, images_root, skip_bad, link, workers) -> None:
    """Import the Sherlock / lifelong fact learning CSV format (image_links, NLP_links, SPO, id, w_s, w_p, w_o):
    one CSV, or a split tree (splits/4tasks_random/B1_train.csv ...), which also gives
    OUT_DIR/tasks/<layout>.json for `train --tasks-file`."""
    from .data.sherlock import import_sherlock

    _echo_import(import_sherlock(src, out_dir, images_root=images_root, skip_bad=skip_bad, link=link,
                                 workers=workers))


@import_.command(name="vg")
@click.argument("vg_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--min-count", type=click.IntRange(min=1), default=10, show_default=True,
              help="Drop facts with fewer occurrences.")
@click.option("--synonyms", type=click.Path(path_type=Path), default=None,
              help="Name synonyms, one 'alias<TAB>canonical' per line.")
@click.option("--min-box", type=click.IntRange(min=1), default=8, show_default=True,
              help="Drop boxes smaller than this many pixels on a side.")
@click.option("--max-per-fact", type=click.IntRange(min=1), default=None,
              help="Keep at most N crops per fact (seeded).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="For --max-per-fact.")
@SKIP_BAD
@WORKERS
def import_vg_cmd(vg_dir, out_dir, min_count, synonyms, min_box, max_per_fact, seed, skip_bad, workers) -> None:
    """Import Visual Genome (objects.json, attributes.json, relationships.json + images/): one crop per
    fact occurrence, <S> from objects, <S,P> from attributes, <S,P,O> from relationships."""
    from .data.vg import import_vg

    _echo_import(import_vg(vg_dir, out_dir, min_count=min_count, synonyms=synonyms, min_box=min_box,
                           max_per_fact=max_per_fact, seed=seed, skip_bad=skip_bad, workers=workers))


def _echo_import(report) -> None:
    click.echo(f"wrote {report.out_dir}: {report.images} images of {report.facts} facts")
    for name in report.notes.get("tasks_files", []):
        click.echo(f"  task file {report.out_dir / name}")
    if report.skipped:
        click.echo(f"skipped {sum(report.skipped.values())} bad rows:")
        for reason, n in report.skipped.items():
            click.echo(f"  {reason}: {n}")
        click.echo("first ones:")
        for line in report.examples:
            click.echo(f"  {line}")


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["random", "semantic"]), default="random", show_default=True)
@click.option("--tasks", type=click.IntRange(min=1), default=2, show_default=True, help="Number of tasks.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the fact split and the train/test draw (use the same as split.seed when training).")
@click.option("--out", "out_file", required=True, type=click.Path(path_type=Path), help="Task file to write (JSON).")
@click.option("--adaptation", is_flag=True,
              help="Also cut each task's training images into two halves (B11, B12 ...) for importance checks.")
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="With --adaptation: test share for rows without a split (use split.test_fraction).")
@click.option("--monitor", "groups", multiple=True, help="A group of facts to record as monitored (repeatable).")
def split(data_dir, kind, tasks, seed, out_file, adaptation, test_fraction, groups) -> None:
    """Cut DATA_DIR's facts into a task sequence and write it as a task file for `train --tasks-file`."""
    from .data.manifest import load_dataset
    from .data.splits import TaskFile, adaptation_halves, adaptation_names, image_splits, make_split, \
        monitored_facts, save_tasks_file

    dataset = load_dataset(data_dir)
    task_list = make_split(dataset, kind, tasks, seed)
    info = {"kind": kind, "seed": seed}
    halves = {}
    if adaptation:
        is_test = image_splits(dataset, test_fraction, seed)
        info["image_split"] = {"test_fraction": test_fraction, "seed": seed}
        for task in task_list:
            halves.update(zip(adaptation_names(task), adaptation_halves(dataset, task, is_test, seed)))
    monitored = {g: monitored_facts(dataset, g) for g in groups}
    save_tasks_file(out_file, TaskFile(task_list, info, {k: v.tolist() for k, v in halves.items()}, monitored), dataset)
    click.echo(f"wrote {out_file}: " + ", ".join(f"{t.name} {len(t.facts)} facts" for t in task_list))


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Data directory (with manifest).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config.")
@click.option("--method", type=str, default=None, help=f"Continual-learning method: {', '.join(METHOD_NAMES)}.")
@click.option("--lam", type=FiniteFloat(min=0), default=None, help="Penalty strength lambda (overrides method.lam).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per task (overrides train.epochs).")
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Number of tasks (overrides split.tasks).")
@click.option("--split", "split_kind", type=click.Choice(["random", "semantic"]), default=None, help="Split kind.")
@click.option("--tasks-file", type=click.Path(path_type=Path), default=None,
              help="Task file naming each task's facts (from `factlearn split` or `data import sherlock`); "
                   "replaces --tasks and --split.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last complete checkpoint (after a task, or mid-task: "
                   "train.checkpoint_every); same data, config and seed. Ctrl-C saves one at the current step.")
@click.option("--importance-data", type=click.Path(path_type=Path), default=None,
              help="mas, lmas: unlabeled images (folder, or data directory whose facts are ignored) for the image "
                   "tower's importance; the language tower's comes from the task's facts.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train with N processes on this machine (DDP: one per GPU, or CPU processes; train.batch_size is "
                   "the global batch). Runs torchrun's launcher; for several machines run torchrun yourself "
                   "(README, Scaling).")
def train(data_dir, config_path, method, lam, epochs, tasks, split_kind, tasks_file, out_dir, seed, device, resume,
          importance_data, nproc) -> None:
    """Train a task sequence (B1 -> B2 -> ...) and evaluate every task after each one."""
    from .config import load_config
    from .continual import METHODS
    from .training import train as run_training

    if method is not None and method not in METHODS:
        raise UserError(f"--method {method!r} is not one of {', '.join(sorted(METHODS))}")
    if tasks_file is not None and (tasks is not None or split_kind is not None):
        raise UserError("--tasks-file gives the task sequence: leave out --tasks and --split")
    cfg = load_config(config_path, {"method.name": method, "method.lam": lam, "train.epochs": epochs,
                                    "split.tasks": tasks, "split.kind": split_kind,
                                    "split.tasks_file": None if tasks_file is None else str(tasks_file.resolve()),
                                    "method.importance_data": None if importance_data is None else str(importance_data)})
    if cfg.method.name not in METHODS:
        raise UserError(f"config method.name {cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}")
    if nproc is not None and nproc > 1:
        from .distributed import launch

        if "WORLD_SIZE" in os.environ:
            raise UserError("--nproc: this process was already started by torchrun; leave --nproc out")
        ctx = click.get_current_context()
        ctx.exit(launch(nproc, _given_arguments(ctx, leave_out="nproc")))  # on failure the ranks have said why
    doc = run_training(data_dir, cfg, out_dir, seed=seed, device=device, progress=True, resume=resume)
    if _rank() == 0:
        click.echo(f"run written to {out_dir}")
        click.echo(format_final(doc["final"]))


def _given_arguments(ctx: click.Context, leave_out: str) -> list[str]:
    """The command line of ``ctx``'s command as the user gave it (options at their defaults left
    out), from the group's options on: ``["-v", "train", "--data", "w", ...]``."""
    argv = ["-v"] if ctx.parent is not None and ctx.parent.params.get("verbose") else []
    argv.append(ctx.info_name)
    for param in ctx.command.params:
        if param.name == leave_out or ctx.get_parameter_source(param.name) in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Option) and param.is_flag:
            argv += [param.opts[0]] if value else []
        elif isinstance(param, click.Option):
            argv += [param.opts[0], str(value)]
        else:
            argv.append(str(value))
    return argv


ORDER_LABELS = {"1": "<S>", "2": "<S,P>", "3": "<S,P,O>"}
COLUMN_NAMES = {"map@100": "mAP@100"}


def format_final(final: dict[str, dict]) -> str:
    """A per-task table (task -> metrics, metrics.json's ``final`` block or an evaluation's result)
    of top-1/5/10, MRR and mAP@100, with a row per fact order.

    Keys a result lacks (runs written before they existed) show as ``-``; an approximate
    index's recall@10 against exact search gets a column when present.
    """
    cols = ["top1", "top5", "top10", "mrr", "map@100"]
    cols += [c for c in ("recall@10",) if any(c in m for m in final.values())]
    lines = [f"{'task':<10}{'n':>6}" + "".join(f"{COLUMN_NAMES.get(c, c):>10}" for c in cols)]
    for name, m in final.items():
        lines.append(_table_row(name, m, cols))
        lines += [_table_row("  " + ORDER_LABELS[o], sub, cols) for o, sub in m.get("by_order", {}).items()]
    return "\n".join(lines)


def _table_row(label: str, m: dict, cols: list[str]) -> str:
    cells = "".join(f"{m[c]:>10.3f}" if c in m else f"{'-':>10}" for c in cols)
    return f"{label:<10}{m.get('n', ''):>6}{cells}"


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--protocol", type=click.Choice(["standard", "generalized"]), default=None,
              help="Candidates: the task's facts (standard) or all facts seen (generalized). Default: the run's.")
@click.option("--after", "after", default=None, help="Evaluate the checkpoint after this task (default: the last).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data directory (default: the one the run was trained on).")
@click.option("--device", default="auto", show_default=True)
@click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat", show_default=True,
              help="Fact index for recognition; approximate kinds also report recall@10 against flat.")
@click.option("--export", "export_dir", type=click.Path(path_type=Path), default=None,
              help="Also write each task's embeddings and labels to EXPORT/<TASK>/.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(run_dir, protocol, after, data_dir, device, index_kind, export_dir, as_json) -> None:
    """Evaluate a run's checkpoint on every task's test split.

    Fact recognition (top-1 / top-5 / top-10, MRR; overall and per fact order) and image
    retrieval (mAP, mAP@100). With --export, EXPORT/<TASK>/ gets image_embeddings.npy and
    fact_embeddings.npy (float32, L2-normalised), images.csv (image,fact_id) and facts.csv
    (fact_id,subject,predicate,object) of the task's test images and candidate facts.
    """
    from .evaluate import evaluate_run

    [(task, by_protocol)] = evaluate_run(run_dir, data_dir, after, protocol and [protocol], index_kind, device,
                                         export_dir=export_dir).items()
    [(protocol, results)] = by_protocol.items()
    if as_json:
        click.echo(json.dumps({"after": task, "protocol": protocol, "index": index_kind, "tasks": results}, indent=2))
        return
    click.echo(f"{run_dir}: after {task}, {protocol} protocol, {index_kind} index")
    click.echo(format_final(results))
    if export_dir is not None:
        click.echo(f"embeddings written to {export_dir}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--all-facts", is_flag=True, help="Search every fact of the data, not only the tasks trained so far.")
@click.option("--device", default="auto", show_default=True)
@click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat", show_default=True,
              help="Fact index: exact (flat) or approximate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def query(run_dir, images, top_k, all_facts, device, index_kind, as_json) -> None:
    """Print the top-k facts for each IMAGE (a file or a folder of images), with cosine scores."""
    from .query import query_images

    results = query_images(run_dir, [str(p) for p in images], top_k, all_facts, device, index_kind)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for item in results:
        click.echo(item["image"])
        for rank, hit in enumerate(item["facts"], start=1):
            click.echo(f"  {rank:>2}. {hit['fact']:<40} {hit['score']:.3f}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--metric", type=click.Choice(["top1", "top5", "top10", "mrr"]), multiple=True,
              default=("top1", "top5"), show_default=True)
@click.option("--protocol", type=click.Choice(["standard", "generalized"]), default=None)
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None,
              help="Also write PNG plots (accuracy matrix per run, accuracy per task across the sequence).")
def compare(run_dirs, metric, protocol, plots_dir) -> None:
    """Compare runs side by side: final accuracy per task, average accuracy and BWT (from metrics.json)."""
    from .compare import compare_plots, compare_table

    paths = [str(p) for p in run_dirs]
    click.echo(compare_table(paths, list(metric), protocol))
    if plots_dir is not None:
        for png in compare_plots(paths, plots_dir, list(metric), protocol):
            click.echo(f"wrote {png}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Unlabeled images (a folder, or a data directory / manifest whose facts are ignored) to add "
                   "image-tower importance from (mas, lmas).")
@click.option("--summary", is_flag=True, help="Print the importance per parameter: numel, mean, max.")
@click.option("--device", default="auto", show_default=True)
def importance(run_dir, images, summary, device) -> None:
    """Add importance from new unlabeled images to a run's latest checkpoint, without training (--images),
    or print its importance per parameter (--summary)."""
    from .importance import add_importance, importance_summary
    from .device import resolve_device

    if images is None and not summary:
        raise UserError("give --images DIR_OR_MANIFEST to add importance, or --summary to print it")
    if images is not None:
        done = add_importance(run_dir, images, resolve_device(device))
        click.echo(f"added importance from {done['images']} images to checkpoint {done['checkpoint']} of {run_dir}")
    if summary:
        rows = importance_summary(run_dir)
        width = max(len("parameter"), *(len(r["name"]) for r in rows))
        click.echo(f"{'parameter':<{width}}{'numel':>10}{'mean':>12}{'max':>12}")
        for r in rows:
            click.echo(f"{r['name']:<{width}}{r['numel']:>10}{r['mean']:>12.4g}{r['max']:>12.4g}")


def run() -> None:  # python -m factlearn
    """Entry point of ``python -m factlearn``."""
    main(prog_name="factlearn")


if __name__ == "__main__":
    sys.exit(run())
