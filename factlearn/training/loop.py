"""The training loop over a task sequence: ``factlearn train``.

For each task: train on its images only (the data of finished tasks is gone), let the method
compute its state from the task's images (MAS importance), evaluate every task's test split
through the FAISS index, then write a checkpoint and metrics.json into the run directory.

Interruptions cost at most ``train.checkpoint_every`` steps: mid-task checkpoints hold the model,
the optimizer, the method's state, the RNG and the position in the task
(:mod:`factlearn.training.state`), so ``--resume`` continues exactly where the checkpoint was
taken: on CPU a killed and resumed run ends bit-identical to an uninterrupted one. Ctrl-C or
SIGTERM stops after the current step, saving a checkpoint there (a second one stops at once). A
checkpoint is never written from parameters that are no longer finite.

The run records the fingerprint of its data when it starts (data.json), and ``--resume`` refuses
data that differs from it (:func:`factlearn.training.state.check_resume`). Everything that can be
checked is checked before the run directory is written (the configuration, the data, the model);
a fresh start that fails anyway before its first checkpoint leaves nothing behind.

Under torchrun every process runs this loop on its share of each global batch, with DDP over both
towers; rank 0 alone writes and evaluates (:mod:`factlearn.distributed`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from contextlib import ExitStack
from pathlib import Path

import torch

from .. import __version__
from ..config import Config
from ..data.fingerprint import data_fingerprint
from ..data.manifest import Dataset, find_manifest, load_dataset
from ..data.splits import save_split
from ..device import resolve_device
from ..distributed import join_group, leave_group
from ..errors import Interrupted, UserError
from ..model import resolve_pretrained
from ..progress import phase
from ..results import FILE as METRICS_FILE
from ..results import PROTOCOLS, metrics_document
from ..run import RunDir
from .logs import LOG_DIR, RunLog, check_loggers, steps_before
from .schedule import Plateau
from .session import Session
from .fork import FirstTask, check_parent, take_first_task
from .signals import StopRequest
from .state import TOKENIZER, check_out_dir, check_resume, discard_start, restore, trainer_state
from .step import Diverged, check_finite
from .task import train_task

logger = logging.getLogger(__name__)


def train(
    data_dir: str | Path,
    cfg: Config,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    resume: bool = False,
    start_from: str | Path | None = None,
) -> dict:
    """Train ``cfg.method`` over the task sequence of ``data_dir``; returns metrics.json's content.

    With ``resume`` an existing run directory continues from its last complete checkpoint (after a
    task, or mid-task: ``train.checkpoint_every``). Without it, a directory holding more than the
    files of a run that never reached its first checkpoint is refused, so nothing of value is
    overwritten; so is a directory another process is training into, and with ``resume`` data
    other than the run's (data.json: :func:`factlearn.training.state.check_resume`). A fresh start
    that fails before its first checkpoint removes what it wrote. Ctrl-C (or SIGTERM) saves a
    checkpoint at the current step and raises :class:`factlearn.errors.Interrupted`; a diverged
    loss raises a UserError naming the last good checkpoint, which is kept.

    Started by torchrun (``WORLD_SIZE`` > 1), every process calls this and they train together
    (:mod:`factlearn.distributed`); rank 0 writes the run directory and returns the same document.

    ``start_from``: a fresh run takes the first task from that run's checkpoint instead of training it
    (:mod:`factlearn.training.fork`: bit-identical to training it; refused where it would not be). A
    run that already has a checkpoint ignores it.

    With ``model.pretrained``, the folder's backbone architecture is written into the run's
    ``model.backbone_config`` (:func:`factlearn.model.resolve_pretrained`): the run then loads
    without the folder.
    """
    ctx, dev, owned = join_group(resolve_device(device))
    try:
        cfg = ctx.agree(lambda: dataclasses.replace(cfg, model=resolve_pretrained(cfg.model)))
        ctx.agree(lambda: check_loggers(cfg.train.log))
        run = RunDir(out_dir)
        fresh = ctx.agree(lambda: check_out_dir(run, resume))
        created = not run.path.exists()
        dataset = ctx.agree(lambda: load_dataset(data_dir))
        fingerprint = ctx.agree(lambda: data_fingerprint(find_manifest(data_dir), dataset))
        if not fresh:  # before the images are decoded: a mismatch is told at once
            ctx.agree(lambda: check_resume(run, cfg, seed, dataset, fingerprint, data_dir))
        s = ctx.agree(lambda: Session(dataset, cfg, seed, dev, progress and ctx.is_main, ctx))
        first = None
        if fresh and start_from is not None:
            if Path(start_from).resolve() == run.path.resolve():
                raise UserError(f"--start-from {start_from} is the run directory itself (--out)")
            first = ctx.agree(lambda: check_parent(start_from, cfg, seed, fingerprint, s))
        with ExitStack() as held:
            def lock() -> None:  # rank 0 holds the run directory's lock for all of them
                if ctx.is_main:
                    held.enter_context(run.lock())
                    if check_out_dir(run, resume) != fresh:
                        raise UserError(f"--out {run.path} was written to by another process while the data was loading")

            ctx.agree(lock)
            try:
                return _train(run, fresh, data_dir, dataset, fingerprint, s, cfg, seed, dev, first)
            except Exception:  # not a kill or Ctrl-C: those keep what they wrote, as the run does
                if fresh and ctx.is_main:
                    discard_start(run, created)
                raise
    finally:
        leave_group(owned)


def _train(run: RunDir, fresh: bool, data_dir, dataset: Dataset, fingerprint: dict, s: Session, cfg: Config,
           seed: int, dev: torch.device, first: FirstTask | None = None) -> dict:
    ctx = s.dist  # rank 0 writes; the others wait for it where they could otherwise exit first
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    epochs: dict[str, int] = {}  # task name -> epochs trained (fewer than train.epochs at a plateau)
    start, partial = 0, None
    if fresh:
        if ctx.is_main:
            run.write_config(cfg)
            groups = dataset.groups()
            run.write_json("facts.json", [{"fact": list(f.slots), "group": groups.get(f)} for f in dataset.facts.facts])
            run.write_json("vocab.json", s.vocab.words[2:])
            s.vocab.save(run.file(TOKENIZER))
            save_split(run.file("split.json"), s.tasks, _split_info(cfg))
            run.write_data_fingerprint(fingerprint)
            _write_run_json(run, data_dir, cfg, seed, dev, [], ctx.world, epochs, {},  # last: from now on a run
                            None if first is None else str(first.parent.resolve()))
        if first is not None:  # the first task is the parent's: its state, then this run's checkpoint of it
            take_first_task(first, s)
            check_finite(s.model, s.method, f"the end of task {s.tasks[0].name}")
            rows, epochs, start = first.rows, dict(first.epochs), 1
            if ctx.is_main:
                tensors, _ = trainer_state(dev)
                run.save_checkpoint(s.tasks[0].name, s.model, s.method,
                                    {"kind": "task", "task": 0, "name": s.tasks[0].name, "rows": rows,
                                     "epochs": epochs, "validation": s.validation}, tensors)
                _write_progress(run, s, cfg, rows, epochs, data_dir, seed, dev, 1)
            ctx.barrier()
    else:
        start, rows, epochs, partial = ctx.agree(lambda: restore(run, s))  # every rank reads it
        if ctx.is_main:  # after every rank has read the checkpoints
            if start:
                _write_progress(run, s, cfg, rows, epochs, data_dir, seed, dev, start)  # a crash may have come before
            if partial is None:
                run.clear_partials()  # none, or one of a task completed since: nothing to continue
    last_good = run.checkpoint(s.tasks[start - 1].name) if start else None  # named when training diverges
    log = RunLog(run.file(LOG_DIR), cfg.train.log if ctx.is_main else (), resume=not fresh)  # train.log
    try:
        return _train_tasks(run, s, cfg, start, partial, rows, epochs, last_good, log, data_dir, seed, dev)
    finally:
        log.close()


def _train_tasks(run: RunDir, s: Session, cfg: Config, start: int, partial, rows: dict, epochs: dict[str, int],
                 last_good: Path | None, log: RunLog, data_dir, seed: int, dev: torch.device) -> dict:
    """Train tasks ``start``.. (the first from ``partial``, a mid-task checkpoint, if any), writing a
    checkpoint, metrics.json and the logs after each."""
    ctx = s.dist

    def save_partial(t: int, epoch: int, batch: int, done: int, opt: torch.optim.Optimizer,
                     plateau: Plateau | None) -> Path | None:
        nonlocal last_good
        check_finite(s.model, s.method, f"task {s.tasks[t].name} (step {done})")  # the same parameters on every rank
        if ctx.is_main:
            log.flush()  # the logs hold every step the checkpoint covers
            tensors, scalars = trainer_state(dev, opt)
            state = {"kind": "partial", "task": t, "name": s.tasks[t].name, "epoch": epoch, "batch": batch,
                     "step": done, "rows": rows, "epochs": epochs, "optimizer": scalars}
            if plateau is not None:
                state["plateau"] = plateau.state_dict()
            last_good = run.save_partial(s.tasks[t].name, done, s.model, s.method, state, tensors)
        ctx.barrier()
        return last_good

    with StopRequest() as stop:
        for t in range(start, len(s.tasks)):
            name = s.tasks[t].name
            offset = steps_before(s, t, epochs)  # the global step where task t starts (the logs' x axis)
            try:
                epochs[name] = train_task(s, t, partial if t == start else None, functools.partial(save_partial, t),
                                          stop, functools.partial(log.step, offset))
                check_finite(s.model, s.method, f"the end of task {name}")
            except Diverged as exc:
                kept = f"the last good checkpoint is kept: {last_good}" if last_good else "no checkpoint was written"
                if ctx.is_main and last_good is not None:  # a result to report, not a run to retry
                    run.mark_diverged(name, str(exc))
                raise ctx.error(f"{exc} Stopped; {kept}.") from None
            if ctx.is_main:
                with phase(f"evaluate after {name} ({', '.join(PROTOCOLS)} protocols)", s.progress):
                    for proto, result in s.evaluate(t + 1, PROTOCOLS).items():
                        rows[proto].append(result)
                tensors, _ = trainer_state(dev)
                last_good = run.save_checkpoint(name, s.model, s.method, {"kind": "task", "task": t, "name": name,
                                                                          "rows": rows, "epochs": epochs,
                                                                          "validation": s.validation}, tensors)
                run.clear_partials()
                run.clear_diverged()  # a run resumed past the task it once diverged in
                doc = _write_progress(run, s, cfg, rows, epochs, data_dir, seed, dev, t + 1)
                log.task_end(steps_before(s, t + 1, epochs), doc, t + 1, s.method.state)
                final = doc["final"]
                logger.info("after %s: %s", name, ", ".join(f"{n} top1={final[n]['top1']:.3f}" for n in final))
            else:
                last_good = run.checkpoint(name)
            ctx.barrier()
            if ctx.any(stop.requested) and t + 1 < len(s.tasks):
                raise Interrupted(f"stopped after task {name}; its checkpoint is complete. "
                                  "Run the same command with --resume to continue.")
    return run.read_json(METRICS_FILE)


def _write_progress(run: RunDir, s: Session, cfg: Config, rows: dict, epochs: dict[str, int], data_dir, seed: int,
                    dev: torch.device, completed: int) -> dict:
    """metrics.json and run.json after ``completed`` tasks (written after the task's checkpoint)."""
    doc = metrics_document(cfg.method.name, cfg.eval.protocol, [task.name for task in s.tasks], rows)
    run.write_json(METRICS_FILE, doc)
    _write_run_json(run, data_dir, cfg, seed, dev, [task.name for task in s.tasks[:completed]], s.dist.world, epochs,
                    s.validation)
    return doc


def _write_run_json(run: RunDir, data_dir, cfg: Config, seed: int, dev: torch.device, done: list[str],
                    processes: int, epochs: dict[str, int], validation: dict[str, list[float]],
                    started_from: str | None = None) -> None:
    """run.json; ``started_from`` (the parent of a forked run) is kept from the file once written."""
    if started_from is None and run.is_run():
        old = run.read_json("run.json")
        started_from = old.get("started_from") if isinstance(old, dict) else None
    run.write_json("run.json", {
        "factlearn_version": __version__,
        "data": str(Path(data_dir).resolve()),
        "method": cfg.method.name,
        "seed": seed,
        "device": str(dev),
        "processes": processes,  # ranks that trained the latest task together (the results do not depend on it)
        "completed": done,
        "epochs": {name: epochs[name] for name in done if name in epochs},  # per task; < train.epochs at a plateau
        "validation": {name: validation[name] for name in done if name in validation},  # top-1 per epoch
        **({"tasks_file": _split_info(cfg)["tasks_file"]} if cfg.split.tasks_file is not None else {}),
        **({"started_from": started_from} if started_from else {}),  # the first task is this run's (fork.py)
    })


def _split_info(cfg: Config) -> dict:
    """How the task sequence was made, for split.json and run.json: the split's kind and seed, or
    the task file's path and the SHA-256 of its content (what the run trained on)."""
    if cfg.split.tasks_file is None:
        return {"kind": cfg.split.kind, "seed": cfg.split.seed}
    return {"tasks_file": {"path": cfg.split.tasks_file, "sha256": _sha256(cfg.split.tasks_file)}}


@functools.lru_cache(maxsize=8)
def _sha256(path: str) -> str:  # read once: run.json is rewritten after every task
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
