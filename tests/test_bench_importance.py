"""scripts/bench.py section 1: the importance rows, exactness checked in float64."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench = pytest.importorskip("bench")


def test_relative_differences_per_parameter():
    want = {"a": torch.tensor([1.0, 2.0, 4.0]), "b": torch.tensor([10.0, 10.0])}
    got = {"a": torch.tensor([1.0, 2.0, 3.6]), "b": torch.tensor([10.0, 11.0])}
    # a: max |diff| 0.4 / max 4 = 0.1, L1 0.4 / 7; b: 1 / 10 = 0.1, L1 1 / 20
    assert bench.max_relative_diff(got, want) == pytest.approx(0.1)
    assert bench.max_relative_l1(got, want) == pytest.approx(0.4 / 7)


def test_importance_section_checks_exactness_in_float64(tiny_world, tiny_config):
    from factlearn.config import load_config
    from factlearn.data.manifest import load_dataset
    from factlearn.training import Session

    s = Session(load_dataset(tiny_world), load_config(tiny_config), seed=0, device=torch.device("cpu"), progress=False)
    rep = bench.Report()
    bench.bench_importance(rep, s, repeats=1, tag="cpu")
    rows = {r.name: r for r in rep.rows}
    exact = rows["max relative diff per parameter, fast path vs loop, both in float64 [cpu]"]
    assert exact.met is True and exact.values[0] <= 1e-10
    for path in ("fast path", "loop"):
        largest = rows[f"max relative diff per parameter, {path} in float32 vs float64 loop [cpu]"].values[0]
        l1 = rows[f"relative L1 diff per parameter (max), {path} in float32 vs float64 loop [cpu]"].values[0]
        assert 0 <= l1 and largest < 1e-2
    # Where the fast path's time goes, from per_sample's profiler labels: without them (or with the
    # rules outside the labelled ranges) these rows are missing or empty.
    share = {name: rows[name].values[0] for name in rows if name.startswith("fast path time: ")}
    kinds = {"Conv2d", "BatchNorm2d", "Linear", "Embedding"}
    assert {f"fast path time: {k} rules [cpu]" for k in kinds} <= set(share)
    assert share["fast path time: shared forward + backward to the layer outputs [cpu]"] > 0
    rules = sum(share[f"fast path time: {k} rules [cpu]"] for k in kinds)
    products = share["fast path time: per-sample products inside the rules [cpu]"]
    assert 0 < products < rules
    assert share["fast path time: shared forward + backward to the layer outputs [cpu]"] + rules <= 100
    assert rows["bound on fast / ceiling, rules reduced to their products [cpu]"].values[0] > 0


def test_importance_profile_counts_products_only_inside_rules():
    from factlearn.continual import per_sample

    a, b = torch.randn(8, 32, 16), torch.randn(8, 16, 64)

    def work():
        a @ b  # outside any rule: not counted
        with torch.profiler.record_function(per_sample.RULE_LABEL + "Conv2d"):
            (a @ b).abs().sum(0)

    wall, parts = bench.importance_profile(work)
    assert set(parts) == {"rule:Conv2d", "products"}
    assert 0 < parts["products"] < parts["rule:Conv2d"] <= wall
