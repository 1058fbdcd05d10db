"""Importance from unlabeled images: the MAS family needs no labels (MAS paper, Sec. 5).

MAS and l-MAS measure how much each parameter changes the model's OUTPUT, not its loss, so the
image tower's importance can come from any images, e.g. from the conditions the model will be
tested in. The language tower needs facts, which unlabeled images do not have: its importance
keeps coming from the task's own facts (``method.importance_data``, ``factlearn importance``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..config import MethodConfig
from ..data.images import expand_images, open_images, to_model_input
from ..data.manifest import MANIFEST_NAMES, load_dataset
from ..distributed import SINGLE, Context
from ..errors import UserError
from .base import QuadraticPenalty, TaskData

logger = logging.getLogger(__name__)

IMAGE_TOWER, LANGUAGE_TOWER = "image_tower", "language_tower"
TOWERS = (IMAGE_TOWER, LANGUAGE_TOWER)


def image_paths(source: str | Path) -> list[Path]:
    """The images of a data directory or manifest file (facts ignored), or of a folder of images."""
    return image_source(source)[0]


def image_source(source: str | Path) -> tuple[list[Path], Path | None]:
    """:func:`image_paths`, and the data directory when ``source`` is a data set (its decoded images
    are kept in its store, as the data set's own are: factlearn.data.images.open_images), else None."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"importance data not found: {path}")
    is_manifest = path.name in MANIFEST_NAMES if path.is_file() else any((path / n).is_file() for n in MANIFEST_NAMES)
    if is_manifest:
        return [r.image for r in load_dataset(path).records], path.parent if path.is_file() else path
    return expand_images([str(path)]), None


def unlabeled_task(
    paths: list[Path], image_size: int, device: torch.device | str, cap: int | None = None, seed: int = 0,
    name: str = "unlabeled", shard: Context = SINGLE, data_dir: str | Path | None = None,
) -> TaskData:
    """``paths`` (at most ``cap``, a seeded subset; under torch.distributed this rank's ``shard`` of
    them) as a TaskData without facts, read batch by batch.

    The images are decoded once into the store of all of ``paths`` (``data_dir``'s, or the
    ``FACTLEARN_IMAGE_CACHE`` folder) and read from it a batch at a time, so memory does not grow
    with their number; with no store folder, the chosen ones are decoded into memory.

    Its batches carry empty facts (tokens (B, 3, 1) of padding, slot mask (B, 3) of zeros): the
    language tower's output on them is zero, so only the image tower's importance is meaningful.
    """
    rows = np.arange(len(paths))
    if cap is not None and len(paths) > cap:
        rows = np.sort(np.random.default_rng([seed, 7]).choice(len(paths), cap, replace=False))
    rows = np.asarray(shard.take(rows), dtype=np.int64)
    images = open_images(paths, image_size, data_dir=data_dir, rows=rows)  # (N, 3, S, S) uint8, read per batch
    logger.info("importance data: %d unlabeled images", len(images))

    def batches(batch_size: int):
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start : start + batch_size].to(device))
            b = x.shape[0]
            yield x, torch.zeros((b, 3, 1), dtype=torch.long, device=device), torch.zeros((b, 3), device=device)

    return TaskData(name, len(images), batches, shard=shard)


def noise_images(task: TaskData, seed: int | Sequence[int] = 0) -> TaskData:
    """``task`` with every image replaced by uniform random pixels of the same shape (the control
    ``method.importance_control: noise``): what importance measures when the images carry nothing.

    Each sample's noise is uint8 pixels drawn uniformly from 0..255 by numpy's generator seeded
    ``[*seed, position]`` (the sample's position in the task, as the random directions of
    :func:`~factlearn.continual.mas.random_directions`), so it does not depend on the batch size or
    the number of ranks; it goes through :func:`~factlearn.data.images.to_model_input` like a
    decoded image. The facts (tokens, slot mask) stay, so the language tower sees what it saw. The
    labels are dropped: noise has none.
    """
    seed = [seed] if isinstance(seed, int) else list(seed)

    def batches(batch_size: int):
        seen, shard = 0, task.shard
        for pixels, tokens, mask in task.batches(batch_size):
            b, shape = pixels.shape[0], tuple(pixels.shape[1:])  # (3, H, W)
            positions = [shard.rank + (seen + i) * shard.world for i in range(b)]
            noise = np.stack([np.random.default_rng([*seed, p]).integers(0, 256, shape, dtype=np.uint8)
                              for p in positions])  # (b, 3, H, W)
            seen += b
            yield to_model_input(torch.from_numpy(noise).to(pixels.device)), tokens, mask

    return dataclasses.replace(task, name=f"{task.name} (noise images)", batches=batches, labeled=None, facts=None,
                               loss=None)


class DataImportance(QuadraticPenalty):
    """A quadratic penalty whose importance needs no labels, computed tower by tower (MAS, l-MAS).

    With ``method.importance_data`` the image tower's importance comes from those images and the
    language tower's from the task's facts; without it both come from the task's training samples.

    Options, besides the quadratic penalty's: ``importance_batch_size`` (samples per pass),
    ``max_importance_samples`` (a seeded subset of the samples, also of ``importance_data``),
    ``importance_data`` (the unlabeled images; MAS paper, Sec. 5), ``importance_images`` and
    ``importance_facts`` (held-out images, a subset of the facts: the training session picks the
    task data these methods see; MAS paper, Sec. 5, Table 4).
    """

    options = QuadraticPenalty.options + ("importance_batch_size", "max_importance_samples", "importance_data",
                                          "importance_images", "importance_facts")

    def __init__(self, cfg: MethodConfig):
        super().__init__(cfg)
        self._paths: list[Path] | None = None
        self._data_dir: Path | None = None
        self._unlabeled: TaskData | None = None

    def tower_importance(self, model: nn.Module, data: TaskData, towers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Importance of the parameters of ``towers`` (names ``<tower>.<...>``) over ``data``."""
        raise NotImplementedError

    def before_task(self, model: nn.Module, task: TaskData) -> None:
        """Decode ``importance_data`` now, so that a bad path or image fails before training."""
        if self.cfg.importance_data is not None:
            self.unlabeled(model, task.shard)
        super().before_task(model, task)

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        """Both towers' importance from ``task``, or the image tower's from ``importance_data``."""
        if self.cfg.importance_data is None:
            return self.tower_importance(model, task, TOWERS)
        return {
            **self.tower_importance(model, task, (LANGUAGE_TOWER,)),
            **self.tower_importance(model, self.unlabeled(model, task.shard), (IMAGE_TOWER,)),
        }

    def unlabeled(self, model: nn.Module, shard: Context = SINGLE) -> TaskData:
        """The ``importance_data`` images (this rank's ``shard`` of them), decoded once and reused
        after every task."""
        if self._unlabeled is None:
            if self._paths is None:
                self._paths, self._data_dir = image_source(self.cfg.importance_data)
            self._unlabeled = unlabeled_task(self._paths, model.cfg.image_size, model.device,
                                             self.cfg.max_importance_samples, shard=shard, data_dir=self._data_dir)
        return self._unlabeled
