"""Shared fixtures: a tiny generated world and a tiny model config (fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from factlearn.data.synth import generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, seed=3, facts=12, images_per_fact=6, size=32, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return TINY_CONFIG
