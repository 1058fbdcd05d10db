"""The per-sample |gradient| engine (factlearn.continual.per_sample) on its own, against a slow
batch-size-1 autograd reference: every layer rule, the vmap fallback, chunking, real towers."""

import pytest
import torch
from torch import nn

from factlearn.config import ModelConfig
from factlearn.continual import per_sample
from factlearn.continual.per_sample import fast_plan, per_sample_abs_grad_sum
from factlearn.facts import Fact
from factlearn.model import Vocabulary, create_model

WORDS = ["star", "red", "circle", "left", "of", "dark", "blue"]
FACTS = [Fact("star"), Fact("star", "red"), Fact("circle", "left of", "star"), Fact("circle", "dark blue")]


def reference(module: nn.Module, inputs: tuple, objective=None, aux: tuple = ()) -> dict[str, torch.Tensor]:
    """One sample at a time, plain autograd: sum_n |d s_n / d theta|, s_n = ||module(x_n)||^2 or
    ``objective(module(x_n), *aux_n)``."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(inputs[0].shape[0]):
        y = module(*(x[i : i + 1] for x in inputs))
        out = y.pow(2).sum() if objective is None else objective(y, *(a[i : i + 1] for a in aux))
        for (n, p), g in zip(params.items(), torch.autograd.grad(out, list(params.values()), allow_unused=True)):
            if g is not None:
                total[n] += g.abs()
    return total


def assert_close(fast: dict, ref: dict, tol: float = 1e-5) -> None:
    """Relative to each parameter's largest importance; a parameter whose true gradient is zero (a
    ViT key bias: softmax ignores it) is compared at the rounding level of the whole module."""
    assert set(fast) == set(ref)
    floor = 1e-6 * max(v.abs().max() for v in ref.values())
    for n in ref:
        scale = ref[n].abs().max().clamp(min=floor)
        assert ((fast[n] - ref[n]).abs().max() / scale) < tol, n


def eval_towers(cfg: ModelConfig, n: int):
    """A FactModel in eval mode with batch-norm statistics away from their init (so eval mode
    differs from train mode), and n images and facts to feed its towers."""
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    model = create_model(cfg, vocab)
    s = cfg.image_size
    model.train()
    model.embed_images(torch.randn(16, 3, s, s) * 2 + 1)
    tokens, mask = vocab.encode([FACTS[i % len(FACTS)] for i in range(n)])
    return model.eval(), (torch.randn(n, 3, s, s),), (tokens, mask)


def trainable_names(module: nn.Module) -> set[str]:
    """Names of the parameters that get importance."""
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_default_model_towers_are_exact_without_fallback():
    model, images, facts = eval_towers(ModelConfig(), n=6)
    for tower, inputs in ((model.image_tower, images), (model.language_tower, facts)):
        assert fast_plan(tower, trainable_names(tower))[1] == []  # no parameter left to vmap
        assert_close(per_sample_abs_grad_sum(tower, inputs), reference(tower, inputs))


def test_vit_image_tower_is_exact_with_fallback_for_its_own_parameters():
    cfg = ModelConfig(
        backbone="vit", image_size=32, slot_dim=8, word_dim=8, text_hidden=16,
        backbone_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 32, "patch_size": 8},
    )
    model, images, _ = eval_towers(cfg, n=5)
    tower = model.image_tower
    rest = fast_plan(tower, trainable_names(tower))[1]
    assert rest == ["backbone.embeddings.cls_token", "backbone.embeddings.position_embeddings"]
    assert_close(per_sample_abs_grad_sum(tower, images), reference(tower, images))


class Layers(nn.Module):
    """Every rule and its awkward cases in one module (inputs: images, token ids)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
        self.conv_plain = nn.Conv2d(6, 5, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.bn1d = nn.BatchNorm1d(5)
        self.words = nn.Embedding(9, 5, padding_idx=0)
        self.twice = nn.Linear(5, 5)  # called twice: per-sample gradients summed over calls before |.|
        self.seq = nn.Linear(5, 5)  # 3-D input: a sample's gradient sums over its positions
        self.norm = nn.LayerNorm(5)
        self.unused = nn.Linear(5, 5)  # output never reaches the result: zero importance
        self.folded = nn.Linear(5, 5)  # sees (B*L, 5): found out during the pass, left to the fallback
        self.tied_a = nn.Linear(5, 5)
        self.tied_b = nn.Linear(5, 5)
        self.tied_b.weight = self.tied_a.weight  # shared: left to the vmap fallback
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5))  # no layer rule: vmap fallback

    def forward(self, images, tokens):
        h = torch.relu_(self.bn(self.conv(images)))  # in-place right after the layers
        h = self.conv_plain(h)
        h += 1.0  # in-place on a covered layer's output
        img = self.bn1d(h.mean((2, 3)))  # (B, 5)
        seq = self.norm(self.seq(self.words(tokens)))  # (B, L, 5)
        seq = self.folded(seq.reshape(-1, 5)).view(seq.shape)
        self.unused(img)
        z = self.twice(torch.tanh(self.twice(img))) + seq.mean(1) * self.scale
        return self.tied_b(torch.tanh(self.tied_a(z)))


def layers_and_inputs(n: int = 7):
    """:class:`Layers` in eval mode with running statistics, and a batch of n samples."""
    torch.manual_seed(0)
    m = Layers()
    m.train()
    m(torch.randn(16, 4, 9, 8) * 2 + 1, torch.randint(0, 9, (16, 6)))  # running statistics
    m.eval()
    tokens = torch.randint(0, 9, (n, 6))
    tokens[0] = torch.tensor([0, 3, 3, 3, 0, 5])  # padding and a repeated word within one sample
    return m, (torch.randn(n, 4, 9, 8), tokens)


def test_layer_rules_match_per_sample_reference():
    m, inputs = layers_and_inputs()
    covered, rest = fast_plan(m, trainable_names(m))
    assert set(covered) == {"conv", "conv_plain", "bn", "bn1d", "words", "twice", "seq", "norm", "unused", "folded"}
    assert rest == ["scale", "tied_a.bias", "tied_a.weight", "tied_b.bias"]  # layers sharing a parameter
    fast = per_sample_abs_grad_sum(m, inputs)
    ref = reference(m, inputs)
    assert torch.all(fast["unused.weight"] == 0) and torch.all(fast["words.weight"][0] == 0)  # padding row
    ref_nonzero = {n: v for n, v in ref.items() if not n.startswith("unused.")}
    assert_close({n: fast[n] for n in ref_nonzero}, ref_nonzero)


def test_objective_with_per_sample_aux_matches_reference():
    """Another per-sample scalar than the squared norm (as MAS's normalized output uses): every fast
    rule and the vmap fallback, each sample with its own aux row."""
    m, inputs = layers_and_inputs()

    def objective(out, weights):  # (B, 5), (B, 5): a nonlinear scalar per sample
        return (torch.sin(out) * weights).sum()

    aux = (torch.randn(inputs[0].shape[0], 5),)
    fast = per_sample_abs_grad_sum(m, inputs, objective=objective, aux=aux)
    ref = reference(m, inputs, objective, aux)
    assert torch.all(fast["unused.weight"] == 0)
    ref_nonzero = {n: v for n, v in ref.items() if not n.startswith("unused.")}
    assert_close({n: fast[n] for n in ref_nonzero}, ref_nonzero)
    assert not torch.allclose(fast["conv.weight"], per_sample_abs_grad_sum(m, inputs, ["conv.weight"])["conv.weight"])


def test_chunking_does_not_change_the_result(monkeypatch):
    m, inputs = layers_and_inputs(5)
    whole = per_sample_abs_grad_sum(m, inputs)
    monkeypatch.setattr(per_sample, "_CHUNK_ELEMENTS", 1)  # one sample at a time
    for n, v in per_sample_abs_grad_sum(m, inputs).items():
        assert torch.allclose(v, whole[n], rtol=1e-6, atol=0), n


@pytest.mark.parametrize("train", [True, False])
def test_batch_statistics_couple_samples_so_everything_falls_back(train):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, track_running_stats=train), nn.Flatten(), nn.Linear(16, 2))
    m.train(train)
    covered, rest = fast_plan(m, trainable_names(m))
    assert covered == {} and rest == sorted(trainable_names(m))
    if not train:  # no running statistics: batch statistics even in eval mode, per sample in the reference
        x = torch.randn(5, 3, 4, 4)
        assert_close(per_sample_abs_grad_sum(m, (x,)), reference(m, (x,)))


def test_names_select_parameters_and_the_rest_are_left_out():
    m, inputs = layers_and_inputs(4)
    some = ["conv.weight", "scale", "unused.bias"]
    fast = per_sample_abs_grad_sum(m, inputs, some)
    ref = reference(m, inputs)
    assert list(fast) == some
    assert_close({n: fast[n] for n in some[:2]}, {n: ref[n] for n in some[:2]})
    assert torch.all(fast["unused.bias"] == 0)
