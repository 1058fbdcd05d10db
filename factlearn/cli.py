"""The ``factlearn`` command: a thin click wrapper over the library."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .cli_data import data, split, synth
from .cli_options import DEVICE, SEED, FiniteFloat
from .errors import UserError

# the keys of factlearn.continual.METHODS, listed here so --help does not import torch
METHOD_NAMES = ("finetune", "mas", "lmas", "l2", "ewc", "online_ewc", "si", "lwf", "joint")


def _rank() -> int:
    """This process's rank when torchrun started it (0 otherwise): only rank 0 prints results."""
    return int(os.environ.get("RANK", "0"))


# OS errors a user can cause or meet, whichever library call hits them: a folder they cannot write,
# a path that is missing or of the wrong kind, a full disk or quota, a read-only file system. Any
# other OSError stays a traceback (a programming error, or a broken machine, should be loud).
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC,
                  errno.EDQUOT, errno.EROFS}


def os_error_line(exc: OSError) -> str | None:
    """One line for an OS error a user can cause (USER_OS_ERRORS), naming the path; None for others."""
    if exc.errno not in USER_OS_ERRORS:
        return None
    why = os.strerror(exc.errno).lower()
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {why}" if paths else why


class Group(click.Group):
    """Turns a user's mistake into one line on stderr and exit code 2, never a traceback: a
    UserError, and the OS errors of USER_OS_ERRORS that library code did not name itself.

    Under torchrun, an error every rank meets (see factlearn.distributed) is printed by rank 0
    alone; one only another rank meets is printed by it, naming its rank.
    """

    def invoke(self, ctx: click.Context):
        """Run the command; a user's mistake becomes one line and exit 2, Ctrl-C exit 130."""
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if not getattr(exc, "quiet", False):
                _error(exc)
            ctx.exit(2)
        except OSError as exc:
            line = os_error_line(exc)
            if line is None:
                raise
            _error(line)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            if _rank() == 0:
                click.echo(f"Interrupted: {exc}" if str(exc) else "Interrupted.", err=True)
            ctx.exit(130)


class FaissLoaderFilter(logging.Filter):
    """faiss's loader tries its SIMD builds in turn and logs each miss at INFO (``Could not load
    library with AVX2 support due to: ModuleNotFoundError(...)``), which reads like an error under
    ``-v``: keep those out, and say once which library was loaded, with its compile options."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the loader's INFO records but the one naming the library loaded, which is rewritten."""
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if not message.startswith("Successfully loaded faiss"):
            return False
        found = [m for name, m in sys.modules.items() if name.startswith("faiss.swigfaiss") and m is not None]
        options = found[-1].get_compile_options() if found and hasattr(found[-1], "get_compile_options") else "?"
        kernel = message.removeprefix("Successfully loaded ").rstrip(".")  # "faiss", "faiss with AVX2 support"
        # DD among the options: one library that picks its SIMD code (AVX2, AVX512...) at run time
        record.msg, record.args = f"faiss kernel: {kernel} (compile options: {options})", ()
        return True


def _error(message: object) -> None:
    click.echo(f"Error: {message}" if _rank() == 0 else f"Error (rank {_rank()}): {message}", err=True)


@click.group(cls=Group)
@click.version_option(package_name="factlearn")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """Learn facts about images continually, without forgetting the old ones."""
    level = logging.INFO if verbose else logging.WARNING
    # Under torchrun the other ranks log errors only: rank 0 speaks for all of them.
    logging.basicConfig(level=level if _rank() == 0 else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").addFilter(FaissLoaderFilter())


@main.command(short_help="Train a task sequence, evaluating every task after each.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Data directory (with manifest).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config.")
@click.option("--method", type=click.Choice(METHOD_NAMES), default=None,
              show_default="method.name of --config, else finetune", help="Continual-learning method.")
@click.option("--lam", type=FiniteFloat(min=0), default=None, help="Penalty strength lambda (overrides method.lam).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per task (overrides train.epochs).")
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Number of tasks (overrides split.tasks).")
@click.option("--split", "split_kind", type=click.Choice(["random", "semantic"]), default=None, help="Split kind.")
@click.option("--tasks-file", type=click.Path(path_type=Path), default=None,
              help="Task file naming each task's facts (from `factlearn split` or `data import sherlock`); "
                   "replaces --tasks and --split.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the model's initial weights, the batch order and sampled subsets (the task split and "
                   "the train/test draw have their own: split.seed).")
@DEVICE
@click.option("--log", "loggers", default=None, metavar="LIST",
              help="What to log into RUN_DIR/logs, comma-separated: tensorboard, csv; or none. Overrides "
                   "train.log (default: csv).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last complete checkpoint (after a task, or mid-task: "
                   "train.checkpoint_every); same data, config and seed. Ctrl-C saves one at the current step.")
@click.option("--importance-data", type=click.Path(path_type=Path), default=None,
              help="mas, lmas: unlabeled images (folder, or data directory whose facts are ignored) for the image "
                   "tower's importance; the language tower's comes from the task's facts.")
@click.option("--start-from", type=click.Path(path_type=Path), default=None, metavar="RUN_DIR",
              help="Take the first task from RUN_DIR's checkpoint (a finetune or joint run with the same data, "
                   "seed and config but the method section) instead of training it; bit-identical to training it. "
                   "Not for si.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train with N processes on this machine (DDP: one per GPU, or CPU processes; train.batch_size is "
                   "the global batch). Runs torchrun's launcher; for several machines run torchrun yourself "
                   "(README, Scaling).")
def train(data_dir, config_path, method, lam, epochs, tasks, split_kind, tasks_file, out_dir, seed, device, loggers,
          resume, importance_data, start_from, nproc) -> None:
    """Train a task sequence (B1 -> B2 -> ...) and evaluate every task after each one."""
    from .config import load_config
    from .continual import METHODS
    from .training import train as run_training

    if tasks_file is not None and (tasks is not None or split_kind is not None):
        raise UserError("--tasks-file gives the task sequence: leave out --tasks and --split")
    cfg = load_config(config_path, {"method.name": method, "method.lam": lam, "train.epochs": epochs,
                                    "split.tasks": tasks, "split.kind": split_kind,
                                    "split.tasks_file": None if tasks_file is None else str(tasks_file.resolve()),
                                    "method.importance_data": None if importance_data is None else str(importance_data),
                                    "train.log": _loggers(loggers)})
    if cfg.method.name not in METHODS:
        raise UserError(f"config method.name {cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}")
    if nproc is not None and nproc > 1:
        from .distributed import launch

        if "WORLD_SIZE" in os.environ:
            raise UserError("--nproc: this process was already started by torchrun; leave --nproc out")
        ctx = click.get_current_context()
        ctx.exit(launch(nproc, _given_arguments(ctx, leave_out="nproc")))  # on failure the ranks have said why
    doc = run_training(data_dir, cfg, out_dir, seed=seed, device=device, progress=True, resume=resume,
                       start_from=start_from)
    if _rank() == 0:
        click.echo(f"run written to {out_dir}")
        uses_lam = "lam" in METHODS[cfg.method.name].options
        click.echo(f"method {cfg.method.name}" + (f", lambda {cfg.method.lam:g} (method.lam; take it from a sweep: "
                                                  "scripts/sweep_lambda.py)" if uses_lam else " (no lambda)"))
        click.echo(format_final(doc["final"]))


@main.command(short_help="Pretrain the image tower on a base world.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Base world (data directory).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (overrides train.epochs).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the initial weights and the batch order.")
@DEVICE
@click.option("--overwrite", is_flag=True, help="Replace an earlier pretrained tower in --out.")
def pretrain(data_dir, config_path, out_dir, epochs, seed, device, overwrite) -> None:
    """Pretrain the image tower on a base world's facts and write its backbone to OUT, which
    `model.pretrained: OUT` loads (docs/faithful-protocol.md)."""
    from .config import load_config
    from .training.pretrain import pretrain as run_pretrain

    cfg = load_config(config_path, {"train.epochs": epochs})
    done = run_pretrain(data_dir, cfg, out_dir, seed=seed, device=device, progress=True, overwrite=overwrite)
    click.echo(f"pretrained image tower written to {out_dir}: {done['epochs_trained']} epochs, {done['seconds']} s, "
               f"top-1 {done['test_top1']:.3f} on the base world's test images")


def _loggers(value: str | None) -> list[str] | None:
    """``--log tensorboard,csv`` as train.log's list (``none``: []); None when not given."""
    if value is None:
        return None
    from .config import LOGGERS

    names = [n.strip() for n in value.split(",") if n.strip()]
    if names == ["none"]:
        return []
    if not all(n in LOGGERS for n in names):
        raise UserError(f"--log {value}: give a comma-separated list of {', '.join(LOGGERS)}, or none")
    return names


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


@main.command(short_help="Evaluate a run's checkpoint on every task's test split.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--protocol", type=click.Choice(["standard", "generalized"]), default=None,
              help="Candidates: the task's facts (standard) or all facts seen (generalized). Default: the run's.")
@click.option("--after", "after", default=None, help="Evaluate the checkpoint after this task (default: the last).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data directory (default: the one the run was trained on).")
@DEVICE
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


@main.command(short_help="Print the top-k facts of images, with their scores.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Facts per image.")
@click.option("--all-facts", is_flag=True, help="Search every fact of the data, not only the tasks trained so far.")
@DEVICE
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


@main.command(short_help="Serve a run's model over HTTP, following its training.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one other machines can reach needs --token-file.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--top-k", type=click.IntRange(min=1, max=100), default=5, show_default=True,
              help="Facts per image when a request does not say.")
@DEVICE
@click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat", show_default=True,
              help="Fact index: exact (flat, as query) or approximate.")
@click.option("--all-facts", is_flag=True, help="Search every fact of the run, not only the tasks trained so far.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="File holding a token every API request must send as 'Authorization: Bearer TOKEN'.")
@click.option("--batch-wait-ms", type=FiniteFloat(min=0, max=1000), default=5.0, show_default=True,
              help="How long a query waits for concurrent ones to share its forward pass.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most images in one forward pass (1: no micro-batching).")
@click.option("--poll", type=FiniteFloat(min=0.05), default=2.0, show_default=True,
              help="Seconds between looks at RUN_DIR for a newly completed task's checkpoint.")
@click.option("--max-upload-mb", type=FiniteFloat(min=0.01), default=20.0, show_default=True,
              help="Largest request body.")
def serve(run_dir, host, port, top_k, device, index_kind, all_facts, token_file, batch_wait_ms, max_batch, poll,
          max_upload_mb) -> None:
    """Serve RUN_DIR's model as an HTTP JSON API and a page at / (docs/serve.md), switching to each
    newly completed task's checkpoint while training goes on. Needs the serve extra."""
    from .serve import ServeSettings, read_token, serve_run

    settings = ServeSettings(top_k=top_k, device=device, index_kind=index_kind, all_facts=all_facts,
                             token=None if token_file is None else read_token(token_file),
                             batch_wait_ms=batch_wait_ms, max_batch=max_batch, poll_s=poll,
                             max_upload_bytes=int(max_upload_mb * 2**20))
    serve_run(run_dir, host, port, settings, announce=click.echo)


@main.command(short_help="Compare runs side by side: accuracy per task, average, BWT.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--metric", type=click.Choice(["top1", "top5", "top10", "mrr"]), multiple=True,
              default=("top1", "top5"), show_default=True, help="Metric to show (repeatable).")
@click.option("--protocol", type=click.Choice(["standard", "generalized"]), multiple=True,
              show_default="both, where every run has them",
              help="Candidates: each task's own facts (standard) or every fact seen so far (generalized; tells "
                   "methods apart where standard top-5 is near 1). Repeatable.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None,
              help="Also write PNG plots into PLOTS/<protocol>/: accuracy matrix per run, accuracy per task across "
                   "the sequence, old vs new task per run.")
def compare(run_dirs, metric, protocol, plots_dir) -> None:
    """Compare runs side by side: final accuracy per task, average accuracy and BWT (from metrics.json),
    one table per protocol."""
    from .compare import compare_plots, compare_table, shared_protocols

    paths = [str(p) for p in run_dirs]
    for k, proto in enumerate(protocol or shared_protocols(paths)):
        click.echo(("\n" if k else "") + f"{proto} protocol:")
        click.echo(compare_table(paths, list(metric), proto))
        if plots_dir is not None:
            for png in compare_plots(paths, Path(plots_dir) / proto, list(metric), proto):
                click.echo(f"wrote {png}")


@main.command(short_help="Add importance from unlabeled images, or summarise it.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Unlabeled images (a folder, or a data directory / manifest whose facts are ignored) to add "
                   "image-tower importance from (mas, lmas).")
@click.option("--summary", is_flag=True, help="Print the importance per parameter: numel, mean, max.")
@DEVICE
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


main.add_command(synth)
main.add_command(data)
main.add_command(split)


def run() -> None:  # python -m factlearn
    """Entry point of ``python -m factlearn``."""
    main(prog_name="factlearn")


if __name__ == "__main__":
    sys.exit(run())
