"""scripts/bench.py --ann-run: the approximate indexes swept over a trained run's own embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from factlearn.config import load_config
from factlearn.data.manifest import load_dataset
from factlearn.query import query_images
from factlearn.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench = pytest.importorskip("bench")


def test_learned_space_is_what_a_query_of_the_run_searches(tiny_world, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_world, load_config(tiny_config, {"method.name": "finetune"}), run, device="cpu")
    facts, queries = bench.learned_space(run, n_queries=5, seed=0)
    assert facts.shape[0] == len(json.loads((run / "facts.json").read_text())) and queries.shape == (5, facts.shape[1])
    assert np.allclose(np.linalg.norm(facts, axis=1), 1, atol=1e-5)  # what the index holds: unit rows
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)  # (slot-normalised: FactIndex normalises)
    # the same scores as factlearn query over every fact, for the same images
    records = load_dataset(tiny_world).records
    picked = np.sort(np.random.default_rng(0).choice(len(records), 5, replace=False))
    hits = query_images(str(run), [str(records[i].image) for i in picked], top_k=1, all_facts=True)
    best = (queries @ facts.T).max(1)
    assert np.allclose(best, [h["facts"][0]["score"] for h in hits], atol=1e-5)
    rep = bench.Report()
    bench.bench_ann(rep, "learned", 0, 5, 1, dict(bench.SIZES["quick"], ann_nlist=2, ann_M=8, ann_efc=16), False,
                    run=str(run))
    names = [r.name for r in rep.rows]
    assert any(n.startswith("flat, learned") for n in names) and any("ivf" in n for n in names)
