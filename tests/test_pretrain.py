"""`factlearn pretrain`: the backbone it writes loads through model.pretrained with the same
weights, its output folder is written atomically and never over something else, a continual run
on the base world's facts is refused, and a run trained from it loads without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import factlearn.training.pretrain
from factlearn.cli import main
from factlearn.config import load_config
from factlearn.errors import UserError
from factlearn.model import Vocabulary, create_model
from factlearn.run import RunDir
from factlearn.training import train
from factlearn.training.pretrain import pretrain


def disjoint_worlds(world: Path, root: Path) -> tuple[Path, Path]:
    """Two data directories cut from ``world`` by fact (every other fact of its manifest): a base
    world to pretrain on and a continual world that shares none of its facts."""
    lines = (world / "manifest.jsonl").read_text().splitlines()
    facts = sorted({tuple(json.loads(line)[k] for k in ("subject", "predicate", "object")) for line in lines})
    out = []
    for part in (0, 1):
        mine = set(facts[part::2])
        folder = root / ("base", "continual")[part]
        shutil.copytree(world / "images", folder / "images")
        keep = [line for line in lines if tuple(json.loads(line)[k] for k in ("subject", "predicate", "object")) in mine]
        (folder / "manifest.jsonl").write_text("\n".join(keep) + "\n")
        out.append(folder)
    return out[0], out[1]


@pytest.fixture(scope="module")
def worlds(tiny_world, tmp_path_factory) -> tuple[Path, Path]:
    return disjoint_worlds(tiny_world, tmp_path_factory.mktemp("worlds"))


@pytest.fixture(scope="module")
def pretrained(worlds, tiny_config, tmp_path_factory):
    """A tower pretrained on the base world, and the session that trained it."""
    sessions = []
    original = factlearn.training.pretrain.train_task

    def spy(s, *args, **kwargs):
        sessions.append(s)
        return original(s, *args, **kwargs)

    factlearn.training.pretrain.train_task = spy
    try:
        out = tmp_path_factory.mktemp("pre") / "tower"
        record = pretrain(worlds[0], load_config(tiny_config), out, seed=0, device="cpu")
    finally:
        factlearn.training.pretrain.train_task = original
    return out, record, sessions[0]


def config_with(tiny_config: Path, folder: Path, **sections) -> Path:
    """tiny.yaml with model.pretrained (and other sections' keys) set, as a file next to ``folder``."""
    data = yaml.safe_load(tiny_config.read_text())
    data["model"]["pretrained"] = str(folder)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = folder.parent / f"{folder.name}-{len(list(folder.parent.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_pretrained_tower_round_trip(pretrained, tiny_config, worlds):
    out, record, session = pretrained
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "pretrain.json"]
    assert not list(out.parent.glob(".*"))  # no temporary folder left
    assert record == json.loads((out / "pretrain.json").read_text())
    assert record["facts"] == len(session.dataset.facts) == 6 and len(record["fact_table_sha256"]) == 64
    assert record["data"] == str(worlds[0].resolve()) and record["epochs"] == record["epochs_trained"] == 1
    assert record["config"]["model"]["freeze_stages"] == 0 and record["seconds"] >= 0
    cfg = load_config(config_with(tiny_config, out))
    model = create_model(cfg.model, Vocabulary(["star"])).eval()
    trained = session.model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # the whole backbone, batch-norm statistics included, is the one pretraining left
    assert torch.equal(model.image_tower.feature_map(x), trained.image_tower.feature_map(x))
    backbone = model.image_tower.backbone.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in trained.image_tower.backbone.state_dict().items())


def test_out_is_refused_unless_empty_or_an_earlier_tower(pretrained, worlds, tiny_config, tmp_path):
    out = pretrained[0]
    args = ["pretrain", "--data", str(worlds[0]), "--config", str(tiny_config), "--device", "cpu"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("mine")
    for folder, extra, match in [(other, [], "exists and is not empty (use --overwrite"),
                                 (other, ["--overwrite"], "is not a pretrained tower"),
                                 (other / "mine.txt", [], "is not a directory")]:
        r = CliRunner().invoke(main, args + ["--out", str(folder)] + extra)
        assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"] and (other / "mine.txt").read_text() == "mine"
    again = tmp_path / "again"
    shutil.copytree(out, again)
    r = CliRunner().invoke(main, args + ["--out", str(again), "--overwrite", "--seed", "1"])
    assert r.exit_code == 0 and "pretrained image tower written to" in r.output, r.output
    assert json.loads((again / "pretrain.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "notes"]


def test_continual_data_sharing_the_base_facts_is_refused(pretrained, worlds, tiny_config, tmp_path):
    out = pretrained[0]
    r = CliRunner().invoke(main, ["train", "--data", str(worlds[0]), "--config", str(config_with(tiny_config, out)),
                                  "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert r.exit_code == 2 and "pretraining on the continual world's facts is not fair" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_run_from_a_pretrained_tower_loads_and_resumes_without_surprise(pretrained, worlds, tiny_config, tmp_path):
    out = pretrained[0]
    tower = tmp_path / "tower"
    shutil.copytree(out, tower)
    cfg_path = config_with(tiny_config, tower)
    run = tmp_path / "run"
    train(worlds[1], load_config(cfg_path), run, device="cpu")
    recorded = RunDir(run).config().model
    assert recorded.pretrained == str(tower) and recorded.backbone_config["layer_type"] == "basic"
    train(worlds[1], load_config(cfg_path), run, device="cpu", resume=True)  # the config compares equal
    before = RunDir(run).load_model()[0].encode_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    shutil.rmtree(tower)
    after = RunDir(run).load_model()[0].encode_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert torch.equal(before, after)
    r = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 0 and "after B2" in r.output, r.output
    with pytest.raises(UserError, match="is not a pretrained image tower"):  # training again needs the folder
        train(worlds[1], load_config(cfg_path), tmp_path / "run2", device="cpu")
