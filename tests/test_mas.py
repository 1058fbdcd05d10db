"""MAS (factlearn.continual.mas) against independent slow references. The per-sample engine it
uses is tested on its own in test_per_sample.py; eval mode in test_methods.py (all importances)."""

import pytest
import torch

from factlearn.config import MethodConfig
from factlearn.continual import create_method
from factlearn.continual.base import TaskData, trainable
from factlearn.continual.mas import mas_importance, random_directions
from factlearn.facts import Fact
from factlearn.model import normalize_slots

FACTS = [Fact("star"), Fact("star", "red"), Fact("circle", "left of", "star"), Fact("circle", "dark blue")]


@pytest.fixture
def setup(tiny_fact_model):
    """``setup(n=11, seed=0, **model_kw)``: a tiny FactModel with non-trivial batch-norm statistics
    and an unlabeled task of n samples."""

    def make(n: int = 11, seed: int = 0, **model_kw):
        model = tiny_fact_model(["star", "red", "circle", "left", "of", "dark", "blue"], seed, **model_kw)
        x = torch.randn(n, 3, 32, 32)
        tokens, mask = model.vocab.encode([FACTS[i % len(FACTS)] for i in range(n)])

        def batches(bs):
            for s in range(0, n, bs):
                yield x[s : s + bs], tokens[s : s + bs], mask[s : s + bs]

        return model, TaskData("t", n, batches), (x, tokens, mask)

    return make


def reference_importance(model, data):
    """Independent reference: one sample at a time, plain autograd, eval mode."""
    x, tokens, mask = data
    model.eval()
    params = trainable(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        model.zero_grad()
        out_img = model.embed_images(x[i : i + 1])
        out_txt = model.embed_facts(tokens[i : i + 1], mask[i : i + 1])
        (out_img.pow(2).sum() + out_txt.pow(2).sum()).backward()  # squared L2 norm of F
        for n, p in params.items():
            if p.grad is not None:
                total[n] += p.grad.abs()
    return {n: t / len(x) for n, t in total.items()}


@pytest.mark.parametrize("batch_size", [4, 11, 32])  # short last batch, exact fit, one batch
def test_exact_importance_equals_per_sample_reference(batch_size, setup):
    model, task, data = setup()
    fast = mas_importance(model, task, batch_size=batch_size)
    ref = reference_importance(model, data)
    assert set(fast) == set(ref)
    for n in ref:
        scale = ref[n].abs().max().clamp(min=1e-12)
        assert ((fast[n] - ref[n]).abs().max() / scale) < 1e-5, n
    assert any(v.sum() > 0 for v in fast.values())


def reference_normalized_importance(model, data, k):
    """Independent reference of ``importance_output: normalized``: one sample and one direction at a
    time, plain autograd, eval mode: mean_n 1/K sum_v |d (v . F_hat(x_n)) / d theta|."""
    x, tokens, mask = data
    model.eval()
    params = trainable(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    dim = 3 * model.cfg.slot_dim
    for i in range(len(x)):
        for v in random_directions([i], k, dim)[0]:  # (dim,) each; the same directions for both towers
            model.zero_grad()
            img = normalize_slots(model.embed_images(x[i : i + 1]))[0]  # (3*d,)
            txt = normalize_slots(model.embed_facts(tokens[i : i + 1], mask[i : i + 1]))[0]
            (v @ img + v @ txt).backward()  # the towers share no parameter: each gets its own gradient
            for n, p in params.items():
                if p.grad is not None:
                    total[n] += p.grad.abs()
    return {n: t / (len(x) * k) for n, t in total.items()}


@pytest.mark.parametrize("batch_size", [4, 11])  # the directions do not depend on the batches
def test_normalized_output_importance_equals_per_sample_reference(batch_size, setup):
    model, task, data = setup()
    fast = mas_importance(model, task, batch_size=batch_size, output="normalized", directions=3)
    ref = reference_normalized_importance(model, data, 3)
    assert set(fast) == set(ref)
    for n in ref:
        scale = ref[n].abs().max().clamp(min=1e-12)
        assert ((fast[n] - ref[n]).abs().max() / scale) < 1e-5, n
    assert any(v.sum() > 0 for v in fast.values())
    raw = mas_importance(model, task, batch_size=batch_size)
    assert not all(torch.allclose(raw[n], fast[n]) for n in raw)


def test_random_directions_are_unit_seeded_and_per_sample():
    v = random_directions([0, 5, 2], 4, 12)
    assert v.shape == (3, 4, 12) and v.dtype == torch.float32
    assert torch.allclose(v.norm(dim=-1), torch.ones(3, 4))
    assert torch.equal(random_directions([2], 4, 12)[0], v[2])  # a sample's own, whatever batch it is in
    assert not torch.allclose(v[0], v[1])


def test_normalized_batch_approximation_is_a_lower_bound(setup):
    model, task, _ = setup()
    exact = mas_importance(model, task, batch_size=4, output="normalized", directions=2)
    approx = mas_importance(model, task, batch_size=4, exact=False, output="normalized", directions=2)
    assert all((approx[n] <= exact[n] + 1e-6).all() for n in exact)
    assert any((approx[n] < exact[n] - 1e-6).any() for n in exact)


def test_one_tower_only(setup):
    model, task, _ = setup(n=5)
    both = mas_importance(model, task, batch_size=4)
    image = mas_importance(model, task, batch_size=4, towers=("image_tower",))
    assert set(image) == {n for n in both if n.startswith("image_tower.")}
    assert all(torch.equal(image[n], both[n]) for n in image)


def test_batch_approximation_is_a_lower_bound(setup):
    model, task, _ = setup()
    exact = mas_importance(model, task, batch_size=4)
    approx = mas_importance(model, task, batch_size=4, exact=False)
    assert all((approx[n] <= exact[n] + 1e-6).all() for n in exact)
    assert any((approx[n] < exact[n] - 1e-6).any() for n in exact)


def anchored_and_moved(setup, lam: float = 3.0):
    """A tiny model, MAS (lam) anchored after one task, then every parameter moved a little."""
    model, task, _ = setup()
    method = create_method(MethodConfig(name="mas", lam=lam))
    method.after_task(model, task)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model, method


def test_penalty_gradient_is_2_lambda_omega_delta(setup):
    model, method = anchored_and_moved(setup)
    model.zero_grad()
    method.penalty(model).backward()
    omega, anchor = method._get("omega"), method._get("anchor")
    for n, p in trainable(model).items():
        expected = 2 * 3.0 * omega[n] * (p.detach() - anchor[n])
        assert torch.allclose(p.grad, expected, atol=1e-7, rtol=1e-5), n


def test_penalty_value_is_lambda_sum_omega_delta_squared(setup):
    model, method = anchored_and_moved(setup)
    omega, anchor = method._get("omega"), method._get("anchor")
    expected = 3.0 * sum((omega[n].double() * (p.detach().double() - anchor[n]) ** 2).sum() for n, p in trainable(model).items())
    assert torch.allclose(method.penalty(model).double(), expected, rtol=1e-5, atol=0)


def test_zero_importance_parameter_moves_as_in_finetuning(setup):
    model, task, _ = setup()
    method = create_method(MethodConfig(name="mas", lam=100.0))
    method.after_task(model, task)
    name = "image_tower.p_head.bias"
    method.state[f"omega.{name}"] = torch.zeros_like(method.state[f"omega.{name}"])
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        p.add_(1.0)
    model.zero_grad()
    method.penalty(model).backward()
    assert torch.all(p.grad == 0)


def test_accumulation_sum_and_blend_and_state_round_trip(setup):
    model, task, _ = setup()
    for mode, expect in (("sum", 2.0), ("blend", 1.0)):
        method = create_method(MethodConfig(name="mas", accumulate=mode, alpha=0.25))
        method.after_task(model, task)
        first = {k: v.clone() for k, v in method._get("omega").items()}
        method.after_task(model, task)  # same model and data: same new importance
        for n, v in method._get("omega").items():
            assert torch.allclose(v, expect * first[n], rtol=1e-5, atol=1e-9)
        restored = create_method(MethodConfig(name="mas"))
        restored.load_state_dict(method.state_dict())
        assert restored.tasks_seen == 2
        assert set(restored.state) == set(method.state)
        assert all(torch.equal(restored.state[k], method.state[k]) for k in method.state)


# --- controls (method.importance_control) ------------------------------------------------------
def test_shuffled_control_keeps_each_tensors_values_and_moves_them(setup):
    model, task, _ = setup()
    plain = create_method(MethodConfig(name="mas", importance_batch_size=4))
    shuffled = create_method(MethodConfig(name="mas", importance_batch_size=4, importance_control="shuffled"))
    plain.after_task(model, task)
    shuffled.after_task(model, task)
    a, b = plain._get("omega"), shuffled._get("omega")
    assert set(a) == set(b)
    moved = 0
    for n in a:
        assert b[n].shape == a[n].shape
        assert torch.equal(a[n].reshape(-1).sort().values, b[n].reshape(-1).sort().values), n  # the same multiset
        moved += not torch.equal(a[n], b[n])
    varied = sum(a[n].unique().numel() > 1 for n in a)
    assert moved >= varied - 1 > 0  # positions change (a tensor of a few values may land where it was)
    # seeded: the same permutation again, whatever the order of the tensors
    again = create_method(MethodConfig(name="mas", importance_batch_size=4, importance_control="shuffled"))
    again.after_task(model, task)
    assert all(torch.equal(again._get("omega")[n], b[n]) for n in b)


def test_noise_images_have_the_images_shape_and_do_not_depend_on_the_batches(setup):
    from factlearn.continual.unlabeled import noise_images

    _, task, (x, tokens, mask) = setup(n=11)
    noisy = noise_images(task, 5)
    batches = list(noisy.batches(4))
    assert [b[0].shape for b in batches] == [x[s : s + 4].shape for s in range(0, 11, 4)]
    pixels = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), tokens) and torch.equal(torch.cat([b[2] for b in batches]), mask)
    assert not torch.allclose(pixels, x)
    assert torch.equal(torch.cat([b[0] for b in noise_images(task, 5).batches(11)]), pixels)
    assert not torch.equal(torch.cat([b[0] for b in noise_images(task, 6).batches(11)]), pixels)
    # uniform pixels 0..255 through the model's normalisation: about half of them above the mean
    from factlearn.data.images import MEAN, STD

    unit = pixels * STD + MEAN
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5 and abs(unit.mean().item() - 0.5) < 0.02
    assert noisy.num_samples == task.num_samples and noisy.labeled is None


def test_noise_control_changes_the_image_towers_importance_only(setup):
    model, task, _ = setup()
    plain = create_method(MethodConfig(name="mas", importance_batch_size=4))
    noise = create_method(MethodConfig(name="mas", importance_batch_size=4, importance_control="noise"))
    a, b = plain.importance(model, task), noise.importance(model, task)
    assert set(a) == set(b)
    image = [n for n in a if n.startswith("image_tower.")]
    language = [n for n in a if n.startswith("language_tower.")]
    assert image and language
    assert all(torch.equal(a[n], b[n]) for n in language)  # the same facts
    assert not all(torch.allclose(a[n], b[n]) for n in image)
    assert any(b[n].sum() > 0 for n in image)


def test_controls_are_mas_only():
    from factlearn.errors import UserError

    for name in ("l2", "ewc", "lmas", "si", "finetune"):
        with pytest.raises(UserError, match="method.importance_control is for mas"):
            create_method(MethodConfig(name=name, importance_control="shuffled"))
    with pytest.raises(UserError, match="method.importance_control"):
        create_method(MethodConfig(name="mas", importance_control="random"))
