"""The ``factlearn`` command: a thin click wrapper over the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .errors import UserError

METHOD_NAMES = ("finetune", "mas")


class Group(click.Group):
    """Turns a UserError into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=Group)
@click.version_option(package_name="factlearn")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """Learn facts about images continually, without forgetting the old ones."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["small", "6ds"]), default="small", show_default=True, help="World size preset.")
@click.option("--seed", type=int, default=0, show_default=True)
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


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Data directory (with manifest).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config.")
@click.option("--method", type=str, default=None, help=f"Continual-learning method: {', '.join(METHOD_NAMES)}.")
@click.option("--lam", type=float, default=None, help="Penalty strength lambda (overrides method.lam).")
@click.option("--epochs", type=int, default=None, help="Epochs per task (overrides train.epochs).")
@click.option("--tasks", type=int, default=None, help="Number of tasks (overrides split.tasks).")
@click.option("--split", "split_kind", type=click.Choice(["random", "semantic"]), default=None, help="Split kind.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue an existing run after its last complete task.")
def train(data_dir, config_path, method, lam, epochs, tasks, split_kind, out_dir, seed, device, resume) -> None:
    """Train a task sequence (B1 -> B2 -> ...) and evaluate every task after each one."""
    from .config import load_config
    from .continual import METHODS
    from .train import train as run_training

    if method is not None and method not in METHODS:
        raise UserError(f"--method {method!r} is not one of {', '.join(sorted(METHODS))}")
    cfg = load_config(config_path, {"method.name": method, "method.lam": lam, "train.epochs": epochs,
                                    "split.tasks": tasks, "split.kind": split_kind})
    if cfg.method.name not in METHODS:
        raise UserError(f"config method.name {cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}")
    doc = run_training(data_dir, cfg, out_dir, seed=seed, device=device, progress=True, resume=resume)
    click.echo(f"run written to {out_dir}")
    click.echo(format_final(doc))


def format_final(doc: dict, protocol: str | None = None) -> str:
    """A per-task table of the final top-1/5/10 (and MRR)."""
    block = doc["protocols"][protocol] if protocol else doc
    lines = [f"{'task':<8}{'top1':>8}{'top5':>8}{'top10':>8}{'mrr':>8}"]
    for name, m in block["final"].items():
        lines.append(f"{name:<8}{m['top1']:>8.3f}{m['top5']:>8.3f}{m['top10']:>8.3f}{m['mrr']:>8.3f}")
    return "\n".join(lines)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--protocol", type=click.Choice(["standard", "generalized"]), default=None,
              help="Candidates: the task's facts (standard) or all facts seen (generalized). Default: the run's.")
@click.option("--after", "after", default=None, help="Evaluate the checkpoint after this task (default: the last).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data directory (default: the one the run was trained on).")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(run_dir, protocol, after, data_dir, device, as_json) -> None:
    """Evaluate a run's checkpoint on every task's test split (top-1 / top-5 / top-10, MRR)."""
    import numpy as np

    from .data.images import load_images
    from .data.manifest import load_dataset
    from .data.splits import image_splits
    from .evaluate import evaluate_tasks
    from .run import RunDir
    from .train import resolve_device

    run = RunDir(run_dir)
    model, task = run.load_model(after, resolve_device(device))
    cfg, tasks, facts = run.config(), run.tasks(), run.facts()
    dataset = load_dataset(data_dir or run.read_json("run.json")["data"])
    if dataset.facts.facts != facts.facts:
        raise UserError(f"the data's facts differ from {run.file('facts.json')}: not the data this run was trained on")
    protocol = protocol or cfg.eval.protocol
    is_test = image_splits(dataset, cfg.split.test_fraction, cfg.split.seed)
    rows = np.flatnonzero(is_test)
    images = load_images([dataset.records[i].image for i in rows], cfg.model.image_size)
    trained = [t.name for t in tasks].index(task) + 1
    results = evaluate_tasks(model, facts, tasks, images, np.array(dataset.fact_ids())[rows], trained, protocol,
                             cfg.eval.batch_size)
    if as_json:
        click.echo(json.dumps({"after": task, "protocol": protocol, "tasks": results}, indent=2))
        return
    click.echo(f"{run_dir}: after {task}, {protocol} protocol")
    click.echo(format_final({"final": results}))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--all-facts", is_flag=True, help="Search every fact of the data, not only the tasks trained so far.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def query(run_dir, images, top_k, all_facts, device, as_json) -> None:
    """Print the top-k facts for each IMAGE (a file or a folder of images), with cosine scores."""
    from .query import query_images

    results = query_images(run_dir, [str(p) for p in images], top_k, all_facts, device)
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
def compare(run_dirs, metric, protocol) -> None:
    """Compare runs side by side: final accuracy per task after the last task, and the mean."""
    from .compare import compare_table

    click.echo(compare_table([str(p) for p in run_dirs], list(metric), protocol))


def run() -> None:  # python -m factlearn
    main(prog_name="factlearn")


if __name__ == "__main__":
    sys.exit(run())
