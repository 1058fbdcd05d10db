"""Training each task to a plateau (train.val_fraction, train.patience): the validation images are
carved from the task's training images and never trained on, the task stops once the validation
top-1 stops improving, the epochs each task trained are recorded, and a killed or interrupted run
resumes to the same stop, bit-identical."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_resume import Crash, assert_same_run, config_file, crash_on_call

import factlearn.run
from factlearn.cli import main
from factlearn.config import Config, TrainConfig, from_dict, load_config
from factlearn.data.manifest import load_dataset
from factlearn.errors import UserError
from factlearn.evaluate import evaluate_tasks
from factlearn.training import Session, train
from factlearn.training.schedule import Plateau

# A learning rate so small that the validation top-1 cannot move: every task stops after epoch 2
# of 4 with patience 1 (a best, then one epoch without improvement), whatever the platform.
PLATEAU = {"train.val_fraction": 0.25, "train.patience": 1, "train.lr": 1e-7, "method.name": "mas"}


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory, tiny_config) -> Path:
    return config_file(tmp_path_factory.mktemp("cfg") / "plateau.yaml", tiny_config, epochs=4, batch_size=8,
                       checkpoint_every=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_world, cfg_path) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_world, load_config(cfg_path, PLATEAU), out, device="cpu")
    return out


def test_plateau_stops_after_patience_epochs_without_improvement():
    p = Plateau(patience=2)
    for score, stopped in [(0.5, False), (0.6, False), (0.6, False), (0.55, True)]:
        p.update(score)
        assert p.stopped == stopped
    assert (p.best, p.since_best) == (0.6, 2)
    assert Plateau.from_state(2, json.loads(json.dumps(p.state_dict())), "x") == p
    assert Plateau.from_state(2, None, "x") == Plateau(2)
    with pytest.raises(UserError, match="state.json is malformed"):
        Plateau.from_state(2, {"scores": "high"}, "partial/state.json")


def test_validation_images_are_carved_from_training_images(tiny_world, cfg_path):
    dataset = load_dataset(tiny_world)
    off = Session(dataset, load_config(cfg_path), 0, torch.device("cpu"), False)
    on = Session(dataset, load_config(cfg_path, PLATEAU), 0, torch.device("cpu"), False)
    assert not off.is_val.any()  # the default trains on every training image, as before
    assert not (on.is_val & on.is_test).any()
    for t, task in enumerate(on.tasks):
        val = np.flatnonzero(np.isin(on.fact_ids, task.facts) & on.is_val)
        train_rows, all_rows = on.rows(task, test=False), off.rows(task, test=False)
        assert len(val) == round(0.25 * len(all_rows))
        assert sorted([*val, *train_rows]) == list(all_rows) and not set(val) & set(train_rows)
        assert on.task_data(task).num_samples == len(train_rows)  # importance never sees the validation images
        assert np.array_equal(on.rows(task, test=True), off.rows(task, test=True))
        # validation: the standard evaluation's top-1 on those images
        expected = evaluate_tasks(on.model, dataset.facts, [task], on.images[val], on.fact_ids[val], 1)[task.name]
        assert on.validate(task) == expected["top1"]
    again = Session(dataset, load_config(cfg_path, PLATEAU), 0, torch.device("cpu"), False)
    other = Session(dataset, load_config(cfg_path, PLATEAU), 1, torch.device("cpu"), False)
    assert np.array_equal(again.is_val, on.is_val) and not np.array_equal(other.is_val, on.is_val)


def test_val_fraction_must_leave_training_images(tiny_world, cfg_path):
    with pytest.raises(UserError, match="train.val_fraction"):
        from_dict(TrainConfig, {"val_fraction": 1.0}, "train")
    with pytest.raises(UserError, match="train.patience"):
        from_dict(TrainConfig, {"patience": 0}, "train")
    with pytest.raises(UserError, match="leaves none to train on"):
        Session(load_dataset(tiny_world), load_config(cfg_path, {"train.val_fraction": 0.99}), 0,
                torch.device("cpu"), False)
    assert (Config().train.val_fraction, Config().train.patience) == (0.0, 3)


def test_each_task_stops_at_its_plateau_and_the_epochs_are_recorded(reference, tiny_world, cfg_path, tmp_path):
    info = json.loads((reference / "run.json").read_text())
    assert info["epochs"] == {"B1": 2, "B2": 2}  # of train.epochs 4
    assert {k: len(v) for k, v in info["validation"].items()} == info["epochs"]  # a score per epoch trained
    assert all(0 <= x <= 1 for v in info["validation"].values() for x in v)
    state = json.loads((reference / "checkpoints" / "B2" / "state.json").read_text())
    assert state["epochs"] == {"B1": 2, "B2": 2}
    plain = tmp_path / "plain"
    train(tiny_world, load_config(cfg_path, {"train.epochs": 1}), plain, device="cpu")
    assert json.loads((plain / "run.json").read_text())["epochs"] == {"B1": 1, "B2": 1}


@pytest.mark.parametrize("every, n", [
    (2, 1), (2, 2),  # mid-epoch checkpoints of B1's first and second epoch
    (3, 1), (3, 2),  # with 3 steps an epoch: at the end of an epoch, after its validation (B1, then B2)
])
def test_crash_and_resume_stop_at_the_same_epoch(monkeypatch, tmp_path, tiny_world, cfg_path, reference, every, n):
    cfg = load_config(cfg_path, {**PLATEAU, "train.checkpoint_every": every})
    crash_on_call(monkeypatch, factlearn.run.RunDir, "save_partial", n, after=True)
    with pytest.raises(Crash):
        train(tiny_world, cfg, tmp_path / "run", device="cpu")
    saved = next((tmp_path / "run" / "partial").glob("*/state.json"))
    assert "plateau" in json.loads(saved.read_text())
    monkeypatch.undo()
    train(tiny_world, load_config(cfg_path, PLATEAU), tmp_path / "run", device="cpu", resume=True)
    assert_same_run(reference, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epochs"] == {"B1": 2, "B2": 2}


def test_ctrl_c_during_the_last_validation_resumes_to_the_same_stop(monkeypatch, tmp_path, tiny_world, tiny_config,
                                                                     cfg_path, reference):
    """Ctrl-C while B1's second epoch is validated: the checkpoint holds the plateau that ends B1,
    so the resumed run trains no further epoch of B1."""
    original, calls = Session.validate, iter(range(1, 100))

    def validate_then_sigint(self, task):
        if next(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return original(self, task)

    monkeypatch.setattr(Session, "validate", validate_then_sigint)
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_world), "--config", str(cfg_path), "--method", "mas", "--out", str(out),
            "--device", "cpu"]
    plateau = {key.split(".")[1]: v for key, v in PLATEAU.items() if key.startswith("train.")}
    args[args.index(str(cfg_path))] = str(config_file(tmp_path / "plateau.yaml", tiny_config, epochs=4, batch_size=8,
                                                      checkpoint_every=2, **plateau))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130 and "stopped in task B1" in r.output, r.output
    [folder] = (out / "partial").iterdir()
    state = json.loads((folder / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (2, 0) and state["plateau"]["since_best"] == 1
    monkeypatch.undo()
    r = CliRunner().invoke(main, args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert_same_run(reference, out)
