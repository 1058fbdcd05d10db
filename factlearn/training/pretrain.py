"""Pretraining the image tower on a base world: ``factlearn pretrain``.

The reference starts every continual run from an ImageNet-trained VGG16; factlearn's stand-in is a
backbone trained on a BASE world of facts the continual world does not hold (``factlearn synth
--preset base --exclude CONTINUAL``). The whole FactModel learns the base world's facts as one
task, with the configured loss and optimizer, through the training loop's own pieces
(:class:`Session`, :func:`train_task`: the step, the schedule, the plateau); then the backbone is
saved.

The output folder holds the BACKBONE only, written with transformers' ``save_pretrained``
(config.json + model.safetensors), plus the record ``pretrain.json``
(:mod:`factlearn.training.provenance`). Backbone only, because:

- ``model.pretrained: DIR`` already loads such a folder (any transformers backbone of the family
  does), so a pretrained tower and a third-party one go through one loader;
- the S and P,O branches end in the slot space of the pretraining run's language side (its word
  vectors, its vocabulary, its slot_dim), which the continual run does not share; the reference
  also transfers only the trunk and trains new branch layers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from ..config import Config, MethodConfig
from ..data.manifest import load_dataset
from ..device import resolve_device
from ..errors import UserError
from ..io import atomic_dir
from ..model import resolve_pretrained
from .provenance import RECORD, write_record
from .session import Session
from .task import train_task

logger = logging.getLogger(__name__)


def pretrain(data_dir: str | Path, cfg: Config, out_dir: str | Path, seed: int = 0, device: str = "auto",
             progress: bool = False, overwrite: bool = False) -> dict:
    """Train a FactModel on ``data_dir``'s facts as one task and write its backbone to ``out_dir``.

    Args:
        cfg: the model, loss and train sections are used as they are (``train.epochs`` is the
            number of epochs, ``train.val_fraction`` trains to a plateau), except that every
            backbone stage trains (``model.freeze_stages`` is for the continual run) and the
            method is plain finetuning. The split section gives the test images the record's
            top-1 is measured on.
        out_dir: must not exist or be empty; with ``overwrite`` an earlier pretraining output is
            replaced (another non-empty folder is always refused). Written next to itself and
            renamed at the end: a failed or interrupted pretraining leaves nothing behind.
    Returns:
        The record written to ``out_dir/pretrain.json``.
    """
    out = Path(out_dir)
    _check_out(out, overwrite)
    model_cfg = dataclasses.replace(resolve_pretrained(cfg.model), freeze_stages=0)
    cfg = dataclasses.replace(
        cfg, model=model_cfg, split=dataclasses.replace(cfg.split, kind="random", tasks=1, tasks_file=None),
        method=MethodConfig(),  # plain finetuning: the method section is for the continual run
        train=dataclasses.replace(cfg.train, checkpoint_every=0),
    )
    dev = resolve_device(device)
    dataset = load_dataset(data_dir)
    start = time.perf_counter()
    s = Session(dataset, cfg, seed, dev, progress)
    epochs = train_task(s, 0)
    seconds = time.perf_counter() - start
    base = s.evaluate(1, ["standard"])["standard"][s.tasks[0].name]
    fields = {"epochs": cfg.train.epochs, "epochs_trained": epochs, "seed": seed, "device": str(dev),
              "seconds": round(seconds, 1), "test_top1": base["top1"], "test_top5": base["top5"],
              "config": {k: cfg.to_dict()[k] for k in ("model", "loss", "train")}}
    target = out if not out.exists() or not any(out.iterdir()) else out.parent / f".{out.name}.new-{os.getpid()}"
    with atomic_dir(target) as tmp:
        _save_backbone(s.model.image_tower.backbone, tmp)
        record = write_record(tmp, data_dir, dataset.facts, **fields)
    if target != out:  # --overwrite: swap the new folder in, then remove the old one
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        target.rename(out)
        shutil.rmtree(old)
    logger.info("pretrained %s on %s in %.1f s (%d epochs): test top-1 %.3f", out, data_dir, seconds, epochs,
                base["top1"])
    return record


def _save_backbone(backbone, folder: Path) -> None:
    """config.json + model.safetensors, as ``model.pretrained`` loads them (without transformers'
    own progress bar: the command shows one already)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        backbone.save_pretrained(folder)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output that is not a directory, or a non-empty one (without ``overwrite``, or one
    that is not an earlier pretraining output)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--out {out} exists and is not empty (use --overwrite to replace a pretrained tower)")
    if not (out / RECORD).is_file():
        raise UserError(f"--out {out} is not a pretrained tower (no {RECORD}); it is not overwritten")
