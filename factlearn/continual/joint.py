"""Joint training, the upper bound: no forgetting because no data is ever gone.

Trained cumulatively: the stage for task t continues from the model after task t-1 and trains on
the union of tasks 1..t (their training images, with the union's facts as the candidates of the
loss). The evaluation after each stage gives an accuracy matrix shaped like every other method's.
The training loop reads ``rehearses_all``; the method itself adds no loss term.
"""

from __future__ import annotations

from .base import Method


class Joint(Method):
    """Joint training on every task seen so far: the upper bound. No options."""

    name = "joint"
    rehearses_all = True
