"""Shared fixtures: a tiny generated world and a tiny model config (fast on CPU)."""

from __future__ import annotations

import os

# One thread, set before torch is imported, and inherited by the subprocesses some tests start:
# multithreaded CPU kernels do not promise bit-identical results from run to run, and the resume
# tests compare bits. It also keeps the suite fast when other jobs share the cores.
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

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
