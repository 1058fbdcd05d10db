"""Shared fixtures: a tiny generated world and a tiny model config (fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = {
    "model": {
        "backbone": "resnet",
        "backbone_config": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
        "image_size": 32,
        "slot_dim": 16,
        "word_dim": 16,
        "text_hidden": 32,
    },
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.003},
    "method": {"lam": 1.0, "importance_batch_size": 8},
}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from factlearn.data.synth import generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, seed=3, facts=12, images_per_fact=6, size=32, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path
