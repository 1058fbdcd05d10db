"""The continual-learning methods besides MAS: each against a hand computation or a slow reference."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from factlearn.cli import METHOD_NAMES, main
from factlearn.config import LossConfig, MethodConfig, load_config
from factlearn.continual import METHODS, StepBatch, create_method
from factlearn.continual.base import TaskData, trainable
from factlearn.continual.ewc import fisher_diagonal
from factlearn.continual.lmas import lmas_importance
from factlearn.continual.mas import mas_importance
from factlearn.errors import UserError
from factlearn.facts import Fact
from factlearn.losses import fact_loss

FACTS = [Fact("star"), Fact("star", "red"), Fact("circle", "left of", "star"), Fact("circle", "dark blue")]


@pytest.fixture
def setup(tiny_fact_model):
    """``setup(n=9, seed=0)``: a tiny FactModel and a labeled task of n images over FACTS (targets i % 4)."""

    def make(n: int = 9, seed: int = 0):
        model = tiny_fact_model(["star", "red", "circle", "left", "of", "dark", "blue"], seed)
        vocab = model.vocab
        x = torch.randn(n, 3, 32, 32)
        targets = torch.arange(n) % len(FACTS)
        fact_tokens, fact_mask = vocab.encode(FACTS)  # (4, 3, L), (4, 3)
        exclude = torch.zeros(len(FACTS), len(FACTS), dtype=torch.bool)
        exclude[1, 0] = exclude[0, 1] = True  # <star> is also true of a <star, red> image
        loss_cfg = LossConfig()

        def batches(bs):
            for s in range(0, n, bs):
                t = targets[s : s + bs]
                yield x[s : s + bs], fact_tokens[t], fact_mask[t]

        def labeled(bs):
            for s in range(0, n, bs):
                t = targets[s : s + bs]
                yield x[s : s + bs], t, exclude[t]

        def loss(img, fact, t, exc):
            return fact_loss(img, fact, fact_mask, t, exc, loss_cfg)

        task = TaskData("t", n, batches, labeled, (fact_tokens, fact_mask), loss)
        return model, task, (x, targets, exclude, fact_tokens, fact_mask, loss)

    return make


def perturb(model, scale=0.01):
    """Move every parameter a little, as training would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def train_steps(model, method, task, data, steps=2, lr=1e-2):
    """The training loop's hook order on a few batches of ``task``."""
    x, targets, exclude, fact_tokens, fact_mask, loss_fn = data
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    method.before_task(model, task)
    model.train()
    for i in range(steps):
        sel = torch.arange(i * 4, i * 4 + 4) % len(x)
        img, fact = model.embed_images(x[sel]), model.embed_facts(fact_tokens, fact_mask)
        loss = loss_fn(img, fact, targets[sel], exclude[targets[sel]])
        penalty = method.penalty(model, StepBatch(x[sel], fact_tokens, fact_mask, img, fact))
        total = loss if penalty is None else loss + penalty
        opt.zero_grad(set_to_none=True)
        total.backward()
        method.before_step(model)
        opt.step()
        method.after_step(model, lr)
    method.after_task(model, task)


# --- quadratic penalties -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["l2", "ewc", "online_ewc", "lmas"])
def test_penalty_gradient_is_2_lambda_omega_delta(name, setup):
    model, task, _ = setup()
    method = create_method(MethodConfig(name=name, lam=3.0, importance_batch_size=4))
    method.after_task(model, task)
    perturb(model)
    model.zero_grad()
    method.penalty(model).backward()
    omega, anchor = method._get("omega"), method._get("anchor")
    assert set(omega) == set(trainable(model))
    for n, p in trainable(model).items():
        expected = 2 * 3.0 * omega[n] * (p.detach() - anchor[n])
        assert torch.allclose(p.grad, expected, atol=1e-7, rtol=1e-5), n


def test_l2_importance_is_one_and_stays_one(setup):
    model, task, _ = setup()
    method = create_method(MethodConfig(name="l2"))
    method.after_task(model, task)
    method.after_task(model, task)
    assert all(torch.equal(o, torch.ones_like(o)) for o in method._get("omega").values())


def reference_fisher(model, data):
    """Independent reference: one sample at a time, plain autograd, eval mode."""
    x, targets, exclude, fact_tokens, fact_mask, loss_fn = data
    model.eval()
    params = trainable(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        model.zero_grad()
        t = targets[i : i + 1]
        loss_fn(model.embed_images(x[i : i + 1]), model.embed_facts(fact_tokens, fact_mask), t, exclude[t]).backward()
        for n, p in params.items():
            if p.grad is not None:
                total[n] += p.grad.pow(2)
    return {n: t / len(x) for n, t in total.items()}


@pytest.mark.parametrize("batch_size", [4, 9])  # short last batch, exact fit
def test_fisher_equals_per_sample_reference(batch_size, setup):
    model, task, data = setup()
    fast = fisher_diagonal(model, task, batch_size)
    ref = reference_fisher(model, data)
    assert set(fast) == set(ref)
    for n in ref:
        scale = ref[n].abs().max().clamp(min=1e-12)
        assert ((fast[n] - ref[n]).abs().max() / scale) < 1e-4, n
    assert any(v.sum() > 0 for v in fast.values())


def test_online_ewc_decays_the_running_fisher(setup):
    model, task, _ = setup()
    method = create_method(MethodConfig(name="online_ewc", gamma=0.25, importance_batch_size=9))
    method.after_task(model, task)
    first = {k: v.clone() for k, v in method._get("omega").items()}
    method.after_task(model, task)  # same model and data: same Fisher again
    for n, v in method._get("omega").items():
        assert torch.allclose(v, 1.25 * first[n], rtol=1e-5, atol=1e-12)


IMPORTANCE = {"mas": mas_importance, "lmas": lmas_importance, "ewc": fisher_diagonal}


@pytest.mark.parametrize("name", sorted(IMPORTANCE))
def test_importance_uses_eval_mode_and_restores_train_mode(name, setup):
    """Computed in train mode, batch norm would normalise with batch statistics (another value) and
    update its running statistics: either assertion below would fail."""
    model, task, (x, *_rest) = setup()
    probe = copy.deepcopy(model)
    with torch.no_grad():  # the two modes do differ on this model
        assert not torch.allclose(probe.train().embed_images(x[:4]), probe.eval().embed_images(x[:4]))
    importance = IMPORTANCE[name]
    expected = importance(model.eval(), task, 4)
    model.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    got = importance(model, task, 4)
    assert model.training
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers()), "running statistics changed"
    assert set(got) == set(expected) and all(torch.equal(got[n], expected[n]) for n in expected), "not eval mode"


# --- SI ------------------------------------------------------------------------------------------
class Scalar(nn.Module):
    """One parameter ``w``: small enough to follow SI by hand."""

    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))


def test_si_importance_on_a_hand_computed_two_step_example():
    """Loss (w - 3)^2 / 2, SGD lr 0.5 from w = 1: steps to 2 then 2.5.

    Step 1: g = -2, dw = 1 -> w_int = 2. Step 2: g = -1, dw = 0.5 -> w_int = 2.5.
    Delta = 1.5, so Omega = 2.5 / (1.5^2 + xi) with xi = 0.1.
    """
    model = Scalar(1.0)
    method = create_method(MethodConfig(name="si", lam=1.0, xi=0.1))
    task = TaskData("t", 1, lambda bs: iter(()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def run(target):
        method.before_task(model, task)
        for _ in range(2):
            loss = 0.5 * (model.w - target).pow(2).sum()
            penalty = method.penalty(model)
            opt.zero_grad()
            (loss if penalty is None else loss + penalty).backward()
            method.before_step(model)
            opt.step()
            method.after_step(model, 0.5)
        method.after_task(model, task)

    run(3.0)
    omega1 = 2.5 / (1.5**2 + 0.1)
    assert model.w.item() == pytest.approx(2.5)
    assert method.state["omega.w"].item() == pytest.approx(omega1)
    assert method.state["anchor.w"].item() == pytest.approx(2.5)

    # Task 2, loss w^2 / 2 with the penalty omega1 * (w - 2.5)^2: the path integral uses the task
    # gradient only. Step 1 from 2.5: g_task = 2.5, penalty grad 0 -> w = 1.25.
    # Step 2: g_task = 1.25, penalty grad 2 * omega1 * (1.25 - 2.5) -> w = 1.25 - 0.5 * (1.25 - 2.5 * omega1).
    run(0.0)
    w2 = 1.25 - 0.5 * (1.25 - 2.5 * omega1)
    path = -2.5 * (1.25 - 2.5) - 1.25 * (w2 - 1.25)
    assert model.w.item() == pytest.approx(w2)
    assert method.state["omega.w"].item() == pytest.approx(omega1 + path / ((w2 - 2.5) ** 2 + 0.1))


# --- l-MAS ---------------------------------------------------------------------------------------
def layer_io(model, module, run):
    """The inputs and outputs of ``module`` while ``run()`` evaluates ``model`` in eval mode."""
    seen = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append((a[0].detach(), out.detach())))
    model.eval()
    with torch.no_grad():
        run()
    handle.remove()
    return torch.cat([a for a, _ in seen]), torch.cat([o for _, o in seen])


@pytest.mark.parametrize("layer", ["image_tower.p_head", "image_tower.s_branch.0", "language_tower.slots.1.2"])
def test_lmas_linear_layer_is_hebbian(layer, setup):
    model, task, (x, targets, _, fact_tokens, fact_mask, _) = setup()
    omega = lmas_importance(model, task, batch_size=4)
    module = dict(model.named_modules())[layer]
    if layer.startswith("image"):
        xin, y = layer_io(model, module, lambda: model.embed_images(x))
    else:
        xin, y = layer_io(model, module, lambda: model.embed_facts(fact_tokens[targets], fact_mask[targets]))
    # explicit mean over samples of |x_j * y_i|
    expected_w = torch.stack([(y[n][:, None] * xin[n][None, :]).abs() for n in range(len(x))]).mean(0)
    assert torch.allclose(omega[f"{layer}.weight"], expected_w, rtol=1e-5, atol=1e-7)
    assert torch.allclose(omega[f"{layer}.bias"], y.abs().mean(0), rtol=1e-5, atol=1e-7)


def test_lmas_conv_layer_is_the_local_per_sample_gradient(setup):
    model, task, (x, *_rest) = setup()
    omega = lmas_importance(model, task, batch_size=4, towers=("image_tower",))
    assert all(n.startswith("image_tower.") for n in omega)
    name = "image_tower.backbone.encoder.stages.0.layers.0.layer.0.convolution"
    conv = dict(model.named_modules())[name]
    xin, _ = layer_io(model, conv, lambda: model.embed_images(x))
    ref = torch.zeros_like(conv.weight)
    for n in range(len(x)):
        w = conv.weight.detach().clone().requires_grad_(True)
        out = torch.nn.functional.conv2d(xin[n : n + 1], w, None, conv.stride, conv.padding)
        (g,) = torch.autograd.grad(0.5 * out.pow(2).sum(), w)
        ref += g.abs()
    assert torch.allclose(omega[f"{name}.weight"], ref / len(x), rtol=1e-4, atol=1e-6)


# --- LwF -----------------------------------------------------------------------------------------
def test_lwf_penalty_is_zero_after_the_task_and_grows_when_parameters_move(setup):
    model, task, (x, _, _, fact_tokens, fact_mask, _) = setup()
    method = create_method(MethodConfig(name="lwf", lam=2.0))
    batch = StepBatch(x[:4], fact_tokens, fact_mask)
    assert method.penalty(model, batch) is None  # nothing to distil before the first task ends
    method.after_task(model, task)
    model.eval()  # the old model is evaluated in eval mode; so is the current one here
    assert method.penalty(model, batch).item() == 0.0
    perturb(model, 0.05)
    with_emb = StepBatch(x[:4], fact_tokens, fact_mask, model.embed_images(x[:4]), model.embed_facts(fact_tokens, fact_mask))
    moved = method.penalty(model, batch)
    assert moved.item() > 0
    assert torch.allclose(method.penalty(model, with_emb), moved)
    model.zero_grad()
    moved.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --- options ---------------------------------------------------------------------------------
def test_every_option_belongs_to_a_method_and_is_documented_there():
    fields = {f.name for f in dataclasses.fields(MethodConfig)} - {"name"}
    assert set().union(*(m.options for m in METHODS.values())) == fields
    for name, cls in METHODS.items():
        assert set(cls.options) <= fields, name
        assert all(option in cls.__doc__ for option in cls.options), name


@pytest.mark.parametrize("name, option, value", [
    ("online_ewc", "gamma", 1.5), ("si", "xi", 0.0), ("mas", "importance", "fast"), ("ewc", "alpha", 2.0),
    ("ewc", "importance_data", "images"), ("l2", "importance_data", "images"),
    ("mas", "penalty", "adamw"), ("l2", "importance_norm", "max"), ("mas", "importance_output", "unit"),
    ("mas", "importance_directions", 0), ("lmas", "importance_output", "normalized"),
    ("ewc", "importance_directions", 8), ("si", "importance_output", "normalized"),
])
def test_create_method_checks_the_config_in_one_line_naming_the_option(name, option, value):
    with pytest.raises(UserError, match=f"method.{option}") as err:
        create_method(MethodConfig(name=name, **{option: value}))
    assert "\n" not in str(err.value)


# --- every method --------------------------------------------------------------------------------
def test_method_names_match_the_cli():
    assert set(METHODS) == set(METHOD_NAMES)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_round_trip_is_exact(name, setup):
    model, task, data = setup(n=8)
    method = create_method(MethodConfig(name=name, importance_batch_size=4))
    train_steps(model, method, task, data)
    train_steps(model, method, task, data)
    restored = create_method(MethodConfig(name=name))
    restored.load_state_dict(method.state_dict())
    assert restored.tasks_seen == method.tasks_seen == 2
    assert set(restored.state) == set(method.state)
    assert all(torch.equal(restored.state[k], method.state[k]) for k in method.state)
    assert all(k.split(".", 1)[0] in {"omega", "anchor", "old"} for k in method.state)
    perturb(model)
    x, _, _, fact_tokens, fact_mask, _ = data
    model.eval()
    batch = StepBatch(x[:4], fact_tokens, fact_mask)
    a, b = method.penalty(model, batch), restored.penalty(model, batch)
    assert (a is None and b is None) or torch.equal(a, b)


# --- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories trained in this module, by method and options (each trained once)."""
    return {"root": tmp_path_factory.mktemp("methods")}


def train_run(runs, tiny_world, tiny_config, name, **method_kw):
    """A run of method ``name`` on the tiny world, trained once per module and reused."""
    from factlearn.training import train

    key = name + "".join(f"-{k}" for k in method_kw)
    if key not in runs:
        # a capped importance sample keeps every run to a few seconds on a shared CPU
        method_kw = {"max_importance_samples": 16, **method_kw}
        cfg = load_config(tiny_config, {"method.name": name, **{f"method.{k}": v for k, v in method_kw.items()}})
        out = runs["root"] / key
        train(tiny_world, cfg, out, device="cpu")
        runs[key] = out
    return runs[key]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_end_to_end(runs, tiny_world, tiny_config, name):
    out = train_run(runs, tiny_world, tiny_config, name)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["method"] == name
    assert len(doc["matrix"]["top1"]) == len(doc["tasks"]) == 2  # one row per task, joint included
    assert all(len(row) == 2 for row in doc["matrix"]["top1"])


@pytest.mark.parametrize("name, source", [("mas", "images"), ("lmas", ".")])  # a folder of images, a data directory
def test_train_with_importance_data(runs, tiny_world, tiny_config, name, source):
    out = train_run(runs, tiny_world, tiny_config, name, importance_data=str(tiny_world / source))
    assert (out / "checkpoints" / "B2" / "method.safetensors").is_file()


def test_importance_data_errors(tmp_path, tiny_world, tiny_config):
    from factlearn.training import train

    cfg = load_config(tiny_config, {"method.name": "ewc", "method.importance_data": str(tiny_world)})
    with pytest.raises(UserError, match="importance_data"):
        train(tiny_world, cfg, tmp_path / "a", device="cpu")
    cfg = load_config(tiny_config, {"method.name": "lmas", "method.importance_data": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="not found"):
        train(tiny_world, cfg, tmp_path / "b", device="cpu")


def invoke(*args):
    """Run the CLI in-process."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_importance_command_adds_image_importance_only(runs, tiny_world, tiny_config, tmp_path):
    from factlearn.run import read_tensors

    run = tmp_path / "mas"
    shutil.copytree(train_run(runs, tiny_world, tiny_config, "mas"), run)
    before = read_tensors(run / "checkpoints" / "B2" / "method.safetensors")
    r = invoke("importance", run, "--images", tiny_world / "images", "--device", "cpu")
    assert r.exit_code == 0, r.output
    after = read_tensors(run / "checkpoints" / "B2" / "method.safetensors")
    assert set(after) == set(before)
    for k in before:
        if k.startswith("omega.image_tower."):
            assert (after[k] >= before[k]).all() and not torch.equal(after[k], before[k]), k
        else:  # anchors, the language tower's importance, tasks_seen
            assert torch.equal(after[k], before[k]), k
    state = json.loads((run / "checkpoints" / "B2" / "state.json").read_text())
    # capped by the run's method.max_importance_samples
    assert state["importance_added"][0]["images"] == min(16, len(list((tiny_world / "images").iterdir())))

    r = invoke("importance", run, "--summary")
    assert r.exit_code == 0, r.output
    assert "image_tower.p_head.weight" in r.output and "mean" in r.output

    # a process holding the run (training into it) is waited for, not raced: refused, nothing written
    from factlearn.run import RunDir

    with RunDir(run).lock():
        r = invoke("importance", run, "--images", tiny_world / "images", "--device", "cpu")
    assert r.exit_code == 2 and "in use by another factlearn process" in r.output, r.output
    assert json.loads((run / "checkpoints" / "B2" / "state.json").read_text()) == state


def test_task_importance_stats_recovers_each_tasks_own_importance(runs, tiny_world, tiny_config):
    """Per task: the checkpoint's accumulated Omega taken apart with the run's rule (here blend)."""
    from factlearn.continual import concentration as C
    from factlearn.importance import task_importance_stats
    from factlearn.run import read_tensors

    run = train_run(runs, tiny_world, tiny_config, "mas", accumulate="blend", alpha=0.25)
    total = {t: C.flatten({k[6:]: v for k, v in read_tensors(run / "checkpoints" / t / "method.safetensors").items()
                           if k.startswith("omega.")}, "image_tower.") for t in ("B1", "B2")}
    own_b2 = (total["B2"] - 0.25 * total["B1"]) / 0.75
    rows = task_importance_stats(run, fractions=(0.1,))
    assert [r["task"] for r in rows] == ["B1", "B2"] and "overlap_first" not in rows[0]
    assert rows[0]["top_share"][0.1] == pytest.approx(C.top_share(total["B1"], 0.1))
    assert rows[1]["top_share"][0.1] == pytest.approx(C.top_share(own_b2, 0.1))
    assert rows[1]["overlap_first"][0.1] == pytest.approx(C.top_overlap(total["B1"], own_b2, 0.1))
    assert rows[1]["rank_corr_first"] == pytest.approx(C.rank_correlation(total["B1"], own_b2))
    assert not math.isclose(rows[1]["top_share"][0.1], C.top_share(total["B2"], 0.1), rel_tol=1e-6)
    with pytest.raises(UserError, match="no importance"):
        task_importance_stats(train_run(runs, tiny_world, tiny_config, "finetune"))


def test_importance_stats_script(runs, tiny_world, tiny_config, tmp_path, capsys):
    """scripts/importance_stats.py: runs grouped by folder name, a JSON of every run; a run without
    importance is one line and exit 2."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import importance_stats

    mas = [tmp_path / "semantic4" / f"seed{k}" / "mas" for k in (0, 1)] + [tmp_path / "random4" / "seed0" / "mas"]
    for run in mas:
        shutil.copytree(train_run(runs, tiny_world, tiny_config, "mas"), run)
    assert importance_stats.group_names(mas[:2]) == ["mas", "mas"]
    assert importance_stats.main([*map(str, mas), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "| semantic4/mas | B2 | 2 |" in out and "| random4/mas | B2 | 1 |" in out  # seeds grouped
    assert set(json.loads((tmp_path / "s.json").read_text())["runs"]) == set(map(str, mas))
    # --between: pairs of runs of two groups; a run against its copy agrees entirely
    assert importance_stats.main([str(mas[0]), str(mas[2]), "--between"]) == 0
    assert "| semantic4/mas vs random4/mas | B1 | 1 | 1.00 | 1.00 | 1.00 |" in capsys.readouterr().out
    assert importance_stats.main([*map(str, mas), "--between"]) == 2  # 2 runs of one group, 1 of the other
    assert "give them in pairs" in capsys.readouterr().err
    assert importance_stats.main([str(train_run(runs, tiny_world, tiny_config, "finetune"))]) == 2
    assert "keeps no importance" in capsys.readouterr().err


def test_importance_command_errors(runs, tiny_world, tiny_config):
    run = train_run(runs, tiny_world, tiny_config, "finetune")
    r = invoke("importance", run, "--images", tiny_world / "images")
    assert r.exit_code == 2 and "mas and lmas" in r.output
    r = invoke("importance", run, "--summary")
    assert r.exit_code == 2 and "no importance" in r.output
    r = invoke("importance", run)
    assert r.exit_code == 2 and "--summary" in r.output
