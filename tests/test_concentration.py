"""factlearn.continual.concentration against slow references (sorting, Python sets, scipy)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from factlearn.config import MethodConfig
from factlearn.continual import concentration as C
from factlearn.continual import create_method


def heavy(n: int, seed: int) -> torch.Tensor:
    """A positive, heavy-tailed importance without ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64).pow(6) + 1e-9 * torch.arange(n, dtype=torch.float64)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.37, 1.0])
def test_top_share_matches_sorting(fraction):
    x = heavy(1000, 0)
    k = max(1, math.ceil(fraction * x.numel()))
    ref = sum(sorted(x.tolist(), reverse=True)[:k]) / sum(x.tolist())
    assert C.top_share(x, fraction) == pytest.approx(ref, rel=1e-12)


def test_top_share_bounds():
    assert C.top_share(torch.ones(500, dtype=torch.float64), 0.1) == pytest.approx(0.1)  # l2: uniform
    one_hot = torch.zeros(500, dtype=torch.float64)
    one_hot[17] = 3.0
    assert C.top_share(one_hot, 0.01) == 1.0
    assert math.isnan(C.top_share(torch.zeros(5), 0.5))
    with pytest.raises(ValueError, match="fraction"):
        C.top_share(one_hot, 0.0)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_top_overlap_matches_sets(fraction):
    a, b = heavy(800, 1), heavy(800, 2)
    b = 0.5 * a + b  # correlated with a, not equal
    k = max(1, math.ceil(fraction * 800))
    top = lambda x: set(sorted(range(800), key=lambda i: -x[i].item())[:k])  # noqa: E731
    assert C.top_overlap(a, b, fraction) == pytest.approx(len(top(a) & top(b)) / k)
    assert C.top_overlap(a, a, fraction) == 1.0
    assert C.top_overlap(a, -a, fraction) == 0.0  # opposite orders share nothing while k <= P / 2
    with pytest.raises(ValueError, match="shapes"):
        C.top_overlap(a, b[:-1], fraction)


def test_rank_correlation_matches_scipy_with_ties():
    a, b = heavy(600, 3), heavy(600, 4)
    b = a + 0.3 * b
    a_tied, b_tied = (a * 20).round(), (b * 20).round()  # many ties
    for x, y in ((a, b), (a_tied, b_tied), (a, -a)):
        assert C.rank_correlation(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert math.isnan(C.rank_correlation(torch.ones(4), a[:4]))


def test_flatten_by_prefix_in_name_order():
    omega = {"image_tower.b": torch.tensor([3.0, 4.0]), "image_tower.a": torch.tensor([[1.0], [2.0]]),
             "language_tower.a": torch.tensor([9.0])}
    assert C.flatten(omega, "image_tower.").tolist() == [1.0, 2.0, 3.0, 4.0]
    assert C.flatten(omega).tolist() == [1.0, 2.0, 3.0, 4.0, 9.0]
    with pytest.raises(ValueError, match="starts with"):
        C.flatten(omega, "nothing.")


@pytest.mark.parametrize("name, keys", [("mas", {}), ("si", {"accumulate": "blend", "alpha": 0.3}),
                                        ("online_ewc", {"gamma": 0.6}), ("l2", {})])
def test_uncombine_inverts_each_methods_accumulation(name, keys):
    """Every quadratic penalty's combine is keep * old + weight * new; uncombine recovers new."""
    method = create_method(MethodConfig(name=name, **keys))
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    keep, weight = float(method.combine(one, zero)), float(method.combine(zero, one))
    tasks = [heavy(50, s) for s in range(4)]
    total, previous = None, None
    for task in tasks:
        total = task if total is None else method.combine(total, task)
        assert torch.allclose(C.uncombine(total, previous, keep, weight), task, rtol=1e-12, atol=1e-12)
        previous = total


def test_importance_power_raises_each_tasks_omega_before_normalising():
    from factlearn.continual.base import normalize_importance
    from factlearn.errors import UserError

    new = {"image_tower.w": heavy(40, 5).float(), "language_tower.w": heavy(10, 6).float()}
    plain = create_method(MethodConfig(name="mas", importance_norm="mean"))
    cubed = create_method(MethodConfig(name="mas", importance_norm="mean", importance_power=3.0))
    plain.accumulate(new)
    cubed.accumulate(new)
    want = normalize_importance({n: t.pow(3) for n, t in new.items()})
    for n in new:
        assert torch.allclose(cubed._get("omega")[n], want[n])
        assert not torch.allclose(plain._get("omega")[n], want[n])
        # the order stays, the concentration grows
        assert torch.equal(cubed._get("omega")[n].argsort(), plain._get("omega")[n].argsort())
    assert C.top_share(C.flatten(cubed._get("omega"), "image_tower."), 0.1) > C.top_share(
        C.flatten(plain._get("omega"), "image_tower."), 0.1)
    with pytest.raises(UserError, match="importance_power"):
        create_method(MethodConfig(name="l2", importance_power=2.0))  # Omega is 1: nothing to raise
