"""The training loop over a task sequence.

For each task: train on its images only (the data of finished tasks is gone), let the method
compute its state from the task's images (MAS importance), evaluate every task's test split
through the FAISS index, then write a checkpoint and metrics.json into the run directory.

Interruptions cost at most ``train.checkpoint_every`` steps: mid-task checkpoints hold the model,
the optimizer, the method's state, the RNG and the position in the task, and the epoch order is
drawn from a generator seeded by (seed, task, epoch), so ``--resume`` continues exactly where the
checkpoint was taken: on CPU a killed and resumed run ends bit-identical to an uninterrupted one.
Ctrl-C or SIGTERM stops after the current step, saving a checkpoint there (a second one stops at
once). A checkpoint is never written from parameters that are no longer finite.

Under torchrun every process runs this loop on its share of each global batch, with DDP over both
towers; rank 0 alone writes and evaluates (:mod:`factlearn.distributed`).
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import Config
from .continual import Method, StepBatch, TaskData, create_method
from .data.images import load_images, to_model_input
from .data.manifest import Dataset, load_dataset
from .data.splits import Task, image_splits, load_tasks_file, make_split, save_split
from .distributed import SINGLE, Context, data_parallel, join_group, leave_group
from .errors import Interrupted, UserError
from .evaluate import evaluate_tasks
from .facts import matches
from .losses import fact_loss
from .model import FactModel, Vocabulary, create_model
from .retrieval.metrics import sequence_metrics
from .run import RUN_FILES, RunDir, load_weights, read_json, read_tensors

logger = logging.getLogger(__name__)

PROTOCOLS = ("standard", "generalized")
METRICS = ("top1", "top5", "top10", "mrr")
RETRIEVAL_METRICS = ("map", "map@100")
FINAL_EXTRAS = RETRIEVAL_METRICS + ("by_order", "n")


def resolve_device(device: str) -> torch.device:
    """``auto`` takes the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device (use auto, cpu or cuda)") from None


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate of step ``step`` (0-based) of a task's ``total``: a pure function of the
    position, so a resumed run takes exactly the same steps. Cosine decay ends each task at a
    settled point instead of wherever the last constant-rate step left it."""
    if schedule == "constant" or total <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * step / (total - 1)))


class Session:
    """Everything a run holds in memory: data (decoded once), split, model, method.

    ``dist``: this process's rank among those training together (every rank holds all of it).
    """

    def __init__(self, dataset: Dataset, cfg: Config, seed: int, device: torch.device, progress: bool,
                 dist: Context = SINGLE):
        self.dataset, self.cfg, self.seed, self.device, self.progress = dataset, cfg, seed, device, progress
        self.dist = dist
        if cfg.split.tasks_file is not None:
            self.tasks = load_tasks_file(cfg.split.tasks_file, dataset).tasks
        else:
            self.tasks = make_split(dataset, cfg.split.kind, cfg.split.tasks, cfg.split.seed)
        self.is_test = image_splits(dataset, cfg.split.test_fraction, cfg.split.seed)
        self.fact_ids = np.array(dataset.fact_ids())
        for task in self.tasks:  # before anything is decoded or trained: a run never fails half-way for this
            for test, what in ((False, "training"), (True, "test")):
                if len(self.rows(task, test)) == 0:
                    raise UserError(
                        f"task {task.name} has no {what} images after the split ({len(task.facts)} facts; "
                        "see the manifest's split column and split.test_fraction)"
                    )
        self.vocab = Vocabulary(dataset.facts.words())
        self.tokens, self.slot_mask = self.vocab.encode(dataset.facts.facts)  # (F, 3, L), (F, 3)
        with tqdm(total=len(dataset.records), desc="decode images", unit="img", disable=not progress, leave=False) as bar:
            self.images = load_images([r.image for r in dataset.records], cfg.model.image_size, progress=bar.update)
        torch.manual_seed(seed)
        self.model: FactModel = create_model(cfg.model, self.vocab).to(device)
        self.method: Method = create_method(cfg.method)

    def rows(self, task: Task, test: bool) -> np.ndarray:
        return np.flatnonzero(np.isin(self.fact_ids, task.facts) & (self.is_test == test))

    def labels(self, facts: list[int], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """targets (N,): each row's fact as an index into ``facts``; exclude (F, F) bool: candidates
        also true of a fact under the wildcard rule, either way (neither positives nor negatives)."""
        table = self.dataset.facts
        local = {f: i for i, f in enumerate(facts)}
        targets = torch.tensor([local[f] for f in self.fact_ids[rows]], dtype=torch.long)
        exclude = torch.tensor(
            [[a != b and (matches(table[a], table[b]) or matches(table[b], table[a])) for b in facts] for a in facts]
        )
        return targets, exclude

    def stage(self, t: int) -> Task:
        """What training step t learns: task t, or for joint training the union of tasks 1..t."""
        if not self.method.rehearses_all:
            return self.tasks[t]
        return Task(self.tasks[t].name, sorted(f for task in self.tasks[: t + 1] for f in task.facts))

    def task_data(self, task: Task) -> TaskData:
        rows = self.rows(task, test=False)
        cap = self.cfg.method.max_importance_samples
        if cap is not None and len(rows) > cap:
            rows = np.sort(np.random.default_rng([self.seed, 7]).choice(rows, cap, replace=False))
        rows = self.dist.take(rows)  # this rank's shard; TaskData.mean combines the shards' sums
        targets, exclude = self.labels(task.facts, rows)
        fact_tokens = self.tokens[task.facts].to(self.device)
        fact_mask = self.slot_mask[task.facts].to(self.device)

        def labeled(batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for start in range(0, len(rows), batch_size):
                tg = targets[start : start + batch_size]
                yield (
                    to_model_input(self.images[rows[start : start + batch_size]].to(self.device)),
                    tg.to(self.device),
                    exclude[tg].to(self.device),
                )

        def loss(img: torch.Tensor, fact: torch.Tensor, tg: torch.Tensor, exc: torch.Tensor) -> torch.Tensor:
            return fact_loss(img, fact, fact_mask, tg, exc, self.cfg.loss)

        def batches(batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for start in range(0, len(rows), batch_size):
                idx = rows[start : start + batch_size]
                fids = torch.from_numpy(self.fact_ids[idx])
                yield (
                    to_model_input(self.images[idx].to(self.device)),
                    self.tokens[fids].to(self.device),
                    self.slot_mask[fids].to(self.device),
                )

        return TaskData(task.name, len(rows), batches, labeled, (fact_tokens, fact_mask), loss, shard=self.dist)

    def optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def train_task(
        self,
        t: int,
        resume: Partial | None = None,
        save: Callable[[int, int, int, torch.optim.Optimizer], Path] | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        """Train task t from its start, or from the mid-task checkpoint ``resume``.

        ``save(epoch, batch, steps_done, optimizer)`` writes a mid-task checkpoint at that position
        (the next step to take). It is called every ``train.checkpoint_every`` steps, and when
        ``stop`` is requested (Ctrl-C), after which :class:`Interrupted` is raised.

        ``train.batch_size`` is the global batch: with several ranks each takes its share of it
        (``batch[rank::world]``) and DDP averages the gradients, so the steps are those of one process.
        """
        task, cfg, model = self.tasks[t], self.cfg.train, self.model
        stage = self.stage(t)  # the task itself, or the union so far for joint training
        rows = self.rows(stage, test=False)
        targets_all, exclude_all = self.labels(stage.facts, rows)  # (N,), (F_t, F_t)
        fact_tokens = self.tokens[stage.facts].to(self.device)
        fact_mask = self.slot_mask[stage.facts].to(self.device)
        opt = self.optimizer()
        self.method.before_task(model, self.task_data(task))
        first_epoch = first_batch = 0
        if resume is not None:
            # After before_task: the checkpoint holds the method's mid-task state (SI's path integral).
            self.method.load_state_dict(resume.method, self.device)
            load_optimizer(opt, resume.trainer, resume.optimizer, resume.folder)
            set_rng_state(resume.trainer, self.device)
            first_epoch, first_batch = resume.epoch, resume.batch
        model.train()
        steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        done = first_epoch * steps_per_epoch + first_batch
        bar = tqdm(total=total_steps, initial=done, desc=f"train {task.name}", unit="step", disable=not self.progress)
        try:
            with data_parallel(model, self.dist, cfg.sync_batch_norm) as forward:
                for epoch in range(first_epoch, cfg.epochs):
                    gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t * 1009 + epoch)
                    order = torch.randperm(len(rows), generator=gen)
                    for batch in range(first_batch if epoch == first_epoch else 0, steps_per_epoch):
                        sel = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]  # the global batch
                        mine = self.dist.take(sel)
                        x = to_model_input(self.images[rows[mine.numpy()]].to(self.device))
                        targets = targets_all[mine].to(self.device)
                        for group in opt.param_groups:
                            group["lr"] = lr_at(done, total_steps, cfg.lr, cfg.lr_schedule)
                        loss, penalty = self._step(opt, forward, x, targets,
                                                   exclude_all[targets_all[mine]].to(self.device), fact_tokens,
                                                   fact_mask, self.dist.share(len(mine), len(sel)),
                                                   f"task {task.name} (step {done + 1})")
                        done += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", penalty=f"{penalty:.3f}")
                        if save is None:
                            continue
                        position = (epoch, batch + 1) if batch + 1 < steps_per_epoch else (epoch + 1, 0)
                        if self.dist.any(stop is not None and stop.requested):
                            folder = save(*position, done, opt)
                            raise Interrupted(f"stopped in task {task.name} after step {done} of {total_steps}; "
                                              f"checkpoint {folder}. Run the same command with --resume to continue "
                                              "from there.")
                        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_steps:
                            save(*position, done, opt)
        finally:
            bar.close()
        self.method.after_task(model, self.task_data(task))

    def _step(self, opt: torch.optim.Optimizer, forward: Callable, x: torch.Tensor, targets: torch.Tensor,
              exclude: torch.Tensor, fact_tokens: torch.Tensor, fact_mask: torch.Tensor, weight: float, where: str
              ) -> tuple[float, float]:
        """One optimizer step on pixels x (b, 3, H, W), this rank's share of the global batch, against
        the stage's facts. ``forward``: both towers (DDP with several ranks); ``weight``: the share's
        weight (:meth:`Context.share`). Returns the global batch's (loss, penalty)."""
        model = self.model
        img, fact = forward(x, fact_tokens, fact_mask)  # (b, 3, d), (F_t, 3, d)
        if len(x):
            loss = fact_loss(img, fact, fact_mask, targets, exclude, self.cfg.loss)
            penalty = self.method.penalty(model, StepBatch(x, fact_tokens, fact_mask, image_emb=img, fact_emb=fact))
        else:  # a short last batch left this rank no image: it joins DDP's gradient average with weight 0
            loss, penalty = (img.sum() + fact.sum()) * 0.0, None
        total = loss if penalty is None else loss + penalty
        opt.zero_grad(set_to_none=True)
        (total if weight == 1 else total * weight).backward()
        # Every rank learns whether any rank's loss is not finite, so that all of them stop here.
        local = loss.item(), 0.0 if penalty is None else penalty.item()
        loss_sum, penalty_sum, bad = self.dist.all_sum([weight * local[0], weight * local[1],
                                                        not math.isfinite(sum(local))])
        loss_value, penalty_value = loss_sum / self.dist.world, penalty_sum / self.dist.world
        if bad:
            raise Diverged(f"training diverged on {where}: the loss is {loss_value + penalty_value}; "
                           "lower train.lr or method.lam.")
        self.method.before_step(model)
        opt.step()
        self.method.after_step(model)
        return loss_value, penalty_value

    def evaluate(self, trained: int, protocols: Sequence[str]) -> dict[str, dict[str, dict]]:
        """protocol -> every task's metrics (:func:`factlearn.evaluate.evaluate_view`), exact flat
        index; the test images are embedded once for all protocols."""
        rows = np.flatnonzero(self.is_test)
        return evaluate_tasks(
            self.model, self.dataset.facts, self.tasks, self.images[rows], self.fact_ids[rows], trained,
            list(protocols), self.cfg.eval.batch_size,
        )


def metrics_document(method: str, protocol: str, tasks: list[Task], rows: dict[str, list[dict]]) -> dict:
    """metrics.json: per protocol, matrix[m][i][j] = metric m on task j after training task i.

    ``final[task]`` holds the last row's METRICS plus whichever of FINAL_EXTRAS it has (rows
    restored from an older checkpoint may lack them); matrix and sequence cover METRICS plus
    the RETRIEVAL_METRICS present in every row.
    """
    names = [t.name for t in tasks]
    doc: dict = {"method": method, "protocol": protocol, "tasks": names, "protocols": {}}
    for proto, per_task_rows in rows.items():
        every = [row[n] for row in per_task_rows for n in names]
        keys = METRICS + tuple(m for m in RETRIEVAL_METRICS if all(m in r for r in every))
        matrix = {m: [[row[n][m] for n in names] for row in per_task_rows] for m in keys}
        last = per_task_rows[-1]
        doc["protocols"][proto] = {
            "matrix": matrix,
            "final": {n: {m: last[n][m] for m in METRICS + FINAL_EXTRAS if m in last[n]} for n in names},
            "sequence": {m: sequence_metrics(matrix[m]) for m in keys},
        }
    doc.update(doc["protocols"][protocol])
    return doc


def train(
    data_dir: str | Path,
    cfg: Config,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    resume: bool = False,
) -> dict:
    """Train ``cfg.method`` over the task sequence of ``data_dir``; returns metrics.json's content.

    With ``resume`` an existing run directory continues from its last complete checkpoint (after a
    task, or mid-task: ``train.checkpoint_every``). Without it, a directory holding more than the
    files of a run that never reached its first checkpoint is refused, so nothing of value is
    overwritten; so is a directory another process is training into. Ctrl-C (or SIGTERM) saves a
    checkpoint at the current step and raises :class:`factlearn.errors.Interrupted`; a diverged
    loss raises a UserError naming the last good checkpoint, which is kept.

    Started by torchrun (``WORLD_SIZE`` > 1), every process calls this and they train together
    (:mod:`factlearn.distributed`); rank 0 writes the run directory and returns the same document.
    """
    ctx, dev, owned = join_group(resolve_device(device))
    try:
        run = RunDir(out_dir)
        fresh = ctx.agree(lambda: _check_out_dir(run, resume))
        dataset = ctx.agree(lambda: load_dataset(data_dir))
        s = ctx.agree(lambda: Session(dataset, cfg, seed, dev, progress and ctx.is_main, ctx))
        with ExitStack() as held:
            def lock() -> None:  # rank 0 holds the run directory's lock for all of them
                if ctx.is_main:
                    run.path.mkdir(parents=True, exist_ok=True)
                    held.enter_context(run.lock())
                    if _check_out_dir(run, resume) != fresh:
                        raise UserError(f"--out {run.path} was written to by another process while the data was loading")

            ctx.agree(lock)
            return _train(run, fresh, data_dir, dataset, s, cfg, seed, dev)
    finally:
        leave_group(owned)


def _train(run: RunDir, fresh: bool, data_dir, dataset: Dataset, s: Session, cfg: Config, seed: int,
           dev: torch.device) -> dict:
    ctx = s.dist  # rank 0 writes; the others wait for it where they could otherwise exit first
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    start, partial = 0, None
    if fresh:
        if ctx.is_main:
            run.write_config(cfg)
            groups = dataset.groups()
            run.write_json("facts.json", [{"fact": list(f.slots), "group": groups.get(f)} for f in dataset.facts.facts])
            run.write_json("vocab.json", s.vocab.words[2:])
            save_split(run.file("split.json"), s.tasks, {"kind": cfg.split.kind, "seed": cfg.split.seed})
            _write_run_json(run, data_dir, cfg, seed, dev, [], ctx.world)  # last: from now on the folder is a run
    else:
        start, rows, partial = ctx.agree(lambda: _restore(run, s, cfg, seed))  # every rank reads it
        if ctx.is_main:  # after every rank has read the checkpoints
            if start:
                _write_progress(run, s, cfg, rows, data_dir, seed, dev, start)  # a crash may have come before them
            if partial is None:
                run.clear_partials()  # none, or one of a task completed since: nothing to continue
    last_good = run.checkpoint(s.tasks[start - 1].name) if start else None  # named when training diverges

    def save_partial(t: int, epoch: int, batch: int, done: int, opt: torch.optim.Optimizer) -> Path | None:
        nonlocal last_good
        _check_finite(s, f"task {s.tasks[t].name} (step {done})")  # the same parameters on every rank
        if ctx.is_main:
            tensors, scalars = trainer_state(dev, opt)
            state = {"kind": "partial", "task": t, "name": s.tasks[t].name, "epoch": epoch, "batch": batch,
                     "step": done, "rows": rows, "optimizer": scalars}
            last_good = run.save_partial(s.tasks[t].name, done, s.model, s.method, state, tensors)
        ctx.barrier()
        return last_good

    with StopRequest() as stop:
        for t in range(start, len(s.tasks)):
            name = s.tasks[t].name
            try:
                s.train_task(t, partial if t == start else None, functools.partial(save_partial, t), stop)
                _check_finite(s, f"the end of task {name}")
            except Diverged as exc:
                kept = f"the last good checkpoint is kept: {last_good}" if last_good else "no checkpoint was written"
                raise ctx.error(f"{exc} Stopped; {kept}.") from None
            if ctx.is_main:
                for proto, result in s.evaluate(t + 1, PROTOCOLS).items():
                    rows[proto].append(result)
                tensors, _ = trainer_state(dev)
                last_good = run.save_checkpoint(name, s.model, s.method,
                                                {"kind": "task", "task": t, "name": name, "rows": rows}, tensors)
                run.clear_partials()
                doc = _write_progress(run, s, cfg, rows, data_dir, seed, dev, t + 1)
                final = doc["final"]
                logger.info("after %s: %s", name, ", ".join(f"{n} top1={final[n]['top1']:.3f}" for n in final))
            else:
                last_good = run.checkpoint(name)
            ctx.barrier()
            if ctx.any(stop.requested) and t + 1 < len(s.tasks):
                raise Interrupted(f"stopped after task {name}; its checkpoint is complete. "
                                  "Run the same command with --resume to continue.")
    return run.read_json("metrics.json")


class Diverged(UserError):
    """The loss or the parameters are no longer finite."""


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (``kill``, a batch system's time limit) during training: the first
    asks the loop to stop at the next point where it can save a checkpoint (after the current step,
    or after the current task's checkpoint); a second raises KeyboardInterrupt at once (everything
    on disk stays whole: writes are atomic). Outside the main thread signals cannot be caught and
    nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s: stopping after the current step with a checkpoint (again to stop at once)",
                       signal.Signals(signum).name)


@dataclass
class Partial:
    """A mid-task checkpoint to continue from: the position (the next step) and the states."""

    folder: Path
    epoch: int
    batch: int
    method: dict[str, torch.Tensor]
    trainer: dict[str, torch.Tensor]  # optimizer.<param index>.<key>, rng.cpu, rng.cuda
    optimizer: dict  # "<param index>.<key>" -> the optimizer state's non-tensor values


def trainer_state(
    device: torch.device, opt: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """The RNG state and the optimizer's per-parameter state, split into tensors (safetensors) and
    non-tensor values (JSON). Param groups are not saved: they follow from the (checked) config."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    scalars: dict = {}
    for idx, values in (opt.state_dict()["state"] if opt is not None else {}).items():
        for key, v in values.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = v
            else:
                scalars[f"{idx}.{key}"] = v
    return tensors, scalars


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict, where: Path) -> None:
    """Restore what :func:`trainer_state` saved of ``opt``; shapes are checked against the parameters."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    try:
        for name, t in tensors.items():
            if name.startswith("optimizer."):
                _, idx, key = name.split(".", 2)
                state.setdefault(int(idx), {})[key] = t
        for name, v in scalars.items():
            idx, key = name.split(".", 1)
            state.setdefault(int(idx), {})[key] = v
    except ValueError:
        raise UserError(f"{where}: malformed optimizer state") from None
    for idx, values in state.items():
        if not 0 <= idx < len(params) or any(
            isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != params[idx].shape for v in values.values()
        ):
            raise UserError(f"{where}: the optimizer state does not match the model config")
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def set_rng_state(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def _check_finite(s: Session, where: str) -> None:
    # A step can turn the parameters into inf/NaN before any loss shows it: never checkpoint them.
    tensors = [*s.model.named_parameters(), *s.method.state.items()]
    bad = next((n for n, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise Diverged(f"training diverged at {where}: {bad} is no longer finite; lower train.lr or method.lam.")


def _check_out_dir(run: RunDir, resume: bool) -> bool:
    """True when the run starts from scratch; refuses to write into anything that is not ours.

    A run directory holding only the files written at the start (a run that failed or was
    stopped before its first checkpoint) has nothing to lose: it starts again without --resume.
    """
    if not run.path.exists():
        return True
    if not run.path.is_dir():
        raise UserError(f"--out {run.path} exists and is not a directory")
    names = {p.name for p in run.path.iterdir()}
    if all(n in RUN_FILES or n == "run.json" or n.startswith(".") for n in names):
        if resume and run.is_run():
            run.require()
            return False  # nothing trained yet, but its config and split are checked all the same
        return True  # empty, or cut short before run.json: nothing trained yet
    if not resume:
        raise UserError(f"--out {run.path} exists and is not empty (use --resume to continue a run)")
    if not run.is_run():
        raise UserError(f"--resume: {run.path} is not a factlearn run directory (no run.json)")
    run.require()
    return False


def _write_progress(run: RunDir, s: Session, cfg: Config, rows: dict, data_dir, seed: int, dev: torch.device,
                    completed: int) -> dict:
    """metrics.json and run.json after ``completed`` tasks (written after the task's checkpoint)."""
    doc = metrics_document(cfg.method.name, cfg.eval.protocol, s.tasks, rows)
    run.write_json("metrics.json", doc)
    _write_run_json(run, data_dir, cfg, seed, dev, [task.name for task in s.tasks[:completed]], s.dist.world)
    return doc


def _write_run_json(run: RunDir, data_dir, cfg: Config, seed: int, dev: torch.device, done: list[str],
                    processes: int) -> None:
    run.write_json("run.json", {
        "factlearn_version": __version__,
        "data": str(Path(data_dir).resolve()),
        "method": cfg.method.name,
        "seed": seed,
        "device": str(dev),
        "processes": processes,  # ranks that trained the latest task together (the results do not depend on it)
        "completed": done,
    })


# Keys that may differ on --resume: they change how often a run is saved, not what it computes.
RESUME_MAY_CHANGE = {"train.checkpoint_every"}


def _restore(run: RunDir, s: Session, cfg: Config, seed: int) -> tuple[int, dict, Partial | None]:
    """Load the last complete checkpoint: the saved config, split and seed must match. Reads only
    (every rank loads the same files; the caller rewrites what a crash may have left stale).

    Returns the first task to train, the metric rows so far, and the mid-task checkpoint to
    continue that task from (None: from its start).
    """
    saved = _flatten(run.config().to_dict())
    for key, value in _flatten(cfg.to_dict()).items():
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            raise UserError(f"--resume: config {key} is {value!r} here but {saved.get(key)!r} in "
                            f"{run.file('config.yaml')}; resume with the run's own config")
    tasks = run.tasks()
    if [(t.name, t.facts) for t in tasks] != [(t.name, t.facts) for t in s.tasks]:
        raise UserError(f"--resume: the data's split differs from {run.file('split.json')}")
    info = run.require()
    if info.get("seed") != seed:
        raise UserError(f"--resume: --seed {seed} differs from the run's seed {info.get('seed')}")
    done = run.completed()
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    if done:
        folder = run.checkpoint(done[-1])
        load_weights(s.model, folder / "model.safetensors")
        s.method.load_state_dict(read_tensors(folder / "method.safetensors"), s.device)
        if (folder / "trainer.safetensors").is_file():  # runs from before it existed: no RNG to restore
            set_rng_state(read_tensors(folder / "trainer.safetensors"), s.device)
        rows = _rows(read_json(folder / "state.json"), folder)
    t, found = len(done), run.latest_partial()
    if found is None or t == len(s.tasks) or found[1].get("task") != t or found[1].get("name") != s.tasks[t].name:
        return t, rows, None
    folder, state = found
    try:
        epoch, batch, optimizer = int(state["epoch"]), int(state["batch"]), dict(state["optimizer"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / 'state.json'} is malformed: no epoch, batch or optimizer") from None
    load_weights(s.model, folder / "model.safetensors")
    partial = Partial(folder, epoch, batch, read_tensors(folder / "method.safetensors"),
                      read_tensors(folder / "trainer.safetensors"), optimizer)
    logger.info("resuming task %s at epoch %d, batch %d from %s", state["name"], epoch + 1, batch, folder)
    return t, _rows(state, folder), partial


def _rows(state: object, folder: Path) -> dict[str, list[dict]]:
    rows = state.get("rows") if isinstance(state, dict) else None
    if not isinstance(rows, dict) or set(rows) != set(PROTOCOLS):
        raise UserError(f"{folder / 'state.json'} is malformed: no metric rows")
    return rows


def _flatten(cfg: dict) -> dict:
    """Config.to_dict() -> {"section.key": value}."""
    return {f"{section}.{key}": v for section, values in cfg.items() for key, v in values.items()}
