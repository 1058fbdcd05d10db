"""The shape world's opt-in variants: rendering styles, the topic group and the base world with
--exclude; and that the default world's bytes do not move."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from factlearn.cli import main
from factlearn.data import synth
from factlearn.data.manifest import load_dataset
from factlearn.data.splits import make_split, monitored_facts
from factlearn.errors import UserError

TINY = dict(facts=8, images_per_fact=4, size=32, test_fraction=0.5, workers=1)
STYLED = [s for s in synth.STYLES if s != "clean"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "world"
    synth.generate_world(out, seed=3, **TINY)
    return out


# ---- the default world ------------------------------------------------------------------------

def test_default_world_is_unchanged(tmp_path):
    """The world of tests/conftest.py, as the generator made it before styles, topic and base
    existed (published results depend on these bytes). Pixels are hashed decoded, so that a
    different zlib cannot fail the test."""
    synth.generate_world(tmp_path / "w", seed=3, facts=12, images_per_fact=6, size=32, workers=1)
    digest = hashlib.sha256()
    for p in sorted((tmp_path / "w").rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(tmp_path / "w")).encode())
            digest.update(_pixels(p).tobytes() if p.suffix == ".png" else p.read_bytes())
    assert digest.hexdigest() == "7f6742d645d29a280d9ce2b9817d442c86719ee567c8e9779955a9ae2555311b"


def test_clean_style_is_the_default_world(clean, tmp_path):
    r = invoke("synth", tmp_path / "w", "--seed", 3, "--style", "clean", "--facts", 8, "--images-per-fact", 4,
               "--size", 32, "--workers", 1)
    assert r.exit_code == 0, r.output
    # The CLI's test fraction is the preset's (0.3), so compare with a CLI world without --style.
    r = invoke("synth", tmp_path / "plain", "--seed", 3, "--facts", 8, "--images-per-fact", 4, "--size", 32,
               "--workers", 1)
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "w") == _files(tmp_path / "plain")
    assert not {"style", "topic", "exclude"} & set(json.loads((clean / "world.json").read_text()))


# ---- styles -----------------------------------------------------------------------------------

@pytest.mark.parametrize("style", STYLED)
def test_style_keeps_facts_and_splits_and_changes_every_image(clean, tmp_path, style):
    out = tmp_path / style
    synth.generate_world(out, seed=3, style=style, **TINY)
    assert (out / "manifest.jsonl").read_bytes() == (clean / "manifest.jsonl").read_bytes()
    meta, base = (json.loads((d / "world.json").read_text()) for d in (out, clean))
    assert meta.pop("style") == style and meta == base
    a, b = load_dataset(clean), load_dataset(out)
    assert a.facts.facts == b.facts.facts and a.fact_ids() == b.fact_ids()
    assert [list(t.facts) for t in make_split(a, "random", 2, 0)] == \
           [list(t.facts) for t in make_split(b, "random", 2, 0)]
    for rec in a.records:
        name = rec.image.relative_to(a.root)
        assert not np.array_equal(_pixels(clean / name), _pixels(out / name)), name


def test_dusk_only_dims(clean, tmp_path):
    """dusk dims the background and draws the shapes as clean does: no pixel gets lighter, and the
    images lose light on average (the background is most of an image)."""
    out = tmp_path / "dusk"
    synth.generate_world(out, seed=3, style="dusk", **TINY)
    lighter, ratios = 0, []
    for rec in load_dataset(clean).records:
        name = rec.image.relative_to(clean)
        a, b = _pixels(clean / name).astype(int), _pixels(out / name).astype(int)
        lighter += int((b > a + 1).sum())  # +1: rounding
        ratios.append(b.sum() / max(1, a.sum()))
    assert lighter == 0 and 0.75 < float(np.mean(ratios)) < 0.97


def test_styles_are_deterministic_across_workers(tmp_path):
    synth.generate_world(tmp_path / "one", seed=1, style="noise", **TINY)
    synth.generate_world(tmp_path / "two", seed=1, style="noise", **{**TINY, "workers": 2})
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_unknown_style_is_one_line_and_writes_nothing(tmp_path):
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "w"), "--style", "foggy", "--workers", "1"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [r.output.strip()] and "'foggy'" in r.output, r.output
    assert r.output.startswith("Error: ") and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


# ---- the topic group --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 20, 48, 186])
def test_topic_is_about_a_tenth_of_the_facts(n):
    pairs = synth.sample_facts(n, seed=1, topic=True)
    topic = [f for f, g in pairs if g == synth.TOPIC]
    assert len(pairs) == n and len(topic) == synth.topic_count(n) == max(1, round(n / 10))
    assert all(f.subject in synth.TOPIC_SHAPES for f in topic)
    assert not any(f.subject in synth.TOPIC_SHAPES or f.object in synth.TOPIC_SHAPES
                   for f, g in pairs if g != synth.TOPIC)
    assert synth.sample_facts(n, seed=1, topic=True) == pairs


def test_topic_world_labels_the_group_in_the_manifest(tmp_path):
    synth.generate_world(tmp_path / "w", seed=2, topic=True, **{**TINY, "facts": 30, "images_per_fact": 2})
    rows = [json.loads(line) for line in (tmp_path / "w" / "manifest.jsonl").read_text().splitlines()]
    topic = {(r["subject"], r["predicate"], r["object"]) for r in rows if r["group"] == "topic"}
    assert len(topic) == 3 and all(s in synth.TOPIC_SHAPES for s, _, _ in topic)
    meta = json.loads((tmp_path / "w" / "world.json").read_text())
    assert meta["topic"] == {"group": "topic", "shapes": list(synth.TOPIC_SHAPES), "facts": 3}
    dataset = load_dataset(tmp_path / "w")  # what `factlearn split --monitor topic` records
    assert {dataset.facts[i].slots for i in monitored_facts(dataset, "topic")} == topic


# ---- the base world and --exclude -------------------------------------------------------------

def test_exclude_leaves_out_every_fact_and_its_converse():
    excluded = [f for f, _ in synth.sample_facts(600, seed=0)]
    facts = [f for f, _ in synth.sample_facts(500, seed=1, exclude=excluded)]
    assert len(set(facts)) == 500
    assert not set(facts) & set(excluded)
    assert not {synth.converse(f) for f in facts} & set(excluded)
    assert synth.sample_facts(40, seed=1, exclude=()) == synth.sample_facts(40, seed=1)
    with pytest.raises(UserError, match="at most 556: .* outside the excluded worlds"):
        synth.sample_facts(557, seed=1, exclude=excluded)


def test_base_world_shares_no_fact_with_the_excluded_worlds(clean, tmp_path):
    r = invoke("synth", tmp_path / "other", "--seed", 5, "--facts", 30, "--images-per-fact", 2, "--size", 24,
               "--workers", 1)
    assert r.exit_code == 0, r.output
    r = invoke("synth", tmp_path / "base", "--preset", "base", "--exclude", clean, "--exclude", tmp_path / "other",
               "--facts", 40, "--images-per-fact", 2, "--size", 24, "--workers", 1)
    assert r.exit_code == 0, r.output
    base = set(synth.world_facts(tmp_path / "base"))
    for world in (clean, tmp_path / "other"):
        assert synth.shared_facts(tmp_path / "base", world) == []
        assert not base & set(synth.world_facts(world))
    meta = json.loads((tmp_path / "base" / "world.json").read_text())
    assert meta["preset"] == "base" and meta["seed"] == synth.PRESETS["base"]["seed"]
    assert [w["path"] for w in meta["exclude"]["worlds"]] == [str(clean.resolve()), str((tmp_path / "other").resolve())]
    excluded = {tuple(f) for f in meta["exclude"]["facts"]}
    assert excluded == {f.slots for f in synth.world_facts(clean)} | {f.slots for f in synth.world_facts(tmp_path / "other")}
    assert {(f["subject"], f["predicate"], f["object"]) for f in meta["facts"]} == {f.slots for f in base}


def test_shared_facts_finds_a_fact_or_its_converse(clean):
    assert set(synth.shared_facts(clean, clean)) == set(synth.world_facts(clean))


def test_exclude_of_a_missing_world_names_it_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="--exclude .*nowhere"):
        synth.generate_world(tmp_path / "w", exclude=[tmp_path / "nowhere"], **TINY)
    assert not (tmp_path / "w").exists()


def test_base_preset_defaults():
    base = synth.PRESETS["base"]
    assert base["seed"] != synth.PRESETS["small"]["seed"]
    # room for its facts once a whole 6ds world is excluded
    six_ds = [f for f, _ in synth.sample_facts(synth.PRESETS["6ds"]["facts"], seed=0)]
    assert len(synth.sample_facts(base["facts"], base["seed"], exclude=six_ds)) == base["facts"]


def test_synth_help_lists_every_style():
    r = invoke("synth", "--help")
    text = " ".join(r.output.split())
    assert all(style in text for style in synth.STYLES), text
