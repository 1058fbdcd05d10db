import pytest
import torch

from factlearn.facts import Fact
from factlearn.model import Vocabulary, create_model, normalize_slots

FACTS = [Fact("star"), Fact("star", "dark blue"), Fact("circle", "left of", "star")]



@pytest.mark.parametrize("overrides", [
    dict(),
    dict(backbone="vit", backbone_config={"patch_size": 8, "hidden_size": 16, "num_hidden_layers": 2,
                                          "num_attention_heads": 2, "intermediate_size": 32}),
])
def test_shapes_and_wildcard_zeros(overrides, tiny_model_config):
    cfg = tiny_model_config(**overrides)
    torch.manual_seed(0)
    vocab = Vocabulary(["star", "dark", "blue", "circle", "left", "of"])
    model = create_model(cfg, vocab)
    img = model.embed_images(torch.randn(4, 3, 32, 32))
    assert img.shape == (4, 3, 16)
    vec = model.encode_facts(FACTS)
    assert vec.shape == (3, 48) and vec.dtype == torch.float32
    assert torch.all(vec[0, 16:] == 0) and torch.all(vec[1, 32:] == 0)  # missing slots are zero
    assert torch.allclose(vec[2].view(3, 16).norm(dim=1), torch.ones(3))  # each slot unit length
    enc = model.encode_images(torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8))
    assert enc.shape == (5, 48)


def test_encode_is_deterministic_and_batch_independent(tiny_model_config):
    torch.manual_seed(0)
    model = create_model(tiny_model_config(), Vocabulary(["star"]))
    images = torch.randint(0, 255, (7, 3, 32, 32), dtype=torch.uint8)
    a = model.encode_images(images, batch_size=7)
    b = model.encode_images(images, batch_size=2)
    assert torch.allclose(a, b, atol=1e-6)


def test_unknown_words_embed_without_error(tiny_model_config):
    vocab = Vocabulary(["star"])
    model = create_model(tiny_model_config(), vocab)
    assert vocab.unknown_words([Fact("hexagon", "purple")]) == ["hexagon", "purple"]
    assert model.encode_facts([Fact("hexagon", "purple")]).shape == (1, 48)


def test_bad_input_shape_is_a_clear_value_error(tiny_model_config):
    model = create_model(tiny_model_config(), Vocabulary(["star"]))
    with pytest.raises(ValueError, match="expected images of shape"):
        model.embed_images(torch.randn(3, 32, 32))


def test_normalize_slots_masks():
    emb = torch.randn(2, 3, 4)
    out = normalize_slots(emb, torch.tensor([[1.0, 0, 0], [1, 1, 1]]))
    assert out.shape == (2, 12) and torch.all(out[0, 4:] == 0)
