"""The training session: everything a run holds in memory, and the data each stage trains on.

A :class:`Session` decodes the data once (into the data set's memory-mapped image store, shared by
every rank and run: :func:`factlearn.data.images.open_images`), cuts the task sequence and the test
images, builds the model and the method, and hands out per-task views of the data: the rows of a task, the labels
with the wildcard rule, the :class:`factlearn.continual.TaskData` methods compute their state
from, and the optimizer. The loop that trains a task is :mod:`factlearn.training.task`.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..config import Config
from ..continual import Method, TaskData, create_method
from ..continual.unlabeled import image_paths
from ..data.images import open_images, to_model_input
from ..data.manifest import Dataset
from ..data.splits import Task, image_splits, load_tasks_file, make_split
from ..distributed import SINGLE, Context
from ..errors import UserError
from ..evaluate import evaluate_tasks, sample_per_task
from ..facts import FactTable
from ..losses import check_loss, fact_loss
from ..model import FactModel, Vocabulary, create_model
from ..progress import progress_bar
from .provenance import check_pretraining


class Session:
    """Everything a run holds: data (decoded once), split, model, method.

    ``images`` is an :class:`~factlearn.data.store.ImageStore`: ``images[rows]`` is a uint8 batch
    (b, 3, S, S), read from the store file every process maps (or from memory without a store);
    nothing here needs all the images resident at once.

    ``dist``: this process's rank among those training together (every rank holds all of it but
    the images, which the ranks share through the store).
    """

    def __init__(self, dataset: Dataset, cfg: Config, seed: int, device: torch.device, progress: bool,
                 dist: Context = SINGLE):
        self.dataset, self.cfg, self.seed, self.device, self.progress = dataset, cfg, seed, device, progress
        self.dist = dist
        check_loss(cfg.loss, cfg.model)
        task_file = load_tasks_file(cfg.split.tasks_file, dataset) if cfg.split.tasks_file is not None else None
        if task_file is not None:
            self.tasks = task_file.tasks
        else:
            self.tasks = make_split(dataset, cfg.split.kind, cfg.split.tasks, cfg.split.seed)
        self.is_test = image_splits(dataset, cfg.split.test_fraction, cfg.split.seed)
        self.fact_ids = np.array(dataset.fact_ids())
        # (N,) bool: the task file's held-out images, which training never sees (unlabeled data for
        # importance); then the validation images carved from what is left (train.val_fraction).
        self.is_held_out = np.zeros(len(self.fact_ids), dtype=bool)
        self.subsets: dict[str, list[int]] = {}  # importance subsets: adaptation subsets, monitored groups
        if task_file is not None:
            self.is_held_out[task_file.held_out] = True
            self.is_held_out &= ~self.is_test  # a test image is never trained on anyway
            self.subsets = {**task_file.monitored, **task_file.adaptation_facts}
        self._check_importance_source(cfg.method.importance_images, cfg.method.importance_facts)
        if cfg.method.importance_data is not None:  # a missing source is told before any image is decoded
            image_paths(cfg.method.importance_data)
        self.validation: dict[str, list[float]] = {}  # task -> validation top-1 after each epoch (plateau)
        self.is_val = self._carve_validation(cfg.train.val_fraction)
        if cfg.model.pretrained:  # a backbone pretrained on these facts would flatter every method
            check_pretraining(cfg.model.pretrained, [dataset.facts[f] for task in self.tasks for f in task.facts])
        for task in self.tasks:  # before anything is decoded or trained: a run never fails half-way for this
            for test, what in ((False, "training"), (True, "test")):
                if len(self.rows(task, test)) == 0:
                    raise UserError(
                        f"task {task.name} has no {what} images after the split ({len(task.facts)} facts; "
                        "see the manifest's split column and split.test_fraction)"
                    )
        self.vocab = Vocabulary.from_facts(dataset.facts.facts)  # the words of factlearn.model.vocab's rule
        self.tokens, self.slot_mask = self.vocab.encode(dataset.facts.facts)  # (F, 3, L), (F, 3)
        with progress_bar(len(dataset.records), "decode images", "img", disable=not progress, leave=False) as bar:
            self.images = open_images([r.image for r in dataset.records], cfg.model.image_size, progress=bar.update,
                                      data_dir=dataset.root)
        torch.manual_seed(seed)
        self.model: FactModel = create_model(cfg.model, self.vocab).to(device)
        self.method: Method = create_method(cfg.method)

    def _carve_validation(self, fraction: float) -> np.ndarray:
        """``train.val_fraction`` of each task's training images, drawn by (seed, task), as a mask."""
        is_val = np.zeros(len(self.fact_ids), dtype=bool)
        if not fraction:
            return is_val
        for t, task in enumerate(self.tasks):
            train = np.flatnonzero(np.isin(self.fact_ids, task.facts) & ~self.is_test & ~self.is_held_out)
            n = max(1, round(fraction * len(train)))
            if n >= len(train):
                raise UserError(f"config train.val_fraction: {fraction} of task {task.name}'s {len(train)} training "
                                "images leaves none to train on")
            is_val[np.random.default_rng([self.seed, 11, t]).choice(train, n, replace=False)] = True
        return is_val

    def rows(self, task: Task, test: bool) -> np.ndarray:
        """Positions (in the data set) of ``task``'s test or training images (the training images
        without the task file's held-out ones and those carved for validation: ``train.val_fraction``)."""
        return np.flatnonzero(np.isin(self.fact_ids, task.facts) & (self.is_test == test) & ~self.is_val
                              & ~self.is_held_out)

    def _check_importance_source(self, images: str, facts: str) -> None:
        """``method.importance_images`` / ``importance_facts`` must name what the task file has."""
        if facts != "all" and facts not in self.subsets:
            known = ", ".join(sorted(self.subsets)) or "none: give split.tasks_file (factlearn split --adaptation)"
            raise UserError(f"config method.importance_facts: {facts!r} is not a subset of the task file "
                            f"(adaptation subsets and monitored groups: {known})")
        if images == "held_out" and not self.is_held_out.any():
            raise UserError("config method.importance_images: held_out, but the task file holds out no image "
                            "(write it with factlearn split --adaptation)")

    def importance_data(self, t: int) -> TaskData:
        """What the method computes its state from after task t: the task's training images
        (default), or with ``method.importance_images: held_out`` the held-out ones, and with
        ``method.importance_facts: SUBSET`` only the images of the subset's facts learned so far
        (tasks 1..t): the importance then protects that subset (MAS paper, Sec. 5, Table 4 and the
        sports facts of Fig. 4). The language tower sees the same images' facts."""
        cfg, task = self.cfg.method, self.tasks[t]
        if cfg.importance_images == "train" and cfg.importance_facts == "all":
            return self.task_data(task)
        facts = task.facts
        if cfg.importance_facts != "all":
            learned = {f for done in self.tasks[: t + 1] for f in done.facts}
            facts = sorted(learned & set(self.subsets[cfg.importance_facts]))
        held = cfg.importance_images == "held_out"
        pool = self.is_held_out if held else ~self.is_test & ~self.is_val & ~self.is_held_out
        rows = np.flatnonzero(np.isin(self.fact_ids, facts) & pool)
        name = f"{task.name} ({cfg.importance_facts} facts, {cfg.importance_images} images)"
        return self.task_data(Task(name, facts), rows, may_be_empty=cfg.importance_facts != "all")

    def validate(self, task: Task) -> float:
        """Top-1 of the model in memory on ``task``'s validation images, among its facts (standard
        protocol), through the evaluation pipeline. Rank 0 evaluates and every rank gets its score."""
        score = 0.0
        if self.dist.is_main:
            rows = np.flatnonzero(np.isin(self.fact_ids, task.facts) & self.is_val)
            score = evaluate_tasks(self.model, self.dataset.facts, [task], self.images.take(rows), self.fact_ids[rows],
                                   1, "standard", self.cfg.eval.batch_size)[task.name]["top1"]
        return self.dist.all_sum([score])[0]

    def labels(self, facts: list[int], rows: np.ndarray) -> tuple[torch.Tensor, Wildcards]:
        """targets (N,): each row's fact as an index into ``facts``; the wildcard rule among ``facts``
        (:class:`Wildcards`): ``exclude[targets]`` is the (B, F_t) bool exclusion of a batch, computed
        for that batch only."""
        local = {f: i for i, f in enumerate(facts)}
        targets = torch.tensor([local[f] for f in self.fact_ids[rows]], dtype=torch.long)
        return targets, Wildcards(self.dataset.facts, facts)

    def stage(self, t: int) -> Task:
        """What training step t learns: task t, or for joint training the union of tasks 1..t."""
        if not self.method.rehearses_all:
            return self.tasks[t]
        return Task(self.tasks[t].name, sorted(f for task in self.tasks[: t + 1] for f in task.facts))

    def task_data(self, task: Task, rows: np.ndarray | None = None, may_be_empty: bool = False) -> TaskData:
        """``task``'s training images (or ``rows``, images of its facts) and facts as a method sees
        them (importance, distillation), at most ``method.max_importance_samples`` (a seeded
        subset), this rank's shard of them."""
        rows = self.rows(task, test=False) if rows is None else rows
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

        return TaskData(task.name, len(rows), batches, labeled, (fact_tokens, fact_mask), loss, shard=self.dist,
                        may_be_empty=may_be_empty)

    def optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer over the trainable parameters (each task starts with a fresh one)."""
        cfg = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def evaluate(self, trained: int, protocols: Sequence[str]) -> dict[str, dict[str, dict]]:
        """protocol -> every task's metrics (:func:`factlearn.evaluate.evaluate_view`), exact flat
        index; the test images (``eval.max_images_per_task`` of each task at most) are embedded once
        for all protocols."""
        rows = np.flatnonzero(self.is_test)
        rows = rows[sample_per_task(self.fact_ids[rows], self.tasks, self.cfg.eval.max_images_per_task,
                                    self.cfg.split.seed)]
        return evaluate_tasks(
            self.model, self.dataset.facts, self.tasks, self.images.take(rows), self.fact_ids[rows], trained,
            list(protocols), self.cfg.eval.batch_size,
        )


class Wildcards:
    """The wildcard rule among a stage's facts, per batch: ``exclude(targets, candidates)`` (B, C) bool
    marks the candidates also true of each target's images under :func:`factlearn.facts.matches`,
    either way (neither positives nor negatives), never the target itself.

    matches(a, b) holds when b agrees with a on a's own slots: same S for an <S> a, same (S, P) for
    <S,P>, the same fact for <S,P,O>. Each fact gets an integer code for each key (S), (S, P) and
    (S, P, O) (a missing slot counts as a value of its own), so a batch's exclusion is a few gathers
    and comparisons of (B, C) integers: no F x F matrix is ever built. ``exclude[targets]`` is the
    rows of all the stage's facts, the values of the old F x F matrix's rows.
    """

    def __init__(self, table: FactTable, facts: Sequence[int]):
        codes: list[dict[tuple, int]] = [{}, {}, {}]
        keys, order = [], []
        for f in facts:
            fact = table[f]
            keys.append([codes[n].setdefault(fact.slots[: n + 1], len(codes[n])) for n in range(3)])
            order.append(fact.order - 1)
        self.ids = torch.as_tensor(np.asarray(facts, dtype=np.int64)).reshape(-1)  # (F_t,) fact ids
        self.keys = torch.tensor(keys, dtype=torch.long).reshape(-1, 3)  # (F_t, 3): codes of S, (S,P), (S,P,O)
        self.order = torch.tensor(order, dtype=torch.long)  # (F_t,): 0 for <S>, 1 for <S,P>, 2 for <S,P,O>

    def __len__(self) -> int:
        return len(self.ids)

    def exclude(self, targets: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) bool for ``targets`` (B,) and ``candidates`` (C,), both indices into the stage's
        facts (all of them when ``candidates`` is None)."""
        targets = torch.as_tensor(targets, dtype=torch.long).cpu()
        cand = torch.arange(len(self)) if candidates is None else torch.as_tensor(candidates, dtype=torch.long).cpu()
        kt, kc = self.keys[targets], self.keys[cand]  # (B, 3), (C, 3)
        ot, oc = self.order[targets], self.order[cand]  # (B,), (C,)
        # target a's images match candidate b: b agrees with a on a's key, and the other way round
        a_of_b = kc.T[ot] == kt.gather(1, ot[:, None])  # (B, C)
        b_of_a = kt[:, oc] == kc.gather(1, oc[:, None]).T  # (B, C)
        return (a_of_b | b_of_a) & (self.ids[targets][:, None] != self.ids[cand][None, :])

    def __getitem__(self, targets: torch.Tensor) -> torch.Tensor:
        """The rows of ``targets`` over all the stage's facts: (B, F_t) bool ((F_t,) for one index)."""
        t = torch.as_tensor(targets, dtype=torch.long)
        rows = self.exclude(t.reshape(-1))
        return rows[0] if t.dim() == 0 else rows
