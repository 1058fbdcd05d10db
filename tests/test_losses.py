import math

import torch

from factlearn.config import LossConfig
from factlearn.losses import contrastive, fact_loss, slot_distance


def test_slot_distance_hand_computed():
    img = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # (1, 3, 2)
    fact = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])
    # S: |(1,-1)|^2 = 2; P: 0; O masked out
    assert slot_distance(img, fact, torch.tensor([[1.0, 1.0, 0.0]])).item() == 2.0
    assert slot_distance(img, fact, torch.tensor([[1.0, 1.0, 1.0]])).item() == 3.0


def test_contrastive_hand_computed_and_exclusion():
    img = torch.tensor([[1.0, 0.0]])
    facts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = 0.5
    logits = torch.tensor([1.0, 0.0, 1 / math.sqrt(2)]) / t
    expected = -torch.log_softmax(logits, 0)[0]
    none = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.isclose(contrastive(img, facts, torch.tensor([0]), none, t), expected)
    # excluding candidate 2 removes it from the softmax
    excl = torch.tensor([[False, False, True]])
    expected2 = -torch.log_softmax(logits[:2], 0)[0]
    assert torch.isclose(contrastive(img, facts, torch.tensor([0]), excl, t), expected2)


def _train(cfg: LossConfig, steps: int = 200) -> torch.Tensor:
    """Two trainable 'towers' (free embeddings) on 6 facts; returns the learned fact vectors."""
    torch.manual_seed(0)
    img = torch.randn(6, 3, 8, requires_grad=True)
    fact = torch.randn(6, 3, 8, requires_grad=True)
    mask = torch.ones(6, 3)
    opt = torch.optim.Adam([img, fact], lr=0.05)
    targets = torch.arange(6)
    for _ in range(steps):
        loss = fact_loss(img, fact, mask, targets, torch.zeros(6, 6, dtype=torch.bool), cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.nn.functional.normalize(fact.detach(), dim=-1).flatten(1)


def test_default_loss_keeps_facts_apart_but_distance_alone_collapses():
    # With both sides trainable, the reference distance loss alone has a trivial minimum; the
    # default (with the contrastive term) must keep distinct facts distinct.
    sim = lambda v: (torch.nn.functional.normalize(v, dim=1) @ torch.nn.functional.normalize(v, dim=1).T)
    off = ~torch.eye(6, dtype=torch.bool)
    default = sim(_train(LossConfig()))[off]
    collapsed = sim(_train(LossConfig(contrastive_weight=0.0), steps=400))[off]
    assert default.max() < 0.9
    assert collapsed.mean() > default.mean()
