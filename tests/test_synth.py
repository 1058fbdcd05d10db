"""The shape-world generator: determinism, output layout and option checks, on tiny worlds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factlearn.data import synth
from factlearn.errors import UserError
from factlearn.facts import Fact

TINY = dict(facts=8, images_per_fact=4, size=32, test_fraction=0.5)
KEYS = ["image", "subject", "predicate", "object", "group", "split"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    synth.generate_world(out, seed=3, workers=1, **TINY)
    return out


def test_same_seed_gives_identical_bytes(world, tmp_path):
    again = tmp_path / "again"
    synth.generate_world(again, seed=3, workers=1, **TINY)
    assert _files(again) == _files(world)


def test_different_seed_gives_different_world(world, tmp_path):
    other = tmp_path / "other"
    synth.generate_world(other, seed=4, workers=1, **TINY)
    a, b = _files(world), _files(other)
    assert a["manifest.jsonl"] != b["manifest.jsonl"]
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_worker_count_does_not_change_output(world, tmp_path):
    parallel = tmp_path / "parallel"
    synth.generate_world(parallel, seed=3, workers=2, **TINY)
    assert _files(parallel) == _files(world)


def test_manifest_schema_and_images(world):
    rows = _manifest(world)
    assert len(rows) == TINY["facts"] * TINY["images_per_fact"]
    assert all(list(r) == KEYS for r in rows)
    facts = {Fact(r["subject"], r["predicate"], r["object"]) for r in rows}
    assert len(facts) == TINY["facts"]
    assert {f.order for f in facts} == {1, 2, 3}
    for f in facts:
        splits = [r["split"] for r in rows if Fact(r["subject"], r["predicate"], r["object"]) == f]
        assert splits.count("train") == 2 and splits.count("test") == 2
        groups = {r["group"] for r in rows if Fact(r["subject"], r["predicate"], r["object"]) == f}
        assert groups == {synth.fact_group(f)}
    for r in rows:
        assert r["predicate"] is not None or r["object"] is None
        with Image.open(world / r["image"]) as img:
            img.load()
            assert img.mode == "RGB" and img.size == (TINY["size"], TINY["size"])
    assert not list(world.parent.glob("*.tmp-*"))  # the temp dir was renamed away


def test_world_json_lists_facts_and_parameters(world):
    meta = json.loads((world / "world.json").read_text())
    assert meta["seed"] == 3 and meta["size"] == 32 and meta["images_per_fact"] == 4
    assert set(meta["knobs"]) == set(synth.KNOBS)
    assert meta["counts"]["images"] == 32 and meta["counts"]["train"] + meta["counts"]["test"] == 32
    rows = _manifest(world)
    assert {(f["subject"], f["predicate"], f["object"], f["group"]) for f in meta["facts"]} == {
        (r["subject"], r["predicate"], r["object"], r["group"]) for r in rows}


def test_refuses_to_overwrite(world, tmp_path):
    with pytest.raises(UserError, match="already holds"):
        synth.generate_world(world, seed=3, workers=1, **TINY)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        synth.generate_world(busy, seed=3, workers=1, **TINY)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_empty_existing_directory_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    summary = synth.generate_world(out, seed=0, workers=1, facts=4, images_per_fact=2, size=24)
    assert summary["images"] == 8 and summary["train"] == 4 and summary["test"] == 4
    assert (out / "world.json").exists()


@pytest.mark.parametrize("option, value, message", [
    ("facts", 3, "--facts must be"),
    ("facts", 100_000, "--facts must be at most"),
    ("images_per_fact", 1, "--images-per-fact must be"),
    ("size", 16, "--size must be"),
    ("test_fraction", 0.0, "--test-fraction must be"),
    ("test_fraction", 1.0, "--test-fraction must be"),
    ("clutter", 1.5, "--clutter must be"),
    ("noise", -0.1, "--noise must be"),
    ("jitter", 2, "--jitter must be"),
    ("occlusion", -1, "--occlusion must be"),
    ("workers", 0, "--workers must be"),
    ("seed", -1, "--seed must be"),
    ("preset", "huge", "--preset must be"),
])
def test_bad_options_name_the_option(tmp_path, option, value, message):
    args = {**TINY, "workers": 1, option: value}
    with pytest.raises(UserError, match=message):
        synth.generate_world(tmp_path / "w", **args)
    assert not (tmp_path / "w").exists()


def test_progress_reports_every_image(tmp_path):
    calls = []
    synth.generate_world(tmp_path / "w", workers=1, progress=lambda done, total: calls.append((done, total)),
                         **TINY)
    assert calls[-1] == (32, 32)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_small_preset_facts():
    pairs = synth.sample_facts(synth.PRESETS["small"]["facts"], seed=0)
    facts = [f for f, _ in pairs]
    assert len(set(facts)) == len(facts) == 48
    assert {f.order for f in facts} == {1, 2, 3}
    phrases = {v for f in facts for v in f.slots if v}
    assert any(" " in p for p in phrases if p not in synth.SHAPES)  # multi-word predicates
    groups = [g for _, g in pairs]
    assert len(set(groups)) >= 4
    assert sum(groups.count(g) >= 4 for g in set(groups)) >= 4  # enough for a semantic 4-task split


def test_sampled_facts_are_deterministic_and_unambiguous():
    assert synth.sample_facts(60, seed=1) == synth.sample_facts(60, seed=1)
    assert synth.sample_facts(60, seed=1) != synth.sample_facts(60, seed=2)
    everything = {f for f, _ in synth.sample_facts(synth.max_facts(), seed=0)}
    assert len(everything) == synth.max_facts()
    for f in everything:  # a fact and its converse would show the same picture
        if f.predicate in synth.CONVERSE:
            assert Fact(f.object, synth.CONVERSE[f.predicate], f.subject) not in everything


def test_six_ds_preset_has_the_scale_of_6ds():
    p = synth.PRESETS["6ds"]
    assert p["facts"] == 186 and 27_000 <= p["facts"] * p["images_per_fact"] <= 29_000
    orders = [f.order for f, _ in synth.sample_facts(p["facts"], seed=0)]
    assert min(orders.count(k) for k in (1, 2, 3)) > 0


def test_failure_leaves_nothing_behind(tmp_path):
    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.generate_world(tmp_path / "w", workers=1, progress=stop, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_numpy_integers_are_accepted(tmp_path):
    synth.generate_world(tmp_path / "w", seed=np.int64(2), workers=1, **{**TINY, "facts": np.int64(4)})
    assert json.loads((tmp_path / "w" / "world.json").read_text())["seed"] == 2
