"""How an importance (Omega) is spread over the parameters, and how two tasks' importances overlap.

A quadratic penalty's Omega decides which parameters stay and which stay free for the next task. Two
properties of it explain much of how methods differ at the same mean pull (``method.importance_norm:
mean`` makes every task's Omega average 1 per tower, so only its shape differs between methods):

- concentration: the share of Omega's total held by its largest entries. Uniform anchoring (l2)
  holds exactly q of it in any fraction q of the entries; an Omega that holds most of its mass in a
  few entries pins those hard and leaves the rest almost free.
- overlap between tasks: whether each task's Omega points at the same parameters. If it does, the
  summed Omega (MAS Eq. 3 over tasks, SI Eq. 5) keeps pinning one set harder with every task.

Pure functions over 1-D tensors (a tower's Omega flattened, :func:`flatten`), tested against slow
references in tests/test_concentration.py.
"""

from __future__ import annotations

import math

import torch


def flatten(omega: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
    """The entries of the tensors whose names start with ``prefix``, in name order, as one float64 vector.

    Args:
        omega: name -> importance tensor.
        prefix: e.g. ``"image_tower."``; ``""`` takes every tensor.
    Returns:
        a (P,) float64 tensor; a ValueError if no name matches.
    """
    names = sorted(n for n in omega if n.startswith(prefix))
    if not names:
        raise ValueError(f"no importance tensor starts with {prefix!r}")
    return torch.cat([omega[n].detach().double().flatten() for n in names])


def _top_k(size: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * size))


def top_share(omega: torch.Tensor, fraction: float) -> float:
    """The share of ``omega``'s total held by its largest ``ceil(fraction * P)`` entries.

    ``fraction`` for a uniform Omega (l2), 1 when a single entry holds everything; NaN when the total is 0.
    """
    total = omega.sum()
    if total <= 0:
        return float("nan")
    return float(omega.topk(_top_k(omega.numel(), fraction)).values.sum() / total)


def top_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float) -> float:
    """The share of ``a``'s largest ``ceil(fraction * P)`` entries that are also among ``b``'s.

    ``fraction`` on average for two unrelated Omegas, 1 when both pick the same entries. Ties are
    broken by :func:`torch.topk`, so give it Omegas without large blocks of equal values.
    """
    if a.shape != b.shape:
        raise ValueError(f"importances of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    k = _top_k(a.numel(), fraction)
    mask = torch.zeros(a.numel(), dtype=torch.bool)
    mask[a.topk(k).indices] = True
    return float(mask[b.topk(k).indices].sum()) / k


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two importances (ties get their mean rank): scale-free, so
    Omegas of different units (MAS's output norm, SI's path integral) compare."""
    if a.shape != b.shape:
        raise ValueError(f"importances of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..P-1 of ``x``, tied entries sharing their mean rank."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts  # the first rank of each distinct value
    mean_rank = start.double() + (counts.double() - 1) / 2
    return mean_rank[inverse]


def uncombine(total: torch.Tensor, previous: torch.Tensor | None, keep: float, weight: float) -> torch.Tensor:
    """One task's importance back from two consecutive accumulated ones.

    A method accumulates ``total = keep * previous + weight * task`` (``method.accumulate``: sum is
    (1, 1), blend (alpha, 1 - alpha), online EWC (gamma, 1)); the first task's total is its own
    importance (``previous`` None).
    """
    if previous is None:
        return total
    if weight == 0:
        raise ValueError("a task's importance cannot be recovered when the accumulation gives it weight 0")
    return (total - keep * previous) / weight
