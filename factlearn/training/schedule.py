"""The schedule within a task: how many steps it takes, the learning rate of each, and when a
task trained to a plateau stops."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UserError


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate of step ``step`` (0-based) of a task's ``total``: a pure function of the
    position, so a resumed run takes exactly the same steps. Cosine decay ends each task at a
    settled point instead of wherever the last constant-rate step left it."""
    if schedule == "constant" or total <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * step / (total - 1)))


def task_steps(n_images: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of a task: ``epochs`` passes over ``n_images`` training images in batches
    of ``batch_size``, the last batch of each pass possibly smaller (none dropped)."""
    return epochs * math.ceil(n_images / batch_size)


@dataclass
class Plateau:
    """Early stopping of a task on its validation top-1 (``train.val_fraction``, ``train.patience``).

    After each epoch :meth:`update` takes the score; the task stops once ``patience`` epochs in a
    row have not beaten the best (strictly). The weights kept are the last epoch's, not the best
    one's: the reference trains each task to convergence and keeps where it ended. Its state goes
    into mid-task checkpoints (:meth:`state_dict`), so a resumed task stops at the same epoch.
    """

    patience: int
    scores: list[float] = field(default_factory=list)  # validation top-1 after each epoch so far

    @property
    def best(self) -> float | None:
        """The best score so far (None before the first epoch)."""
        return max(self.scores) if self.scores else None

    @property
    def since_best(self) -> int:
        """Epochs since the first epoch that reached the best score."""
        return len(self.scores) - 1 - self.scores.index(max(self.scores)) if self.scores else 0

    @property
    def stopped(self) -> bool:
        """Whether the task has stopped improving: train no further epoch."""
        return self.since_best >= self.patience

    def update(self, score: float) -> None:
        """Record the validation score of the epoch just trained."""
        self.scores.append(float(score))

    def state_dict(self) -> dict:
        """What a mid-task checkpoint's state.json keeps (best and since_best are derived, for readers)."""
        return {"scores": list(self.scores), "best": self.best, "since_best": self.since_best}

    @classmethod
    def from_state(cls, patience: int, state: object, where: object) -> Plateau:
        """The plateau a checkpoint saved (``state``: :meth:`state_dict`'s dict, or None: a fresh one)."""
        if state is None:
            return cls(patience)
        scores = state.get("scores") if isinstance(state, dict) else None
        if not isinstance(scores, list) or not all(isinstance(v, (int, float)) for v in scores):
            raise UserError(f"{where} is malformed: no plateau scores")
        return cls(patience, [float(v) for v in scores])
