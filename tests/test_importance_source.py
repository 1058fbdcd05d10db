"""Importance from held-out images and from a subset of the facts (method.importance_images,
method.importance_facts): fact-level adaptation (MAS paper, Table 4) and a monitored group."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from factlearn.cli import main
from factlearn.config import load_config
from factlearn.data.manifest import load_dataset
from factlearn.errors import UserError
from factlearn.run import read_tensors
from factlearn.training import Session, train


@pytest.fixture(scope="module")
def adaptation_tasks(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "tasks.json"
    r = CliRunner().invoke(main, ["split", str(tiny_world), "--tasks", "2", "--seed", "0", "--out", str(out),
                                  "--adaptation", "--held-out", "0.3", "--test-fraction", "0.3"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def session(world, tiny_config, tasks_file, **method):
    overrides = {"split.tasks_file": str(tasks_file), "split.seed": 0, "method.name": "mas",
                 **{f"method.{k}": v for k, v in method.items()}}
    return Session(load_dataset(world), load_config(tiny_config, overrides), 0, torch.device("cpu"), False)


def rows_of(data) -> list[torch.Tensor]:
    return [x for x, _, _ in data.batches(1000)]


def test_held_out_images_are_never_trained_on(tiny_world, tiny_config, adaptation_tasks):
    s = session(tiny_world, tiny_config, adaptation_tasks)
    held = np.flatnonzero(s.is_held_out)
    assert len(held) and not s.is_test[held].any()
    for task in s.tasks:
        assert not set(s.rows(task, test=False)) & set(held)
    assert torch.equal(torch.cat(rows_of(s.importance_data(0))), torch.cat(rows_of(s.task_data(s.tasks[0]))))


def test_importance_from_held_out_images_of_one_subset(tiny_world, tiny_config, adaptation_tasks):
    s = session(tiny_world, tiny_config, adaptation_tasks, importance_images="held_out", importance_facts="B11")
    b11 = json.loads(adaptation_tasks.read_text())["tasks"][0]["adaptation"]["B11"]
    data = s.importance_data(0)
    assert data.num_samples == len(b11)  # exactly the held-out images of B11's facts
    names = sorted(r.image.relative_to(s.dataset.root).as_posix() for r in
                   (s.dataset.records[i] for i in np.flatnonzero(s.is_held_out & np.isin(s.fact_ids, s.subsets["B11"]))))
    assert names == sorted(b11)
    train_b11 = s.rows(s.tasks[0], test=False)
    assert not set(train_b11) & set(np.flatnonzero(s.is_held_out))
    assert s.importance_data(1).num_samples == len(b11)  # after B2: still B11's (its facts learned so far)


def test_a_subset_with_nothing_learned_yet_gives_zero_importance(tiny_world, tiny_config, adaptation_tasks):
    s = session(tiny_world, tiny_config, adaptation_tasks, importance_images="held_out", importance_facts="B21")
    data = s.importance_data(0)  # B2's subset: no fact learned after B1
    assert data.num_samples == 0
    assert data.mean({"w": torch.ones(2)}, 0)["w"].eq(0).all()


def test_an_adaptation_run_trains_and_records_metrics(tiny_world, tiny_config, adaptation_tasks, tmp_path):
    cfg = load_config(tiny_config, {"split.tasks_file": str(adaptation_tasks), "method.name": "mas",
                                    "method.importance_images": "held_out", "method.importance_facts": "B11"})
    doc = train(tiny_world, cfg, tmp_path / "run", device="cpu")
    assert doc["tasks"] == ["B1", "B2"] and all(np.isfinite(v) for row in doc["matrix"]["top1"] for v in row)


@pytest.mark.parametrize("method, message", [
    ({"importance_facts": "B99"}, "importance_facts: 'B99' is not a subset of the task file"),
    ({"importance_images": "held_out"}, "holds out no image"),
])
def test_bad_importance_sources_are_one_line(tiny_world, tiny_config, tmp_path, method, message):
    plain = tmp_path / "plain.json"
    assert CliRunner().invoke(main, ["split", str(tiny_world), "--out", str(plain)]).exit_code == 0
    with pytest.raises(UserError, match=message) as err:
        session(tiny_world, tiny_config, plain, **method)
    assert "\n" not in str(err.value)


def test_importance_source_options_are_refused_by_methods_without_importance(tiny_world, tiny_config,
                                                                             adaptation_tasks):
    with pytest.raises(UserError, match="method.importance_facts is for importance-based methods"):
        session(tiny_world, tiny_config, adaptation_tasks, name="si", importance_facts="B11")


def test_importance_data_with_a_frozen_language_tower(tiny_world, tiny_config, tmp_path):
    """The faithful protocol freezes the language tower: its importance covers nothing, and the image
    tower's comes from --importance-data (a crash here once stopped every adaptation run)."""
    cfg = load_config(tiny_config, {"method.name": "mas", "model.freeze_language": True,
                                    "method.importance_data": str(tiny_world)})
    doc = train(tiny_world, cfg, tmp_path / "run", device="cpu")
    assert doc["tasks"] == ["B1", "B2"]
    omega = [k for k in read_tensors(tmp_path / "run" / "checkpoints" / "B1" / "method.safetensors")
             if k.startswith("omega.")]
    assert omega and all(k.startswith("omega.image_tower.") for k in omega)


def test_unlabeled_images_stream_from_the_data_sets_store(tiny_world, tmp_path, monkeypatch):
    """Importance data that is a data set is read batch by batch from its store (memory does not grow
    with it), with the pixels and the seeded subset of decoding them into memory."""
    from factlearn.continual.unlabeled import image_source, unlabeled_task
    from factlearn.data.images import read_images, to_model_input
    from factlearn.distributed import Context

    monkeypatch.delenv("FACTLEARN_IMAGE_CACHE", raising=False)
    paths, data_dir = image_source(tiny_world)
    assert data_dir == tiny_world and len(paths) > 10
    cap = len(paths) - 3
    keep = np.sort(np.random.default_rng([0, 7]).choice(len(paths), cap, replace=False))
    for rank in (0, 1):
        want = read_images([paths[i] for i in keep[rank::2]], 16)
        for where in (tmp_path / "copy", None):  # through a store, and in memory
            monkeypatch.setenv("FACTLEARN_IMAGE_CACHE", str(where) if where else "off")
            task = unlabeled_task(paths, 16, "cpu", cap=cap, shard=Context(rank, 2), data_dir=data_dir)
            got = torch.cat([x for x, _, _ in task.batches(4)])
            assert task.num_samples == len(want)
            assert torch.equal(got, to_model_input(want))
    monkeypatch.delenv("FACTLEARN_IMAGE_CACHE")
    task = unlabeled_task(paths, 16, "cpu", data_dir=data_dir)
    stores = list((tiny_world / ".factlearn-cache").glob(f"images-16px-{len(paths)}-*.npy"))
    assert len(stores) == 1 and task.num_samples == len(paths)
