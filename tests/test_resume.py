"""Interruption and resume: a run killed at any moment (SIGKILL, Ctrl-C, a crash in the middle of a
write) and resumed ends bit-identical to an uninterrupted one; a diverged run keeps its last good
checkpoint.

The tiny world has 6 training steps per task with this config (epochs 2, batch 8), and a mid-task
checkpoint every 2 steps: partial checkpoints after steps 2 and 4 of each task, then the task's own.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import factlearn.run
import factlearn.training.session
import factlearn.training.step
import factlearn.training.task
from factlearn.cli import main
from factlearn.config import load_config
from factlearn.training import train

# si: a method with mid-task state (its path integral); mas: the main one; lwf with plain SGD: an
# optimizer state of None values (no momentum buffers), which go to state.json
VARIANTS = {
    "si": {"method.name": "si"},
    "mas": {"method.name": "mas"},
    "lwf-sgd": {"method.name": "lwf", "train.optimizer": "sgd", "train.momentum": 0.0},
}


class Crash(BaseException):
    """Stands for SIGKILL: nothing runs after it, not even ``except Exception`` handlers."""


def config_file(path: Path, tiny_config: Path, **train_keys) -> Path:
    """Write tiny.yaml with these ``train`` keys changed to ``path``; returns it."""
    data = yaml.safe_load(tiny_config.read_text())
    data["train"].update(train_keys)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory, tiny_config) -> Path:
    return config_file(tmp_path_factory.mktemp("cfg") / "resume.yaml", tiny_config, epochs=2, batch_size=8,
                       checkpoint_every=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_world, cfg_path) -> dict[str, Path]:
    """One uninterrupted run per variant."""
    root = tmp_path_factory.mktemp("reference")
    for name, overrides in VARIANTS.items():
        train(tiny_world, load_config(cfg_path, overrides), root / name, device="cpu")
    return {name: root / name for name in VARIANTS}


def assert_same_run(expected: Path, got: Path) -> None:
    for task in ("B1", "B2"):
        for name in ("model.safetensors", "method.safetensors"):
            a = load_file(str(expected / "checkpoints" / task / name))
            b = load_file(str(got / "checkpoints" / task / name))
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), f"{task}/{name}: {key} differs"
    assert json.loads((got / "metrics.json").read_text()) == json.loads((expected / "metrics.json").read_text())
    assert json.loads((got / "run.json").read_text())["completed"] == ["B1", "B2"]
    assert not (got / "partial").exists()  # mid-task checkpoints go once their task is done


def crash_on_call(monkeypatch, owner, name: str, n: int, after: bool) -> None:
    """Make the n-th call of ``owner.name`` crash, before it runs or once it has returned."""
    original, calls = getattr(owner, name), itertools.count(1)

    def wrapper(*args, **kwargs):
        i = next(calls)
        if i == n and not after:
            raise Crash
        out = original(*args, **kwargs)
        if i == n:
            raise Crash
        return out

    monkeypatch.setattr(owner, name, wrapper)


def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_world, cfg_path, reference):
    """A real process killed with SIGKILL right after a mid-task checkpoint of B2 appears."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "factlearn", "train", "--data", str(tiny_world), "--config", str(cfg_path),
           "--method", "si", "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any((out / "partial").glob("B2-*/state.json")):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "checkpoints" / "B2" / "state.json").exists()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_run(reference["si"], out)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [1, 3])  # after the partial checkpoint at step 2 of B1 / step 2 of B2
def test_crash_after_a_checkpoint(monkeypatch, tmp_path, tiny_world, cfg_path, reference, variant, n):
    cfg = load_config(cfg_path, VARIANTS[variant])
    crash_on_call(monkeypatch, factlearn.run.RunDir, "save_partial", n, after=True)
    with pytest.raises(Crash):
        train(tiny_world, cfg, tmp_path / "run", device="cpu")
    monkeypatch.undo()
    train(tiny_world, cfg, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(reference[variant], tmp_path / "run")


@pytest.mark.parametrize(
    "n, half_written",
    [
        (5, "partial/B1-step000004"),  # writes 1-3: partial at step 2; 4: model of step 4, 5 crashes
        (9, "checkpoints/B1"),  # 7, 8: model and method of B1's own checkpoint; 9 (trainer) crashes
    ],
)
def test_crash_in_the_middle_of_a_checkpoint(monkeypatch, tmp_path, tiny_world, cfg_path, reference, n, half_written):
    """A checkpoint folder without its state.json is ignored: resume takes the one before it."""
    cfg = load_config(cfg_path, VARIANTS["si"])
    crash_on_call(monkeypatch, factlearn.run, "atomic_save_tensors", n, after=False)
    with pytest.raises(Crash):
        train(tiny_world, cfg, tmp_path / "run", device="cpu")
    folder = tmp_path / "run" / half_written
    assert (folder / "model.safetensors").is_file() and not (folder / "state.json").exists()
    assert factlearn.run.RunDir(tmp_path / "run").completed() == []
    monkeypatch.undo()
    train(tiny_world, cfg, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(reference["si"], tmp_path / "run")


def _train_args(world: Path, cfg_path: Path, out: Path) -> list[str]:
    return ["train", "--data", str(world), "--config", str(cfg_path), "--method", "si", "--out", str(out),
            "--device", "cpu"]


def _sigint_on_call(monkeypatch, owner, name: str, n: int, times: int = 1) -> None:
    original, calls = getattr(owner, name), itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == n:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_ctrl_c_saves_the_current_step_and_exits_130(monkeypatch, tmp_path, tiny_world, cfg_path, reference):
    out = tmp_path / "run"
    _sigint_on_call(monkeypatch, factlearn.training.step, "fact_loss", 9)  # during step 3 of B2
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 130, r.output
    assert "stopped in task B2 after step 3 of 6" in r.output and "--resume" in r.output
    assert "Traceback" not in r.output
    assert [p.name for p in (out / "partial").iterdir()] == ["B2-step000003"]  # the older one is gone
    assert (out / "partial" / "B2-step000003" / "state.json").is_file()
    monkeypatch.undo()
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out) + ["--resume"])
    assert r.exit_code == 0, r.output
    assert_same_run(reference["si"], out)


def test_ctrl_c_between_steps_of_work_stops_after_the_task(monkeypatch, tmp_path, tiny_world, cfg_path, reference):
    """Ctrl-C while B1 is evaluated: B1's checkpoint is written, then the run stops."""
    out = tmp_path / "run"
    _sigint_on_call(monkeypatch, factlearn.training.session.Session, "evaluate", 1)
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 130 and "stopped after task B1" in r.output, r.output
    assert factlearn.run.RunDir(out).completed() == ["B1"]
    monkeypatch.undo()
    assert CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out) + ["--resume"]).exit_code == 0
    assert_same_run(reference["si"], out)


def test_sigterm_stops_like_ctrl_c(monkeypatch, tmp_path, tiny_world, cfg_path, reference):
    out = tmp_path / "run"
    original, calls = factlearn.training.step.fact_loss, itertools.count(1)

    def loss_then_sigterm(*args, **kwargs):
        if next(calls) == 4:  # during step 4 of B1
            signal.raise_signal(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(factlearn.training.step, "fact_loss", loss_then_sigterm)
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 130 and "stopped in task B1 after step 4 of 6" in r.output, r.output
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    monkeypatch.undo()
    assert CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out) + ["--resume"]).exit_code == 0
    assert_same_run(reference["si"], out)


def test_second_ctrl_c_stops_at_once(monkeypatch, tmp_path, tiny_world, cfg_path, reference):
    out = tmp_path / "run"
    _sigint_on_call(monkeypatch, factlearn.training.step, "fact_loss", 9, times=2)
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 130 and "Interrupted" in r.output and "Traceback" not in r.output
    assert [p.name for p in (out / "partial").iterdir()] == ["B2-step000002"]  # nothing new was saved
    monkeypatch.undo()
    assert CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out) + ["--resume"]).exit_code == 0
    assert_same_run(reference["si"], out)


def test_diverged_loss_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, tiny_world, cfg_path):
    out = tmp_path / "run"
    original, calls = factlearn.training.step.fact_loss, itertools.count(1)

    def nan_from_step_9(*args, **kwargs):
        loss = original(*args, **kwargs)
        return loss * float("nan") if next(calls) >= 9 else loss

    monkeypatch.setattr(factlearn.training.step, "fact_loss", nan_from_step_9)
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "diverged on task B2 (step 3)" in r.output and "B2-step000002" in r.output, r.output
    assert (out / "partial" / "B2-step000002" / "state.json").is_file()
    assert factlearn.run.RunDir(out).completed() == ["B1"]
    # recorded as a result (experiment tools report it instead of training it again)
    assert factlearn.run.RunDir(out).diverged()["task"] == "B2"


def test_non_finite_parameters_are_never_checkpointed(monkeypatch, tmp_path, tiny_world, cfg_path):
    """A step can blow the parameters up before any loss shows it: the checkpoint after it is refused."""
    out = tmp_path / "run"
    original, calls = factlearn.training.task.train_step, itertools.count(1)

    def step_then_blow_up(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        if next(calls) == 8:  # step 2 of B2, a checkpoint step
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return result

    monkeypatch.setattr(factlearn.training.task, "train_step", step_then_blow_up)
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "diverged at task B2 (step 2)" in r.output and "no longer finite" in r.output, r.output
    assert str(out / "checkpoints" / "B1") in r.output
    assert not (out / "partial").exists() or not any((out / "partial").iterdir())


def test_resume_checks_config_and_allows_a_new_checkpoint_interval(tmp_path, tiny_world, cfg_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference["si"], out)
    args = _train_args(tiny_world, cfg_path, out) + ["--resume"]
    r = CliRunner().invoke(main, args + ["--lam", "3"])
    assert r.exit_code == 2 and "method.lam is 3.0 here but 1.0" in r.output, r.output
    r = CliRunner().invoke(main, args[:-1] + ["--seed", "5", "--resume"])
    assert r.exit_code == 2 and "--seed 5" in r.output
    other = tmp_path / "other.yaml"
    other.write_text(cfg_path.read_text().replace("checkpoint_every: 2", "checkpoint_every: 0"))
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_world), "--config", str(other), "--method", "si",
                                  "--out", str(out), "--device", "cpu", "--resume"])
    assert r.exit_code == 0, r.output  # nothing left to train: the finished run's table again
    assert_same_run(reference["si"], out)


def test_resume_refuses_a_foreign_directory_and_restarts_one_cut_short(tmp_path, tiny_world, cfg_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, foreign) + ["--resume"])
    assert r.exit_code == 2 and "not a factlearn run directory" in r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    cut = tmp_path / "cut"  # killed while the run's files were written, before run.json
    cut.mkdir()
    (cut / "config.yaml").write_text("half")
    r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, cut) + ["--resume"])
    assert r.exit_code == 0, r.output
    assert factlearn.run.RunDir(cut).completed() == ["B1", "B2"]


def test_a_run_directory_in_use_is_refused(tmp_path, tiny_world, cfg_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as f:  # another process holds it (flock is per open file)
        fcntl.flock(f, fcntl.LOCK_EX)
        r = CliRunner().invoke(main, _train_args(tiny_world, cfg_path, out))
    assert r.exit_code == 2 and "in use by another factlearn process" in r.output, r.output
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_evaluate_ignores_a_half_written_checkpoint(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference["mas"], run)
    (run / "checkpoints" / "B2" / "state.json").unlink()  # as if cut short before its marker
    r = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 0 and "after B1" in r.output, r.output


# ---- the data: --resume continues only on the run's own ------------------------------------------

@pytest.fixture(scope="module")
def after_b1(tmp_path_factory, tiny_world, cfg_path) -> tuple[Path, Path]:
    """A copy of the tiny world, and an si run on it stopped after task B1 (B1's checkpoint complete)."""
    root = tmp_path_factory.mktemp("after_b1")
    world = root / "world"
    shutil.copytree(tiny_world, world)
    with pytest.MonkeyPatch.context() as mp:
        crash_on_call(mp, factlearn.run.RunDir, "save_checkpoint", 2, after=False)
        with pytest.raises(Crash):
            train(world, load_config(cfg_path, VARIANTS["si"]), root / "run", device="cpu")
    assert factlearn.run.RunDir(root / "run").completed() == ["B1"]
    return world, root / "run"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_refuses_other_data_on_one_line(tmp_path, after_b1, cfg_path, reference):
    world, cut = after_b1
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(world, data)  # copy2: the same modification times, so the same data
    shutil.copytree(cut, run)
    args = _train_args(data, cfg_path, run) + ["--resume"]
    before = _files(run)
    manifest = data / "manifest.jsonl"
    original = manifest.read_bytes()
    rows = original.splitlines(keepends=True)

    def refused(fragment: str) -> None:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"Error: --resume: {data} is not the data"), r.stderr
        assert fragment in r.stderr, r.stderr
        assert _files(run) == before  # nothing written

    manifest.write_bytes(b"".join(rows[:4] + rows[5:]))
    refused(f"1 manifest row removed (first: {json.loads(rows[4])['image']})")
    r = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(data), "--device", "cpu"])
    assert r.exit_code == 0, r.output  # evaluating on other data is another question: allowed
    manifest.write_bytes(original)
    image = data / json.loads(rows[7])["image"]
    content, st = image.read_bytes(), image.stat()
    image.write_bytes(content + b"\0")
    refused(f"image {json.loads(rows[7])['image']} changed since the run started "
            f"(size {len(content)} -> {len(content) + 1} bytes)")
    image.write_bytes(content)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    refused(f"image {json.loads(rows[7])['image']} changed since the run started (modified ")
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # the run's data again: it resumes
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert_same_run(reference["si"], run)


def test_a_run_from_before_the_fingerprint_resumes_unchecked(caplog, tmp_path, after_b1, cfg_path, reference):
    world, cut = after_b1
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    (run / "data.json").unlink()
    with caplog.at_level("WARNING", logger="factlearn.training.state"):
        train(world, load_config(cfg_path, VARIANTS["si"]), run, device="cpu", resume=True)
    assert "no data.json" in caplog.text and "cannot check" in caplog.text
    assert_same_run(reference["si"], run)
