"""The large world (``factlearn synth --preset lsc``): determinism across worker counts, the counts
asked for, distinct facts, a vocabulary that reaches the LSC scale, and a data directory the loader
reads; on a small world of the same kind."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from factlearn.cli import main
from factlearn.data import synth
from factlearn.data.manifest import load_dataset
from factlearn.data.synth import shapes
from factlearn.errors import UserError
from factlearn.facts import Fact

SMALL = dict(preset="lsc", facts=600, images_per_fact=2)  # 1,200 images: a few seconds


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lsc") / "world"
    synth.generate_world(out, workers=1, **SMALL)
    return out


def test_worker_count_does_not_change_a_byte(world, tmp_path):
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "w"), "--preset", "lsc", "--facts", "600",
                                  "--images-per-fact", "2", "--workers", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "w") == _files(world)


def test_counts_are_as_asked_and_the_loader_reads_the_world(world):
    dataset = load_dataset(world)
    assert len(dataset.facts) == 600 and len(dataset.records) == 1200
    per_fact = Counter(r.fact for r in dataset.records)
    assert set(per_fact.values()) == {2}
    assert Counter(r.split for r in dataset.records) == {"train": 600, "test": 600}
    assert {f.order for f in dataset.facts.facts} == {1, 2, 3}
    assert all(g == synth.fact_group(f) for f, g in dataset.groups().items())
    meta = json.loads((world / "world.json").read_text())
    assert meta["preset"] == "lsc" and meta["size"] == 32 and meta["counts"]["facts"] == 600
    assert len({(f["subject"], f["predicate"], f["object"]) for f in meta["facts"]}) == 600
    first = dataset.records[0].image
    assert first.parent.name == "000" and first.name == "000000.png"  # folders of 1,000 images
    with Image.open(first) as img:
        assert img.mode == "RGB" and img.size == (32, 32)


def test_the_vocabulary_reaches_the_lsc_scale():
    assert synth.lsc_max_facts() >= 200_000
    assert len(synth.LSC_SUBJECTS) >= 1000 and len(synth.LSC_RELATIONS) >= 14
    pairs = synth.sample_lsc_facts(200_000, seed=0)
    facts = {f for f, _ in pairs}
    assert len(facts) == 200_000
    assert not any(c in facts for f in facts if (c := synth.converse(f)) is not None)  # one word per picture
    orders = Counter(f.order for f in facts)
    assert orders[1] == len(synth.LSC_SUBJECTS) and orders[2] > 40_000 and orders[3] > 100_000
    used = {f.predicate for f in facts}
    assert set(synth.LSC_RELATIONS) <= used
    assert {*synth.LSC_COLOURS, *synth.LSC_TEXTURES, *synth.LSC_SIZES} <= used


def test_sample_is_seeded_and_excludes_a_world():
    a = synth.sample_lsc_facts(500, seed=1)
    assert a == synth.sample_lsc_facts(500, seed=1) and a != synth.sample_lsc_facts(500, seed=2)
    taken = [f for f, _ in a]
    other = {f for f, _ in synth.sample_lsc_facts(2000, seed=1, exclude=taken)}
    assert not any(f in other or synth.converse(f) in other for f in taken)
    with pytest.raises(UserError, match="--facts must be at most"):
        synth.sample_lsc_facts(synth.lsc_max_facts() + 1)


def test_subjects_look_different():
    """No two subjects share (nearly) one silhouette: mask overlap below 0.95 (_SAME_LOOK)."""
    masks = np.stack([np.asarray(shapes.draw_mask(s, 24, 24, 20, 0.0, 48), bool).ravel()
                      for s in synth.LSC_SUBJECTS]).astype(np.float32)  # (subjects, 48 * 48)
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / (area[:, None] + area[None] - inter)
    np.fill_diagonal(iou, 0)
    worst = np.unravel_index(iou.argmax(), iou.shape)
    assert iou.max() < 0.95, [synth.LSC_SUBJECTS[i] for i in worst]


def test_every_word_renders():
    knobs = dict(clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2)
    plain = np.asarray(synth.render_image(Fact("hollow tall octagon"), 0, 0, 32, knobs))
    for p in (*synth.LSC_COLOURS, *synth.LSC_TEXTURES, *synth.LSC_SIZES):
        img = synth.render_image(Fact("hollow tall octagon", p), 0, 0, 32, knobs)
        assert img.size == (32, 32) and not np.array_equal(np.asarray(img), plain), p
    for r in synth.LSC_RELATIONS:
        assert synth.render_image(Fact("pierced wide pie", r, "octagon"), 0, 1, 32, knobs).size == (32, 32)


def test_lsc_options_are_checked(tmp_path):
    with pytest.raises(UserError, match="--topic"):
        synth.generate_world(tmp_path / "t", topic=True, workers=1, **SMALL)
    with pytest.raises(UserError, match="--facts must be at most"):
        synth.generate_world(tmp_path / "f", preset="lsc", facts=synth.lsc_max_facts() + 1, workers=1)
    assert not list(tmp_path.iterdir())
