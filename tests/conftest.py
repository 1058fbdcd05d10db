"""Shared fixtures: a tiny generated world, a tiny run config and a tiny model config (fast on CPU)."""

from __future__ import annotations

import os

# One thread, set before torch is imported, and inherited by the subprocesses some tests start:
# multithreaded CPU kernels do not promise bit-identical results from run to run, and the resume
# tests compare bits. It also keeps the suite fast when other jobs share the cores.
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from factlearn.data.synth import generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, seed=3, facts=12, images_per_fact=6, size=32, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return TINY_CONFIG


# The smallest ResNet the model accepts: two stages of one block, 8 and 16 channels, on 32 px.
TINY_MODEL = dict(backbone_config={"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
                  image_size=32, slot_dim=16, word_dim=16, text_hidden=32)


@pytest.fixture(scope="session")
def tiny_model_config():
    """A factory of tiny ModelConfigs: ``tiny_model_config(**overrides)`` (keys of ModelConfig)."""
    from factlearn.config import ModelConfig

    def make(**overrides) -> ModelConfig:
        return ModelConfig(**{**TINY_MODEL, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_fact_model(tiny_model_config):
    """A factory of tiny FactModels whose batch-norm statistics are away from their initial values
    (so eval mode differs from train mode): ``tiny_fact_model(words, seed=0, **overrides)``.

    Seeds torch with ``seed`` first, so the caller's next random draws are reproducible too. The
    model is returned in train mode; overrides are ModelConfig keys (default slot_dim 8).
    """
    import torch

    from factlearn.model import Vocabulary, create_model

    def make(words, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        cfg = tiny_model_config(**{"slot_dim": 8, "word_dim": 8, "text_hidden": 16, **overrides})
        model = create_model(cfg, Vocabulary(words))
        model.train()
        size = cfg.image_size
        model.embed_images(torch.randn(16, 3, size, size) * 2 + 1)
        return model

    return make


def tied_unit_rows(rng: np.random.Generator, n: int = 300, d: int = 16) -> np.ndarray:
    """(n, d) float32 unit rows with four entries in {+-0.5} and the rest 0, drawn from ``rng``:
    every dot product is exact in float32 and many different rows tie, so a search's tie order is
    its rule's alone."""
    x = np.zeros((n, d), dtype=np.float32)
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x
