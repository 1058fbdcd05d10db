"""The schedule within a task: how many steps it takes and the learning rate of each."""

from __future__ import annotations

import math


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
