import math

import pytest

from factlearn.training import lr_at


def test_constant_schedule():
    assert [lr_at(s, 10, 0.1, "constant") for s in range(10)] == [0.1] * 10


def test_cosine_schedule_starts_at_base_ends_at_zero_and_decreases():
    lrs = [lr_at(s, 11, 0.1, "cosine") for s in range(11)]
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(0, 1, 0.1, "cosine") == 0.1  # a one-step task still learns
    assert lr_at(3, 7, 2.0, "cosine") == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))


def test_task_steps_counts_a_short_last_batch():
    from factlearn.training.schedule import task_steps

    assert task_steps(10, 4, 3) == 9  # batches of 4, 4, 2 per epoch
    assert task_steps(8, 4, 1) == 2 and task_steps(1, 64, 2) == 2
