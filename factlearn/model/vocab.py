"""Word vocabulary of the language tower.

Phrases are split on white space after the same normalisation as :class:`factlearn.facts.Fact`.
Id 0 is padding and id 1 stands for any word not in the vocabulary: a fact made of unknown words
still embeds (through the shared unknown-word vector) instead of failing, and
:meth:`Vocabulary.unknown_words` lets callers warn about it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..facts import Fact

PAD, UNK = "<pad>", "<unk>"


class Vocabulary:
    """Words <-> token ids for the language tower: id 0 is padding, id 1 any unknown word.

    Args:
        words: the known words in id order (from id 2); ``<pad>`` and ``<unk>`` among them are
            ignored.
    """

    def __init__(self, words: Sequence[str]):
        self.words: list[str] = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def unknown_words(self, facts: Sequence[Fact]) -> list[str]:
        """The words of ``facts`` not in the vocabulary (sorted, each once): they embed as ``<unk>``."""
        return sorted({w for f in facts for v in f.slots if v for w in v.split() if w not in self.index})

    def encode(self, facts: Sequence[Fact]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (F, 3, L) padded with 0, and the slot mask (F, 3) float (1 = slot present)."""
        length = max([len(v.split()) for f in facts for v in f.slots if v] + [1])
        tokens = torch.zeros((len(facts), 3, length), dtype=torch.long)
        mask = torch.zeros((len(facts), 3))
        for i, fact in enumerate(facts):
            for s, phrase in enumerate(fact.slots):
                if phrase is None:
                    continue
                mask[i, s] = 1.0
                ids = [self.index.get(w, 1) for w in phrase.split()]
                tokens[i, s, : len(ids)] = torch.tensor(ids)
        return tokens, mask
