"""The training loop over a task sequence.

For each task: train on its images only (the data of finished tasks is gone), let the method
compute its state from the task's images (MAS importance), evaluate every task's test split
through the FAISS index, then write a checkpoint and metrics.json into the run directory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import Config
from .continual import Method, StepBatch, TaskData, create_method
from .data.images import load_images, to_model_input
from .data.manifest import Dataset, load_dataset
from .data.splits import Task, image_splits, load_tasks_file, make_split, save_split
from .errors import UserError
from .evaluate import evaluate_tasks
from .facts import matches
from .losses import fact_loss
from .model import FactModel, Vocabulary, create_model
from .retrieval.metrics import sequence_metrics
from .run import RunDir, load_weights, read_tensors

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


class Session:
    """Everything a run holds in memory: data (decoded once), split, model, method."""

    def __init__(self, dataset: Dataset, cfg: Config, seed: int, device: torch.device, progress: bool):
        self.dataset, self.cfg, self.seed, self.device, self.progress = dataset, cfg, seed, device, progress
        if cfg.split.tasks_file is not None:
            self.tasks = load_tasks_file(cfg.split.tasks_file, dataset).tasks
        else:
            self.tasks = make_split(dataset, cfg.split.kind, cfg.split.tasks, cfg.split.seed)
        self.is_test = image_splits(dataset, cfg.split.test_fraction, cfg.split.seed)
        self.fact_ids = np.array(dataset.fact_ids())
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

        return TaskData(task.name, len(rows), batches, labeled, (fact_tokens, fact_mask), loss)

    def train_task(self, t: int) -> None:
        task, cfg, model = self.tasks[t], self.cfg.train, self.model
        stage = self.stage(t)  # the task itself, or the union so far for joint training
        rows = self.rows(stage, test=False)
        if len(rows) == 0:
            raise UserError(f"task {task.name} has no training images after the split")
        targets_all, exclude_all = self.labels(stage.facts, rows)  # (N,), (F_t, F_t)
        fact_tokens = self.tokens[stage.facts].to(self.device)
        fact_mask = self.slot_mask[stage.facts].to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.method.before_task(model, self.task_data(task))
        model.train()
        steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
        bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"train {task.name}", unit="step", disable=not self.progress)
        for epoch in range(cfg.epochs):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t * 1009 + epoch)
            order = torch.randperm(len(rows), generator=gen)
            for start in range(0, len(rows), cfg.batch_size):
                sel = order[start : start + cfg.batch_size]
                x = to_model_input(self.images[rows[sel.numpy()]].to(self.device))
                targets = targets_all[sel].to(self.device)
                img = model.embed_images(x)  # (B, 3, d)
                fact = model.embed_facts(fact_tokens, fact_mask)  # (F_t, 3, d)
                loss = fact_loss(img, fact, fact_mask, targets, exclude_all[targets_all[sel]].to(self.device), self.cfg.loss)
                penalty = self.method.penalty(model, StepBatch(x, fact_tokens, fact_mask, image_emb=img, fact_emb=fact))
                total = loss if penalty is None else loss + penalty
                if not torch.isfinite(total):
                    raise UserError(
                        f"training diverged on task {task.name} (epoch {epoch + 1}): loss is {total.item()}; "
                        "lower train.lr or method.lam. The last complete checkpoint is kept."
                    )
                opt.zero_grad(set_to_none=True)
                total.backward()
                self.method.before_step(model)
                opt.step()
                self.method.after_step(model)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", penalty=f"{0.0 if penalty is None else penalty.item():.3f}")
        bar.close()
        self.method.after_task(model, self.task_data(task))

    def evaluate(self, trained: int, protocol: str) -> dict[str, dict]:
        """Every task's metrics (:func:`factlearn.evaluate.evaluate_view`), exact flat index."""
        rows = np.flatnonzero(self.is_test)
        return evaluate_tasks(
            self.model, self.dataset.facts, self.tasks, self.images[rows], self.fact_ids[rows], trained,
            protocol, self.cfg.eval.batch_size,
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

    With ``resume`` an existing run directory continues after its last complete task; without it
    an existing non-empty directory is refused, so nothing already written is overwritten.
    """
    run = RunDir(out_dir)
    if run.path.exists() and any(run.path.iterdir()) and not resume:
        raise UserError(f"--out {run.path} exists and is not empty (use --resume to continue a run)")
    dev = resolve_device(device)
    dataset = load_dataset(data_dir)
    s = Session(dataset, cfg, seed, dev, progress)
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    start = 0
    if resume and run.is_run():
        start, rows = _restore(run, s, cfg, seed)
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        groups = dataset.groups()
        run.write_json("facts.json", [{"fact": list(f.slots), "group": groups.get(f)} for f in dataset.facts.facts])
        run.write_json("vocab.json", s.vocab.words[2:])
        save_split(run.file("split.json"), s.tasks, {"kind": cfg.split.kind, "seed": cfg.split.seed})
        _write_run_json(run, data_dir, cfg, seed, dev, [])
    for t in range(start, len(s.tasks)):
        s.train_task(t)
        for proto in PROTOCOLS:
            rows[proto].append(s.evaluate(t + 1, proto))
        done = [task.name for task in s.tasks[: t + 1]]
        run.save_checkpoint(s.tasks[t].name, s.model, s.method, {"task": t, "name": s.tasks[t].name, "rows": rows})
        doc = metrics_document(cfg.method.name, cfg.eval.protocol, s.tasks, rows)
        run.write_json("metrics.json", doc)
        _write_run_json(run, data_dir, cfg, seed, dev, done)
        final = doc["final"]
        logger.info("after %s: %s", s.tasks[t].name,
                    ", ".join(f"{n} top1={final[n]['top1']:.3f}" for n in final))
    return run.read_json("metrics.json")


def _write_run_json(run: RunDir, data_dir, cfg: Config, seed: int, dev: torch.device, done: list[str]) -> None:
    run.write_json("run.json", {
        "factlearn_version": __version__,
        "data": str(Path(data_dir).resolve()),
        "method": cfg.method.name,
        "seed": seed,
        "device": str(dev),
        "completed": done,
    })


def _restore(run: RunDir, s: Session, cfg: Config, seed: int) -> tuple[int, dict]:
    """Continue after the last complete task: the saved config and split must match."""
    saved = run.config()
    if saved.to_dict() != cfg.to_dict():
        raise UserError(f"--resume: the config differs from the one saved in {run.file('config.yaml')}")
    if [t.name for t in run.tasks()] != [t.name for t in s.tasks] or [t.facts for t in run.tasks()] != [t.facts for t in s.tasks]:
        raise UserError(f"--resume: the data's split differs from {run.file('split.json')}")
    info = run.read_json("run.json")
    if info.get("seed") != seed:
        raise UserError(f"--resume: --seed {seed} differs from the run's seed {info.get('seed')}")
    done = run.completed()
    if not done:
        return 0, {p: [] for p in PROTOCOLS}
    folder = run.checkpoint(done[-1])
    load_weights(s.model, folder / "model.safetensors")
    s.method.load_state_dict(read_tensors(folder / "method.safetensors"), s.device)
    state = run.read_json(f"checkpoints/{done[-1]}/state.json")
    return len(done), state["rows"]
