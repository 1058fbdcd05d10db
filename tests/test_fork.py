"""``train --start-from``: a run that takes its first task from a finetune run's checkpoint ends
bit-identical to the same run trained from the start, for every method that allows it; anything
that would break that is refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from factlearn.cli import main
from factlearn.config import load_config
from factlearn.errors import UserError
from factlearn.training import train

# The methods (and MAS variants) that may start from a finetune run; the plateau variant checks
# that the validation curve and the epochs of the first task are taken over too.
CHILDREN = {
    "l2": {"method.name": "l2"},
    "mas": {"method.name": "mas"},
    "ewc": {"method.name": "ewc"},
    "lwf": {"method.name": "lwf"},
    "lmas": {"method.name": "lmas"},
    "joint": {"method.name": "joint"},
    "mas-noise": {"method.name": "mas", "method.importance_control": "noise"},
    "mas-decoupled-lam3": {"method.name": "mas", "method.penalty": "decoupled", "method.lam": 3.0},
}
PLATEAU = {"train.val_fraction": 0.25, "train.patience": 1, "train.epochs": 3}


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_world, tiny_config) -> dict[str, Path]:
    """A finetune run per training setting (plain, plateau), 2 tasks."""
    root = tmp_path_factory.mktemp("parents")
    out = {}
    for name, keys in (("plain", {}), ("plateau", PLATEAU)):
        train(tiny_world, load_config(tiny_config, {"method.name": "finetune", **keys}), root / name, seed=1,
              device="cpu")
        out[name] = root / name
    return out


def assert_same_run(expected: Path, got: Path) -> None:
    for task in ("B1", "B2"):
        for name in ("model.safetensors", "method.safetensors"):
            a = load_file(str(expected / "checkpoints" / task / name))
            b = load_file(str(got / "checkpoints" / task / name))
            assert a.keys() == b.keys(), f"{task}/{name}"
            for key in a:
                assert torch.equal(a[key], b[key]), f"{task}/{name}: {key} differs"
    assert json.loads((got / "metrics.json").read_text()) == json.loads((expected / "metrics.json").read_text())
    a, b = (json.loads((d / "run.json").read_text()) for d in (expected, got))
    assert (b["completed"], b["epochs"], b["validation"]) == (a["completed"], a["epochs"], a["validation"])


@pytest.mark.parametrize("setting", ["plain", "plateau"])
@pytest.mark.parametrize("child", sorted(CHILDREN))
def test_fork_equals_training_the_first_task(tmp_path, tiny_world, tiny_config, parents, child, setting):
    if setting == "plateau" and child not in ("mas", "l2"):
        pytest.skip("the plateau setting is checked with two methods")
    keys = {**CHILDREN[child], **(PLATEAU if setting == "plateau" else {})}
    cfg = load_config(tiny_config, keys)
    train(tiny_world, cfg, tmp_path / "full", seed=1, device="cpu")
    train(tiny_world, cfg, tmp_path / "fork", seed=1, device="cpu", start_from=parents[setting])
    assert_same_run(tmp_path / "full", tmp_path / "fork")
    info = json.loads((tmp_path / "fork" / "run.json").read_text())
    assert info["started_from"] == str(parents[setting].resolve())


def test_fork_resumed_keeps_its_parent(tmp_path, tiny_world, tiny_config, parents):
    """A forked run stopped after its first task continues with --resume (the parent is ignored
    then) and still names its parent."""
    cfg = load_config(tiny_config, {"method.name": "mas"})
    train(tiny_world, cfg, tmp_path / "full", seed=1, device="cpu")
    train(tiny_world, cfg, tmp_path / "fork", seed=1, device="cpu", start_from=parents["plain"])
    for name in ("metrics.json",):
        (tmp_path / "fork" / name).unlink()
    import shutil

    shutil.rmtree(tmp_path / "fork" / "checkpoints" / "B2")
    train(tiny_world, cfg, tmp_path / "fork", seed=1, device="cpu", resume=True, start_from=parents["plain"])
    assert_same_run(tmp_path / "full", tmp_path / "fork")
    assert json.loads((tmp_path / "fork" / "run.json").read_text())["started_from"] == str(parents["plain"].resolve())


@pytest.mark.parametrize("keys, seed, message", [
    ({"method.name": "si"}, 1, "trains its first task differently"),
    ({"method.name": "mas", "train.lr": 0.01}, 1, "config train.lr is 0.003 there but 0.01 here"),
    ({"method.name": "mas"}, 2, "its seed is 1, here --seed 2"),
    ({"method.name": "mas", "split.tasks": 3}, 1, "config split.tasks is 2 there but 3 here"),
])
def test_fork_refused(tmp_path, tiny_world, tiny_config, parents, keys, seed, message):
    with pytest.raises(UserError, match=message):
        train(tiny_world, load_config(tiny_config, keys), tmp_path / "run", seed=seed, device="cpu",
              start_from=parents["plain"])
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_fork_parent_must_be_finetune_or_joint(tmp_path, tiny_world, tiny_config):
    cfg = load_config(tiny_config, {"method.name": "mas"})
    train(tiny_world, cfg, tmp_path / "mas", seed=1, device="cpu")
    with pytest.raises(UserError, match="the parent must be a run of finetune or joint"):
        train(tiny_world, load_config(tiny_config, {"method.name": "l2"}), tmp_path / "run", seed=1, device="cpu",
              start_from=tmp_path / "mas")


def test_fork_parent_without_first_checkpoint(tmp_path, tiny_world, tiny_config, parents):
    import shutil

    parent = tmp_path / "parent"
    shutil.copytree(parents["plain"], parent)
    shutil.rmtree(parent / "checkpoints" / "B1")
    with pytest.raises(UserError, match="no complete checkpoint after B1"):
        train(tiny_world, load_config(tiny_config, {"method.name": "mas"}), tmp_path / "run", seed=1, device="cpu",
              start_from=parent)


def test_fork_cli_one_line(tmp_path, tiny_world, tiny_config, parents):
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_world), "--config", str(tiny_config),
                                       "--method", "si", "--seed", "1", "--out", str(tmp_path / "run"),
                                       "--start-from", str(parents["plain"])])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "--start-from" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_world), "--config", str(tiny_config),
                                       "--method", "mas", "--seed", "1", "--out", str(tmp_path / "run"),
                                       "--start-from", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "run directory not found" in result.output
