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


# ---- the tokenizer: one rule for punctuation, case and unknown words (factlearn.model.vocab) ----

def _encode_before_the_tokenizer(vocab: Vocabulary, facts: list[Fact]) -> torch.Tensor:
    """Token ids as factlearn computed them before the tokenizer: a split on white space by hand."""
    length = max([len(v.split()) for f in facts for v in f.slots if v] + [1])
    tokens = torch.zeros((len(facts), 3, length), dtype=torch.long)
    for i, fact in enumerate(facts):
        for s, phrase in enumerate(fact.slots):
            if phrase is not None:
                ids = [vocab.index.get(w, 1) for w in phrase.split()]
                tokens[i, s, : len(ids)] = torch.tensor(ids)
    return tokens


def test_built_in_world_facts_keep_their_words_and_ids():
    from factlearn.data.synth.vocabulary import max_facts, sample_facts
    from factlearn.facts import FactTable

    facts = [fact for fact, _ in sample_facts(max_facts(), 0)]  # every fact a built-in world can have
    table = FactTable.from_facts(facts)
    vocab = Vocabulary.from_facts(table.facts)
    assert vocab.words[2:] == table.words() and not vocab.legacy  # vocab.json as before
    tokens, mask = vocab.encode(table.facts)
    assert torch.equal(tokens, _encode_before_the_tokenizer(vocab, table.facts))
    assert torch.equal(mask, torch.tensor([f.mask for f in table.facts]))


def test_punctuation_case_and_unknown_words_follow_one_rule():
    vocab = Vocabulary.from_facts([Fact("dog's bowl"), Fact("t-shirt", "left of", "star")])
    assert vocab.words[2:] == ["'", "-", "bowl", "dog", "left", "of", "s", "shirt", "star", "t"]
    ids = vocab.index
    tokens, _ = vocab.encode([Fact("Dog's  BOWL"), Fact("cat", "left of")])
    assert tokens[0, 0].tolist() == [ids["dog"], ids["'"], ids["s"], ids["bowl"]]
    assert tokens[1, 0].tolist() == [1, 0, 0, 0] and tokens[1, 1, :2].tolist() == [ids["left"], ids["of"]]
    assert vocab.unknown_words([Fact("cat x", "left of", "zebra-fish")]) == ["cat", "fish", "x", "zebra"]


def test_a_vocabulary_from_before_the_tokenizer_keeps_its_words():
    old = Vocabulary(["dog's", "bowl"])  # a vocab.json written by the whitespace split
    assert old.legacy
    assert old.encode([Fact("dog's bowl")])[0][0, 0].tolist() == [2, 3]
    assert old.unknown_words([Fact("dog bowl")]) == ["dog"]


def test_the_tokenizer_is_saved_and_reads_back(tmp_path):
    from tokenizers import Tokenizer

    vocab = Vocabulary.from_facts([Fact("dog's bowl"), Fact("star", "dark blue")])
    vocab.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    phrases = ["dog's bowl", "Dark blue star", "purple"]
    assert [e.ids for e in loaded.encode_batch(phrases, add_special_tokens=False)] == \
        [e.ids for e in vocab.tokenizer.encode_batch(phrases, add_special_tokens=False)]
