"""Word vocabulary of the language tower, and the one rule that turns a phrase into words.

The rule is a `tokenizers <https://huggingface.co/docs/tokenizers>`_ word-level tokenizer
(:attr:`Vocabulary.tokenizer`, saved with a run as ``tokenizer.json``), the same for every language
tower (the BERT tower maps each of these words to its word pieces):

- case: a phrase is lower-cased (a :class:`factlearn.facts.Fact` already is);
- words: a run of letters, digits or ``_`` is a word, and so is each run of other non-space
  characters: ``"dog's bowl"`` is ``dog ' s bowl`` and ``"t-shirt"`` is ``t - shirt``;
- unknown words: id 1 (``<unk>``), id 0 is padding. A fact made of unknown words still embeds
  (through the shared unknown-word vector) instead of failing, and :meth:`Vocabulary.unknown_words`
  lets callers warn about it.

Words of letters and digits alone, as in the built-in worlds, are split as before the tokenizer
existed (on white space), so their ids are unchanged. A vocabulary written before it (a run's
vocab.json) that holds a word the rule would cut (``dog's``) keeps the rule it was made with:
white space alone separates words. Such a run loads and embeds as it always did.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from ..facts import Fact

PAD, UNK = "<pad>", "<unk>"


def _tokenizer(words: list[str], legacy: bool) -> Tokenizer:
    """The word-level tokenizer over ``words`` (ids in order): the rule of the module docstring, or
    with ``legacy`` a split on white space alone."""
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit() if legacy else pre_tokenizers.Whitespace()
    return tok


def split_words(phrase: str) -> list[str]:
    """The words of ``phrase`` under the rule of the module docstring."""
    return [w for w, _ in _RULE.pre_tokenize_str(_CASE.normalize_str(phrase))]


_RULE, _CASE = pre_tokenizers.Whitespace(), normalizers.Lowercase()


class Vocabulary:
    """Words <-> token ids for the language tower: id 0 is padding, id 1 any unknown word.

    Args:
        words: the known words in id order (from id 2); ``<pad>`` and ``<unk>`` among them are
            ignored. A run's vocab.json; :meth:`from_facts` makes one from facts.
    """

    def __init__(self, words: Sequence[str]):
        self.words: list[str] = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}
        # a word the rule would cut comes from a vocabulary made before the tokenizer: keep its rule
        self.legacy = any(split_words(w) != [w] for w in self.words[2:])
        self.tokenizer = _tokenizer(self.words, self.legacy)

    @classmethod
    def from_facts(cls, facts: Sequence[Fact]) -> Vocabulary:
        """The vocabulary of ``facts``' words under the rule, sorted."""
        return cls(sorted({w for f in facts for v in f.slots if v for w in split_words(v)}))

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path) -> None:
        """Write the tokenizer as ``tokenizer.json`` (``tokenizers.Tokenizer.from_file`` reads it)."""
        from ..io import atomic_write_text

        atomic_write_text(path, self.tokenizer.to_str(pretty=True))

    def unknown_words(self, facts: Sequence[Fact]) -> list[str]:
        """The words of ``facts`` not in the vocabulary (sorted, each once): they embed as ``<unk>``."""
        phrases = [v for f in facts for v in f.slots if v]
        encoded = self.tokenizer.encode_batch(phrases, add_special_tokens=False)
        return sorted({phrases[k][a:b].lower() for k, e in enumerate(encoded)
                       for (a, b), i in zip(e.offsets, e.ids) if i == 1})

    def encode(self, facts: Sequence[Fact]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (F, 3, L) padded with 0, and the slot mask (F, 3) float (1 = slot present)."""
        where = [(i, s) for i, f in enumerate(facts) for s, v in enumerate(f.slots) if v]
        phrases = [facts[i].slots[s] for i, s in where]
        ids = [e.ids for e in self.tokenizer.encode_batch(phrases, add_special_tokens=False)]
        tokens = torch.zeros((len(facts), 3, max([len(x) for x in ids] + [1])), dtype=torch.long)
        mask = torch.zeros((len(facts), 3))
        for (i, s), row in zip(where, ids):
            mask[i, s] = 1.0
            tokens[i, s, : len(row)] = torch.tensor(row, dtype=torch.long)
        return tokens, mask
