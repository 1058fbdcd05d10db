"""What factlearn leaves on disk (issue 19): written files honour the umask, an unreadable checkpoint
says "permission denied", the temporaries of killed writers are removed by the next run, and a
YAML syntax error is one line naming file:line:column."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from factlearn.cli import main
from factlearn.config import load_config
from factlearn.data.importers import import_manifest
from factlearn.errors import UserError
from factlearn.io import atomic_save_tensors, atomic_write_json, atomic_write_text, pid_alive, remove_stale_temporaries
from factlearn.run import RunDir, read_tensors

# Above the largest pid Linux hands out (pid_max is at most 2**22): no live process has it.
DEAD = 2**22 + 17


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_written_files_honour_the_umask(tmp_path, umask_027):
    atomic_save_tensors(tmp_path / "model.safetensors", {"w": torch.ones(3)}, {"factlearn_version": "1.0.0"})
    atomic_write_json(tmp_path / "run.json", {"a": 1})
    atomic_write_text(tmp_path / "notes.txt", "hello")
    for name in ("model.safetensors", "run.json", "notes.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask_027, name
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_an_unreadable_checkpoint_says_permission_denied(monkeypatch, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for another user
        real_open = open

        def denied(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("builtins.open", denied)
    else:
        path.chmod(0)
    try:
        with pytest.raises(UserError, match="permission denied") as info:
            read_tensors(path)
        assert "corrupt" not in str(info.value) and str(path) in str(info.value)
    finally:
        path.chmod(0o644)


def test_pid_alive():
    assert pid_alive(os.getpid()) and pid_alive(os.getppid())
    assert not pid_alive(DEAD) and not pid_alive(0)


def test_the_next_run_removes_temporaries_of_dead_writers(tmp_path, tiny_world, tiny_config):
    run = tmp_path / "run"
    cmd = ["train", "--data", str(tiny_world), "--config", str(tiny_config), "--out", str(run), "--device", "cpu"]
    assert CliRunner().invoke(main, cmd).exit_code == 0
    folder = run / "checkpoints" / "B1"
    stale = [folder / f".model.safetensors.{DEAD}-ab12_cd3.tmp", run / f".run.json.{DEAD}-zz9q0x1y.tmp"]
    alive = [folder / f".method.safetensors.{os.getppid()}-ab12cd34.tmp",  # a writer still at work
             folder / ".model.safetensors.k2j3h4g5.tmp",  # no pid in its name: not ours to judge
             run / "notes.txt"]
    for path in stale + alive:
        path.write_bytes(b"")
    assert CliRunner().invoke(main, cmd + ["--resume"]).exit_code == 0  # nothing left to train
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in alive)


def test_the_lock_removes_stale_temporaries_in_every_checkpoint_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path / "partial" / "B1-step000002").mkdir(parents=True)
    stale = run.path / "partial" / "B1-step000002" / f".trainer.safetensors.{DEAD}-aaaaaaaa.tmp"
    stale.write_bytes(b"")
    with run.lock():
        assert not stale.exists()
    assert (run.path / "partial" / "B1-step000002").is_dir()


def test_the_next_import_removes_a_killed_import(tmp_path, tiny_world):
    out = tmp_path / "out"
    killed = tmp_path / f".out.partial-{DEAD}"  # what a kill during `data import` leaves
    (killed / "images").mkdir(parents=True)
    (killed / "images" / "a.png").write_bytes(b"x")
    running = tmp_path / f".out.partial-{os.getppid()}"  # an import still running (another process)
    running.mkdir()
    other = tmp_path / f".elsewhere.partial-{DEAD}"  # another output's: left to its own next import
    other.mkdir()
    report = import_manifest(tiny_world, out, workers=1)
    assert report.images == 72 and (out / "manifest.jsonl").is_file()
    assert not killed.exists() and running.is_dir() and other.is_dir()


def test_remove_stale_temporaries_only_by_name(tmp_path):
    (tmp_path / f".a.partial-{DEAD}").mkdir()
    (tmp_path / f".b.partial-{DEAD}").mkdir()
    (tmp_path / f".a.json.{DEAD}-abcdefgh.tmp").write_text("")
    removed = remove_stale_temporaries(tmp_path, name="a")
    assert removed == [tmp_path / f".a.partial-{DEAD}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.json.{DEAD}-abcdefgh.tmp", f".b.partial-{DEAD}"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


@pytest.mark.parametrize("text, where", [
    ("train: {epochs: [\n", ":2:1: not valid YAML"),
    ("model:\n  slot_dim: 3\n   x: 4\n", ":3:5: not valid YAML"),
    ("train:\n  lr: 0.1\n\tepochs: 2\n", ":3:1: not valid YAML"),
    (b"# caf\xe9\ntrain: {}\n", ":1:6: not valid YAML: not UTF-8 (byte 0xe9)"),
], ids=["unclosed", "indentation", "tab", "not UTF-8"])
def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where}") and "\n" not in message, message
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--config", str(path), "--out",
                                  str(tmp_path / "out")])
    assert r.exit_code == 2 and r.stderr == f"Error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_run_whose_config_yaml_is_broken(tmp_path, tiny_world, tiny_config):
    run = tmp_path / "run"
    cmd = ["train", "--data", str(tiny_world), "--config", str(tiny_config), "--out", str(run), "--device", "cpu"]
    assert CliRunner().invoke(main, cmd).exit_code == 0
    shutil.copyfile(run / "config.yaml", tmp_path / "good.yaml")
    (run / "config.yaml").write_text("model: {slot_dim: 16\n")
    r = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 2 and r.stderr.startswith(f"Error: {run / 'config.yaml'}:2:1: not valid YAML"), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_run_files_too_deep_or_with_a_too_long_number_are_one_line(tmp_path):
    """Every JSON reader shares io.parse_json: a run file nested too deeply or holding an integer past
    Python's digit limit is a UserError naming it, as a manifest or task file is."""
    import pytest

    from factlearn.errors import UserError
    from factlearn.io import read_json

    for text in ("[" * 100_000, '{"n": ' + "9" * 5000 + "}"):
        path = tmp_path / "metrics.json"
        path.write_text(text)
        with pytest.raises(UserError, match="metrics.json is corrupt") as err:
            read_json(path)
        assert "\n" not in str(err.value)
