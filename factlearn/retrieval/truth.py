"""The wildcard ground truth through integer keys, so that evaluation never builds an images x
candidates matrix in Python (issue 18: 200,000 candidates).

:func:`factlearn.facts.matches` says candidate c is correct for an image of fact a when c agrees
with a on a's own slots: the same S for an <S> image, the same (S, P) for <S,P>, the same fact for
<S,P,O>. Give every fact an integer code for each of its keys (S), (S, P) and (S, P, O) (a missing
slot is a value of its own, as in ``Fact.slots``); an image's truth is then one code at its own
level, and "c is correct for image n" is ``keys[c, level[n]] == code[n]``: a gather and a compare,
for any block of images and candidates a caller holds, and per-level histograms for the counts.

:func:`factlearn.retrieval.metrics.correct_matrix` is the slow reference these are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..facts import FactTable


@dataclass
class GroundTruth:
    """Which candidates are correct for which images, as integer keys.

    ``level[n]`` is the order of image n's fact minus one, ``code[n]`` the code of its key at that
    level, ``keys[c, l]`` the code of candidate c's key at level l (codes shared per level).
    """

    level: np.ndarray  # (N,) int64 in 0..2
    code: np.ndarray  # (N,) int64
    keys: np.ndarray  # (C, 3) int64

    @classmethod
    def from_ids(cls, table: FactTable, image_fact_ids: Sequence[int], candidate_ids: Sequence[int]) -> "GroundTruth":
        """The truth between images (their facts' ids in ``table``) and candidates (ids in ``table``).
        Linear in the facts involved: each distinct fact is coded once."""
        image_fact_ids = np.asarray(image_fact_ids, dtype=np.int64).reshape(-1)
        candidate_ids = np.asarray(candidate_ids, dtype=np.int64).reshape(-1)
        codes: list[dict[tuple, int]] = [{}, {}, {}]
        distinct = np.unique(np.concatenate([image_fact_ids, candidate_ids]))
        fact_keys = np.empty((len(distinct), 3), dtype=np.int64)  # per distinct fact id
        for i, f in enumerate(distinct.tolist()):
            slots = table[f].slots
            fact_keys[i] = [codes[lvl].setdefault(slots[: lvl + 1], len(codes[lvl])) for lvl in range(3)]
        orders = np.array([table[f].order for f in distinct.tolist()], dtype=np.int64) - 1
        img = np.searchsorted(distinct, image_fact_ids)
        level = orders[img]
        return cls(level, fact_keys[img, level], fact_keys[np.searchsorted(distinct, candidate_ids)])

    def at(self, rows: np.ndarray | slice, ids: np.ndarray) -> np.ndarray:
        """(b, K) bool: is candidate ``ids[i, j]`` correct for image ``rows[i]``; ids of -1 (an empty
        place of a search) are never correct."""
        ids = np.asarray(ids)
        level, code = self.level[rows], self.code[rows]
        valid = ids >= 0
        found = self.keys[np.where(valid, ids, 0), level[:, None]]  # (b, K)
        return valid & (found == code[:, None])

    def block(self, cols: slice | np.ndarray) -> np.ndarray:
        """(N, b) bool over every image and the candidates ``cols``: ``correct_matrix``'s columns."""
        keys = self.keys[cols]  # (b, 3)
        return keys.T[self.level] == self.code[:, None]

    def counts(self) -> np.ndarray:
        """(N,) the number of correct candidates of each image (g of the top-k rule)."""
        out = np.zeros(len(self.code), dtype=np.int64)
        for lvl in range(3):
            mine = self.level == lvl
            if mine.any():
                hist = np.bincount(self.keys[:, lvl], minlength=int(self.code[mine].max()) + 1)
                out[mine] = hist[self.code[mine]]
        return out
