"""scripts/bench.py section 7: the step with all vs sampled negatives, per stage size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench = pytest.importorskip("bench")


def test_negatives_section_times_both_kinds_per_stage_size(tmp_path):
    rep = bench.Report()
    out = bench.bench_negatives(rep, tmp_path, [40, 80], repeats=1, steps=1, device=torch.device("cpu"))
    # one world of 80 facts: split into 2 tasks, then 1; the stage sizes are what a split gives
    assert len(out) == 2 and 80 in out and 30 <= min(out) <= 50
    for times in out.values():
        assert set(times) == {"all", "sampled"} and all(len(v) == 1 and v[0] > 0 for v in times.values())
    names = [r.name for r in rep.rows]
    assert sum(n.startswith("step, all (") for n in names) == 2
    assert sum(n.startswith("step, sampled K=1,024 (") for n in names) == 2
    assert sum(n.startswith("all / sampled step time") for n in names) == 2


def test_step_input_with_k_covering_the_stage_is_the_all_input(tiny_world, tiny_config):
    from factlearn.config import load_config
    from factlearn.data.manifest import load_dataset
    from factlearn.training import Session
    from factlearn.training.task import step_generator, step_input

    cfg = load_config(tiny_config)
    s = Session(load_dataset(tiny_world), cfg, seed=0, device="cpu", progress=False)
    stage = s.stage(0)
    rows = s.rows(stage, test=False)
    targets, wildcards = s.labels(stage.facts, rows)
    tokens, mask = s.tokens[stage.facts], s.slot_mask[stage.facts]
    sel = torch.arange(2)  # two images: at most 2 own facts + 1 drawn, fewer than the stage's
    x = torch.zeros(len(sel), 3, 8, 8)
    got = {}
    for kind in ("all", "sampled"):
        s.cfg.loss.negatives = kind
        s.cfg.loss.num_negatives = len(stage.facts)
        got[kind] = step_input(s, x, targets[sel], targets[sel], wildcards, tokens, mask, step_generator(0, 0, 0))
    a, b = got["all"], got["sampled"]
    assert torch.equal(a.targets, b.targets) and torch.equal(a.exclude, b.exclude)
    assert torch.equal(a.fact_tokens, b.fact_tokens) and torch.equal(a.fact_mask, b.fact_mask)
    # with fewer drawn than the stage holds, the targets still point at each image's own fact
    s.cfg.loss.num_negatives = 1
    c = step_input(s, x, targets[sel], targets[sel], wildcards, tokens, mask, step_generator(0, 0, 0))
    assert c.fact_tokens.shape[0] < len(stage.facts)
    assert torch.equal(c.fact_tokens[c.targets], tokens[targets[sel]])
