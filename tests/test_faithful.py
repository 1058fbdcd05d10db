"""The faithful protocol end to end at test size (configs/faithful-tiny.yaml): pretrain the image
tower on a base world, then learn a continual world's tasks with MAS as the reference does (fixed
fact vectors, the raw Sherlock distance, no contrastive term, SGD, each task to a plateau)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from click.testing import CliRunner
from test_pretrain import disjoint_worlds

from factlearn.cli import main

FAITHFUL = Path(__file__).resolve().parents[1] / "configs" / "faithful-tiny.yaml"


def test_pretrain_then_train_mas_the_reference_way(tiny_world, tmp_path):
    base, continual = disjoint_worlds(tiny_world, tmp_path)
    tower = tmp_path / "tower"
    r = CliRunner().invoke(main, ["pretrain", "--data", str(base), "--config", str(FAITHFUL), "--out", str(tower),
                                  "--epochs", "2", "--device", "cpu"])
    assert r.exit_code == 0 and (tower / "pretrain.json").is_file(), r.output
    data = yaml.safe_load(FAITHFUL.read_text())
    assert (data["loss"], data["model"]["freeze_language"], data["train"]["optimizer"]) == (
        {"distance": "raw", "contrastive_weight": 0.0}, True, "sgd")
    data["model"]["pretrained"] = str(tower)
    cfg = tmp_path / "faithful.yaml"
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(continual), "--config", str(cfg), "--method", "mas",
                                  "--out", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    values = [v for task in metrics["final"].values() for k, v in task.items() if isinstance(v, float)]
    assert values and all(math.isfinite(v) for v in values)
    epochs = json.loads((run / "run.json").read_text())["epochs"]
    assert set(epochs) == {"B1", "B2"} and all(1 <= n <= data["train"]["epochs"] for n in epochs.values())


def test_raw_distance_that_would_collapse_is_refused_before_anything_is_written(tiny_world, tmp_path):
    data = yaml.safe_load(FAITHFUL.read_text())
    data["model"]["freeze_language"] = False  # a trainable language tower and no contrastive term
    cfg = tmp_path / "collapse.yaml"
    cfg.write_text(yaml.safe_dump(data))
    for command in (["train", "--method", "mas"], ["pretrain"]):
        r = CliRunner().invoke(main, command + ["--data", str(tiny_world), "--config", str(cfg),
                                                "--out", str(tmp_path / "out"), "--device", "cpu"])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "loss.distance: raw with loss.contrastive_weight: 0" in r.output and "model.freeze_language" in r.output
        assert not (tmp_path / "out").exists()
