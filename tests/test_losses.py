import math

import pytest
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


def test_raw_distance_hand_computed():
    """loss.distance raw: Sherlock's per-slot squared distance between the RAW outputs, masked by
    the wildcard flags; the normalized default compares unit vectors instead."""
    img = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [5.0, 5.0]],
                        [[0.0, 2.0], [2.0, 2.0], [1.0, 1.0]]])  # (2, 3, 2): two images
    facts = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]],  # fact 0 <S, P>: its O slot is zero
                          [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])  # fact 1 <S, P, O>
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    targets = torch.tensor([0, 1])
    none = torch.zeros(2, 2, dtype=torch.bool)
    raw = LossConfig(distance="raw", contrastive_weight=0.0)
    # image 0 vs fact 0: S |(3,4)|^2 = 25, P |(0,-2)|^2 = 4, O masked -> 29
    # image 1 vs fact 1: S |(0,1)|^2 = 1, P |(2,2)|^2 = 8, O |(0,1)|^2 = 1 -> 10; mean 19.5
    assert fact_loss(img, facts, mask, targets, none, raw).item() == 19.5
    assert fact_loss(img, facts, mask, targets, none, LossConfig(distance="raw", contrastive_weight=0.0,
                                                                 distance_weight=2.0)).item() == 39.0
    unit = torch.nn.functional.normalize
    normalized = slot_distance(unit(img, dim=-1), unit(facts, dim=-1)[targets] * mask[targets].unsqueeze(-1),
                               mask[targets])
    assert torch.isclose(fact_loss(img, facts, mask, targets, none, LossConfig(contrastive_weight=0.0)), normalized)
    assert LossConfig().distance == "normalized"


def test_raw_distance_with_trainable_facts_and_no_contrast_is_refused():
    from factlearn.config import ModelConfig, from_dict
    from factlearn.errors import UserError
    from factlearn.losses import check_loss

    raw = LossConfig(distance="raw", contrastive_weight=0.0)
    with pytest.raises(UserError) as err:
        check_loss(raw, ModelConfig())
    message = str(err.value)
    assert "\n" not in message
    assert all(k in message for k in ("loss.distance", "loss.contrastive_weight", "model.freeze_language"))
    check_loss(raw, ModelConfig(freeze_language=True))  # fixed fact vectors: the reference setting
    check_loss(LossConfig(distance="raw"), ModelConfig())  # a contrastive term keeps facts apart
    check_loss(LossConfig(contrastive_weight=0.0), ModelConfig())  # today's normalized distance: allowed
    with pytest.raises(UserError, match="loss.distance"):
        from_dict(LossConfig, {"distance": "euclid"}, "loss")
