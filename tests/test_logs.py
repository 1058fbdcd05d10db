"""train.log: TensorBoard event files and scalars.csv, read back; resume continues them exactly;
progress lines when stderr is not a terminal.

The tiny world has 6 training steps per task with this config (epochs 2, batch 8), and a mid-task
checkpoint every 2 steps, as in test_resume.py.
"""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import pytest
import yaml

import factlearn.run
from factlearn.config import load_config
from factlearn.errors import UserError
from factlearn.progress import LineProgress, phase, progress_bar
from factlearn.training import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

BOTH = {"train.log": ["tensorboard", "csv"], "method.name": "mas"}


class Crash(BaseException):
    """Stands for SIGKILL: nothing runs after it."""


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory, tiny_config) -> Path:
    data = yaml.safe_load(tiny_config.read_text())
    data["train"].update(epochs=2, batch_size=8, checkpoint_every=2)
    path = tmp_path_factory.mktemp("cfg") / "logs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_world, cfg_path) -> Path:
    """A MAS run logging to both, uninterrupted."""
    out = tmp_path_factory.mktemp("logs") / "run"
    train(tiny_world, load_config(cfg_path, BOTH), out, device="cpu")
    return out


def read_csv(run: Path) -> list[tuple[int, str, float]]:
    with (run / "logs" / "scalars.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "tag", "value"]
    return [(int(s), tag, float(v)) for s, tag, v in rows[1:]]


def read_events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "logs"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_event_files_and_csv_hold_the_same_scalars(logged):
    rows = read_csv(logged)
    events = read_events(logged)
    tags = events.Tags()
    assert set(tags["scalars"]) == {tag for _, tag, _ in rows}
    for tag in tags["scalars"]:
        from_csv = [(s, v) for s, t, v in rows if t == tag]
        from_events = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in from_events] == [s for s, _ in from_csv]
        assert [v for _, v in from_events] == pytest.approx([v for _, v in from_csv], rel=1e-6)  # float32 in events
    # every step once, at the global step: 6 steps per task
    assert [s for s, t, _ in rows if t == "train/loss"] == list(range(1, 13))
    assert [s for s, t, _ in rows if t == "train/lr"] == list(range(1, 13))
    penalty = {s: v for s, t, v in rows if t == "train/penalty"}
    assert all(v == 0.0 for s, v in penalty.items() if s <= 6) and any(v > 0 for s, v in penalty.items() if s > 6)


def test_task_end_rows_match_metrics_json(logged):
    import json

    doc = json.loads((logged / "metrics.json").read_text())
    rows = {(s, t): v for s, t, v in read_csv(logged)}
    for proto in ("standard", "generalized"):
        matrix = doc["protocols"][proto]["matrix"]
        for metric in ("top1", "top5", "mrr"):
            assert rows[(6, f"{proto}/{metric}/B1")] == matrix[metric][0][0]
            assert (6, f"{proto}/{metric}/B2") not in rows  # not trained yet: no number that looks like a result
            assert rows[(12, f"{proto}/{metric}/B1")] == matrix[metric][1][0]
            assert rows[(12, f"{proto}/{metric}/B2")] == matrix[metric][1][1]
            seq = doc["protocols"][proto]["sequence"][metric]
            assert rows[(12, f"{proto}/{metric}_bwt")] == seq["bwt"]
            assert rows[(12, f"{proto}/{metric}_forgetting")] == seq["mean_forgetting"]
            assert (6, f"{proto}/{metric}_bwt") not in rows  # undefined after one task


def test_importance_histograms_per_parameter_and_totals_per_tower(logged):
    from safetensors.torch import load_file

    state = load_file(str(logged / "checkpoints" / "B2" / "method.safetensors"))
    omega = {k[len("omega."):]: v for k, v in state.items() if k.startswith("omega.")}
    events = read_events(logged)
    histograms = set(events.Tags()["histograms"])
    assert histograms == {f"importance/{name}" for name in omega}
    name = next(iter(omega))
    last = events.Histograms(f"importance/{name}")[-1]
    assert last.step == 12 and last.histogram_value.num == omega[name].numel()
    rows = {(s, t): v for s, t, v in read_csv(logged)}
    for tower in ("image_tower", "language_tower"):
        total = sum(float(v.double().sum()) for n, v in omega.items() if n.startswith(tower + "."))
        assert rows[(12, f"importance_total/{tower}")] == pytest.approx(total, rel=1e-12)
        assert (6, f"importance_total/{tower}") in rows


def test_resume_continues_the_logs_without_repeats(monkeypatch, tmp_path, tiny_world, cfg_path, logged):
    """Killed a step after the checkpoint at step 4 of B2 (global step 10), with a checkpoint every
    step: the resumed run's logs equal the uninterrupted run's (the CSV is cut, TensorBoard purges the
    steps after 10)."""
    cfg = load_config(cfg_path, {**BOTH, "train.checkpoint_every": 1})  # checkpoints change no value
    original, calls = factlearn.run.RunDir.save_partial, itertools.count(1)

    def crash_a_step_later(self, task, step, *args):
        out = original(self, task, step, *args)
        if next(calls) == 9:  # B1 steps 1-5, B2 steps 1-4: the next call, after step 11 is logged, crashes
            monkeypatch.setattr(factlearn.run.RunDir, "save_partial", crash)
        return out

    def crash(*args):
        raise Crash

    monkeypatch.setattr(factlearn.run.RunDir, "save_partial", crash_a_step_later)
    with pytest.raises(Crash):
        train(tiny_world, cfg, tmp_path / "run", device="cpu")
    monkeypatch.undo()
    assert max(s for s, t, _ in read_csv(tmp_path / "run") if t == "train/loss") == 11  # 10 is checkpointed
    train(tiny_world, cfg, tmp_path / "run", device="cpu", resume=True)
    got, want = read_csv(tmp_path / "run"), read_csv(logged)
    assert [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in want]  # each step once, in order
    # The weights are bit-identical; the penalty's reported value may differ in its last float32 bit
    # (the order of its sum's additions is not fixed), so the values are compared to rounding.
    assert [v for _, _, v in got] == pytest.approx([v for _, _, v in want], rel=1e-6)
    assert [v for _, t, v in got if t == "train/loss"] == [v for _, t, v in want if t == "train/loss"]
    events, reference = read_events(tmp_path / "run"), read_events(logged)
    for tag in ("train/loss", "standard/top1/B1", "importance_total/image_tower"):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(e.step, e.value) for e in reference.Scalars(tag)]
    assert [e.step for e in events.Scalars("train/penalty")] == list(range(1, 13))


def test_csv_only_by_default_and_none_at_all(tmp_path, tiny_world, cfg_path):
    train(tiny_world, load_config(cfg_path), tmp_path / "default", device="cpu")
    assert [p.name for p in (tmp_path / "default" / "logs").iterdir()] == ["scalars.csv"]
    train(tiny_world, load_config(cfg_path, {"train.log": []}), tmp_path / "none", device="cpu")
    assert not (tmp_path / "none" / "logs").exists()


def test_missing_tensorboard_is_one_line(monkeypatch, tmp_path, tiny_world, cfg_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    with pytest.raises(UserError, match="tensorboard package"):
        train(tiny_world, load_config(cfg_path, BOTH), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [["tb"], "csv", [1]])
def test_train_log_names_the_key(value):
    with pytest.raises(UserError, match="train.log"):
        load_config(None, {"train.log": value})


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    bar = progress_bar(total=3, desc="train B1", unit="step")
    assert isinstance(bar, LineProgress)  # pytest's stderr is not a terminal
    with bar:
        bar.update(2)
        bar.set_postfix(loss="0.500")
        bar.update(1)
    with phase("mas importance after B1"):
        pass
    with phase("quiet", enabled=False):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("train B1: 3/3 step in ") and lines[0].endswith("s, loss=0.500")
    assert lines[1] == "mas importance after B1 ..." and lines[2].startswith("mas importance after B1: ")
    assert len(lines) == 3
    ticking = LineProgress(total=10, desc="decode", unit="img", every=0.0)
    ticking.update(4)
    ticking.close()
    assert capsys.readouterr().err.splitlines()[0] == "decode: 4/10 img"
