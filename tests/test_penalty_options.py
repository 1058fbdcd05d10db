"""The quadratic penalties' options (method.penalty, method.importance_norm), each against a hand
computation: SGD's momentum sees the penalty's gradient (the reference code's order), the decoupled
pull after Adam, SI's path integral with the decoupled pull, Omega normalised per tower, and resume."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from test_methods import Scalar
from test_resume import Crash, assert_same_run, crash_on_call

import factlearn.run
from factlearn.config import LossConfig, MethodConfig, load_config
from factlearn.continual import create_method
from factlearn.continual.base import TaskData, normalize_importance, trainable
from factlearn.facts import Fact
from factlearn.losses import fact_loss
from factlearn.training import train
from factlearn.training.step import StepInput, train_step

FACTS = [Fact("star"), Fact("star", "red"), Fact("circle", "left of", "star"), Fact("circle", "dark blue")]
WORDS = ["star", "red", "circle", "left", "of", "dark", "blue"]
QUADRATIC = ["mas", "lmas", "l2", "ewc", "online_ewc", "si"]
LAM = 3.0
NO_DATA = TaskData("t", 0, lambda bs: iter(()))  # before_task's argument where no importance is computed


@pytest.fixture
def setup(tiny_fact_model):
    """``setup(name, **options)``: a tiny FactModel in eval mode (so that the hand computation sees
    the same forward), a method whose importance and anchor are set as after a task (random Omega,
    theta* away from theta), and the step's batches."""

    def make(name: str, **options):
        model = tiny_fact_model(WORDS, seed=0).eval()
        method = create_method(MethodConfig(name=name, lam=LAM, **options))
        params = trainable(model)
        method.load_state_dict({
            **{f"omega.{n}": torch.rand_like(p) * 2 for n, p in params.items()},
            **{f"anchor.{n}": p.detach() + torch.randn_like(p) * 0.1 for n, p in params.items()},
            "meta.tasks_seen": torch.tensor(1),
        })
        tokens, mask = model.vocab.encode(FACTS)  # (4, 3, L), (4, 3)
        exclude = torch.zeros(len(FACTS), len(FACTS), dtype=torch.bool)
        batches = [StepInput(torch.randn(4, 3, 32, 32), torch.tensor(t), exclude[t], tokens, mask)
                   for t in ([0, 1, 2, 3], [3, 2, 0, 0])]
        return model, method, batches

    return make


def forward_of(model):
    """The step's forward: both towers."""
    return lambda x, tokens, mask: (model.embed_images(x), model.embed_facts(tokens, mask))


def task_gradient(model, batch: StepInput) -> dict[str, torch.Tensor]:
    """The task loss's gradient alone (no penalty), by plain autograd."""
    params = trainable(model)
    img, fact = forward_of(model)(batch.x, batch.fact_tokens, batch.fact_mask)
    loss = fact_loss(img, fact, batch.fact_mask, batch.targets, batch.exclude, LossConfig())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize("name", QUADRATIC)
def test_sgd_momentum_sees_the_penalty_gradient_as_the_reference_code(name, setup):
    """penalty: loss with SGD, momentum and weight decay, two steps, against
    g = g_task + 2 lam Omega (theta - theta*) + wd theta; buf = mu buf + g; theta -= lr buf."""
    model, method, batches = setup(name)
    lr, mu, wd = 0.05, 0.9, 5e-3
    omega, anchor = method._get("omega"), method._get("anchor")
    hand = copy.deepcopy(model)
    opt = torch.optim.SGD(list(trainable(model).values()), lr=lr, momentum=mu, weight_decay=wd)
    buf = {n: torch.zeros_like(p) for n, p in trainable(hand).items()}
    method.before_task(model, NO_DATA)  # SI starts its path integral
    for batch in batches:
        g_task = task_gradient(hand, batch)
        with torch.no_grad():
            for n, p in trainable(hand).items():
                g = g_task[n] + 2 * LAM * omega[n] * (p - anchor[n]) + wd * p
                buf[n] = mu * buf[n] + g
                p -= lr * buf[n]
        train_step(model, method, opt, forward_of(model), batch, LossConfig())
    for n, p in trainable(model).items():
        assert torch.allclose(p, trainable(hand)[n], rtol=1e-5, atol=1e-7), n


@pytest.mark.parametrize("name", QUADRATIC)
def test_decoupled_pull_after_adam_is_exact(name, setup):
    """penalty: decoupled: the Adam step of the task loss alone, then
    theta <- theta_adam - lr * 2 lam Omega (theta_adam - theta*), with the optimizer's own lr."""
    model, method, batches = setup(name, penalty="decoupled")
    lr = 0.01
    omega, anchor = method._get("omega"), method._get("anchor")
    plain = copy.deepcopy(model)  # Adam on the task loss alone, from the same parameters each step
    opt = torch.optim.Adam(list(trainable(model).values()), lr=lr)
    plain_opt = torch.optim.Adam(list(trainable(plain).values()), lr=lr)
    method.before_task(model, NO_DATA)
    for batch in batches:
        plain.load_state_dict(model.state_dict())  # in place: plain_opt keeps its moments
        with torch.no_grad():  # the logged value: the penalty at the step's parameters
            expected_penalty = LAM * sum((omega[n] * (p - anchor[n]) ** 2).sum() for n, p in trainable(model).items())
        for p, g in zip(trainable(plain).values(), task_gradient(plain, batch).values()):
            p.grad = g
        plain_opt.step()
        _, penalty = train_step(model, method, opt, forward_of(model), batch, LossConfig())
        assert penalty == pytest.approx(expected_penalty.item(), rel=1e-5)
        for n, p in trainable(model).items():
            theta_adam = trainable(plain)[n].detach()
            expected = theta_adam - (theta_adam - anchor[n]) * omega[n] * (2 * lr * LAM)
            assert torch.equal(p.detach(), expected), n
            assert not torch.equal(p.detach(), theta_adam), n


def test_si_path_integral_with_the_decoupled_pull():
    """SI's second task of test_methods' hand example, decoupled: the path integral uses the task
    gradient (p.grad, nothing subtracted) and the step's whole change, the pull included.

    Loss w^2 / 2, SGD lr 0.5, lam 0.25, from the anchor 2.5 with Omega_1: each step w' = w - 0.5 w,
    then the pull w'' = w' - 0.5 * 2 * 0.25 * Omega_1 * (w' - 2.5).
    """
    model = Scalar(1.0)
    method = create_method(MethodConfig(name="si", lam=0.25, xi=0.1, penalty="decoupled"))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def run(target):
        method.before_task(model, NO_DATA)
        for _ in range(2):
            opt.zero_grad()
            loss = 0.5 * (model.w - target).pow(2).sum()
            penalty = method.penalty(model)
            assert penalty is None or not penalty.requires_grad
            (loss if penalty is None else loss + penalty).backward()
            method.before_step(model)
            opt.step()
            method.after_step(model, 0.5)
        method.after_task(model, NO_DATA)

    run(3.0)  # no importance yet: as with penalty: loss
    omega1 = 2.5 / (1.5**2 + 0.1)
    assert method.state["omega.w"].item() == pytest.approx(omega1)
    run(0.0)
    w, path = 2.5, 0.0
    for _ in range(2):
        g = w
        step = w - 0.5 * g
        new = step - 0.5 * 2 * 0.25 * omega1 * (step - 2.5)
        path -= g * (new - w)
        w = new
    assert model.w.item() == pytest.approx(w) and path > 0
    assert method.state["omega.w"].item() == pytest.approx(omega1 + path / ((w - 2.5) ** 2 + 0.1))


# --- importance_norm ----------------------------------------------------------------------------
def test_normalize_importance_makes_each_towers_mean_one():
    omega = {"image_tower.a": torch.tensor([1.0, 3.0]), "image_tower.b": torch.tensor([[8.0]]),
             "language_tower.c": torch.tensor([0.5, 0.5, 2.0]), "other.d": torch.zeros(3)}
    out = normalize_importance(omega)
    assert list(out) == list(omega)
    assert torch.equal(out["image_tower.a"], torch.tensor([0.25, 0.75])) and out["image_tower.b"].item() == 2.0  # mean 4
    assert torch.equal(out["language_tower.c"], torch.tensor([0.5, 0.5, 2.0]))  # mean 1 already
    assert torch.equal(out["other.d"], torch.zeros(3))  # all zero: left as it is


def tower_means(omega: dict[str, torch.Tensor]) -> dict[str, float]:
    """Numel-weighted mean of Omega per tower."""
    sums: dict[str, list[float]] = {}
    for n, t in omega.items():
        s = sums.setdefault(n.split(".", 1)[0], [0.0, 0])
        s[0] += t.double().sum().item()
        s[1] += t.numel()
    return {tower: total / count for tower, (total, count) in sums.items()}


@pytest.fixture
def task_of():
    """``task_of(model)``: a labeled task of 8 images over FACTS, fit for every method's importance."""

    def make(model, n: int = 8) -> TaskData:
        x = torch.randn(n, 3, 32, 32)
        targets = torch.arange(n) % len(FACTS)
        tokens, mask = model.vocab.encode(FACTS)
        exclude = torch.zeros(len(FACTS), len(FACTS), dtype=torch.bool)
        return TaskData(
            "t", n,
            lambda bs: ((x[s : s + bs], tokens[targets[s : s + bs]], mask[targets[s : s + bs]]) for s in range(0, n, bs)),
            lambda bs: ((x[s : s + bs], targets[s : s + bs], exclude[targets[s : s + bs]]) for s in range(0, n, bs)),
            (tokens, mask), lambda img, fact, t, exc: fact_loss(img, fact, mask, t, exc, LossConfig()),
        )

    return make


@pytest.mark.parametrize("name", ["mas", "lmas", "ewc", "online_ewc", "l2"])
def test_importance_norm_mean_gives_each_tower_mean_one(name, tiny_fact_model, task_of):
    model = tiny_fact_model(WORDS, seed=1)
    task = task_of(model)
    raw = create_method(MethodConfig(name=name, importance_batch_size=4))
    raw.after_task(model, task)
    normed = create_method(MethodConfig(name=name, importance_batch_size=4, importance_norm="mean"))
    normed.after_task(model, task)
    means = tower_means(normed._get("omega"))
    assert set(means) == {"image_tower", "language_tower"}
    assert all(m == pytest.approx(1.0, rel=1e-5) for m in means.values()), means
    raw_means = tower_means(raw._get("omega"))
    for n, t in normed._get("omega").items():  # the same Omega up to one factor per tower
        assert torch.allclose(t * raw_means[n.split(".", 1)[0]], raw._get("omega")[n], rtol=1e-5, atol=1e-12), n
    normed.after_task(model, task)  # normalised before accumulating: the sum of two tasks has mean 2
    expect = {"l2": 1.0, "online_ewc": 0.9 + 1.0}.get(name, 2.0)  # l2 stays 1; online EWC decays by gamma
    assert all(m == pytest.approx(expect, rel=1e-5) for m in tower_means(normed._get("omega")).values())


# --- resume ----------------------------------------------------------------------------------
def test_resume_with_the_new_options_is_bit_identical(monkeypatch, tmp_path, tiny_world, tiny_config):
    """SI (mid-task state) with the decoupled pull, normalised importance: a run killed after a
    mid-task checkpoint and resumed ends as the uninterrupted one. Nothing new is stored."""
    data = yaml.safe_load(tiny_config.read_text())
    data["train"].update(epochs=2, batch_size=8, checkpoint_every=2)
    data["method"].update(name="si", penalty="decoupled", importance_norm="mean")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    train(tiny_world, cfg, tmp_path / "reference", device="cpu")
    crash_on_call(monkeypatch, factlearn.run.RunDir, "save_partial", 3, after=True)  # step 2 of B2
    with pytest.raises(Crash):
        train(tiny_world, cfg, tmp_path / "run", device="cpu")
    monkeypatch.undo()
    train(tiny_world, cfg, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(tmp_path / "reference", tmp_path / "run")
