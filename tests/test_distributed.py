"""Training with torch.distributed on 2 CPU processes (gloo) against one process.

DDP averages the gradients of the ranks' shares of each global batch, weighted by their sizes,
and batch norm takes its statistics over the global batch, so 2 processes take the same steps as
one up to float rounding: weights and method state are compared with a relative tolerance
(max |a - b| <= RTOL * max |a|). Ranks hold bit-identical parameters and method state.

The tiny world has 24 training images per task; a global batch of 23 splits 12/11, and its
last batch of one leaves rank 1 with no image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import factlearn.run
from factlearn.cli import main
from factlearn.config import load_config
from factlearn.continual.ewc import fisher_diagonal
from factlearn.continual.lmas import lmas_importance
from factlearn.continual.mas import mas_importance
from factlearn.data.manifest import load_dataset
from factlearn.distributed import SINGLE, Context, join_group, settle
from factlearn.training import Session, train
from factlearn.training.task import train_task

RTOL = 1e-4


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory, tiny_config) -> Path:
    data = yaml.safe_load(tiny_config.read_text())
    data["train"].update(epochs=2, batch_size=23, checkpoint_every=2)
    data["method"].update(name="si", importance_batch_size=5)  # uneven batches within each shard too
    path = tmp_path_factory.mktemp("cfg") / "ddp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == want.keys(), what
    for key, w in want.items():
        if not w.is_floating_point():
            assert torch.equal(got[key], w), f"{what}: {key}"
            continue
        err = (got[key] - w).abs().max().item()
        assert err <= RTOL * w.abs().max().item() + 1e-9, f"{what}: {key} differs by {err}"


# --- 2 processes started with torch.multiprocessing: importance all-reduce, DDP steps, SI -------


def session_results(data: str, cfg_path: str, ctx: Context) -> dict[str, torch.Tensor]:
    """Importance of the untrained model on B1 (MAS, EWC Fisher, l-MAS), then B1 trained with SI:
    its method state and the weights. (MAS with ``importance: batch`` is left out: |gradient of a
    batch's sum| depends on which samples share a batch, so it changes with the shards.)"""
    s = Session(load_dataset(data), load_config(cfg_path), 0, torch.device("cpu"), False, ctx)
    task = s.task_data(s.tasks[0])  # this rank's shard under ctx
    parts = {
        "mas": mas_importance(s.model, task, 5),
        "fisher": fisher_diagonal(s.model, task, 5),
        "lmas": lmas_importance(s.model, task, 5),
    }
    train_task(s, 0)
    parts.update(si=s.method.state_dict(), model=s.model.state_dict())
    return {f"{part}/{name}": t.detach().clone().contiguous() for part, tensors in parts.items()
            for name, t in tensors.items()}


def rank_main(rank: int, world: int, store: str, data: str, cfg_path: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ctx, _, owned = join_group(torch.device("cpu"))
        assert (ctx.rank, ctx.world, owned) == (rank, world, False)
        save_file(session_results(data, cfg_path, ctx), f"{out}/rank{rank}.safetensors")
        # Per-rank batch-norm statistics: other steps than one process's, the same model on every rank.
        s = Session(load_dataset(data), load_config(cfg_path, {"train.sync_batch_norm": False}), 0,
                    torch.device("cpu"), False, ctx)
        train_task(s, 0)
        save_file(s.model.state_dict(), f"{out}/local_bn{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_compute_what_one_process_computes(tmp_path, tiny_world, cfg_path):
    mp.spawn(rank_main, args=(2, str(tmp_path / "store"), str(tiny_world), str(cfg_path), str(tmp_path)), nprocs=2)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for key in ranks[0]:  # identical parameters and method state on every rank (SI's path integral too)
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    local = [load_file(str(tmp_path / f"local_bn{r}.safetensors")) for r in range(2)]
    for key in local[0]:  # buffers too: rank 0's are copied to every rank at the end of the task
        assert torch.equal(local[0][key], local[1][key]), key
        assert not local[0][key].is_floating_point() or torch.isfinite(local[0][key]).all(), key
    torch.set_num_threads(1)
    want = session_results(str(tiny_world), str(cfg_path), SINGLE)
    for part in ("mas", "fisher", "lmas", "si", "model"):
        pick = lambda d: {k: v for k, v in d.items() if k.startswith(part + "/")}  # noqa: E731
        assert_close(pick(ranks[0]), pick(want), part)
    assert any(k.startswith("si/omega.") for k in want)


# --- the command line: torchrun and --nproc, with --resume ----------------------------------------


def run_cli(args: list[str], launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def assert_runs_close(expected: Path, got: Path) -> None:
    for task in ("B1", "B2"):
        for name in ("model.safetensors", "method.safetensors"):
            assert_close(load_file(str(got / "checkpoints" / task / name)),
                         load_file(str(expected / "checkpoints" / task / name)), f"{task}/{name}")
    want, doc = (json.loads((p / "metrics.json").read_text()) for p in (expected, got))
    assert doc["tasks"] == want["tasks"] and doc["matrix"].keys() == want["matrix"].keys()
    assert not (got / "partial").exists()


@pytest.mark.slow
def test_torchrun_and_nproc_train_and_resume_like_one_process(monkeypatch, tmp_path, tiny_world, cfg_path):
    """~45 s on 2 cores: two launches of 2 processes each."""
    reference = tmp_path / "reference"
    train(tiny_world, load_config(cfg_path, {"method.name": "mas"}), reference, device="cpu")
    args = ["train", "--data", tiny_world, "--config", cfg_path, "--method", "mas", "--device", "cpu"]

    out = tmp_path / "torchrun"
    done = run_cli(args + ["--out", out], ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "factlearn"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run written to") == 1  # rank 0 alone reports
    assert_runs_close(reference, out)
    assert json.loads((out / "run.json").read_text())["processes"] == 2

    # A single-process run stopped after the mid-task checkpoint at step 2 of B2, resumed by 2 ranks.
    cut = tmp_path / "cut"
    calls = iter(range(1, 100))
    original = factlearn.run.RunDir.save_partial

    def crash_on_second(*a, **k):
        folder = original(*a, **k)
        if next(calls) == 2:
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr(factlearn.run.RunDir, "save_partial", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_world, load_config(cfg_path, {"method.name": "mas"}), cut, device="cpu")
    monkeypatch.undo()
    assert [p.name for p in (cut / "partial").iterdir()] == ["B2-step000002"]
    done = run_cli(args + ["--out", cut, "--resume", "--nproc", "2"], ["-m", "factlearn"])
    assert done.returncode == 0, done.stderr
    assert_runs_close(reference, cut)


def test_errors_are_reported_once_and_nproc_passes_the_exit_code(tmp_path, tiny_world, cfg_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = run_cli(["train", "--data", tiny_world, "--config", cfg_path, "--out", out, "--device", "cpu",
                    "--nproc", "2"], ["-m", "factlearn"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("exists and is not empty") == 1, done.stderr  # rank 0 reports, rank 1 is quiet
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_settle_waits_until_the_caller_alone_holds_the_tensors():
    """Another holder (here an autograd graph, in a run gloo's worker thread) lets go later."""
    import threading
    import time

    t = torch.ones(2, requires_grad=True)
    graph = [(t * t).sum()]  # the graph saves t: its use count is above 1 while it lives
    assert t._use_count() > 1
    assert settle(t, limit_s=0.05) is False  # nobody let go: it gives up, it does not hang
    release = threading.Timer(0.2, graph.clear)
    start = time.monotonic()
    release.start()
    assert settle(t, torch.zeros(1)) is True
    assert time.monotonic() - start >= 0.15 and t._use_count() == 1


def test_nproc_is_refused_inside_torchrun(monkeypatch, tiny_world, cfg_path, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_world), "--config", str(cfg_path), "--out",
                                  str(tmp_path / "x"), "--nproc", "2"])
    assert r.exit_code == 2 and "already started by torchrun" in r.output, r.output
    assert not (tmp_path / "x").exists()


# --- the several-machines form of torchrun (docs/scaling.md), as one machine of one -----------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rendezvous", [
    "c10d",  # the documented form: the same command on every machine, node ranks from the rendezvous
    pytest.param("static", marks=pytest.mark.slow),  # --node-rank per machine, --master-addr/--master-port
])
def test_the_multi_machine_torchrun_form_trains_on_one_machine(tmp_path, tiny_world, cfg_path, rendezvous):
    """~12 s on 2 cores each."""
    port = free_port()
    if rendezvous == "c10d":
        launch = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "factlearn-test"]
    else:
        launch = ["--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    out = tmp_path / "run"
    args = ["train", "--data", tiny_world, "--config", cfg_path, "--tasks", "2", "--device", "cpu", "--out", out]
    done = run_cli(args, ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", *launch,
                          "-m", "factlearn"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run written to") == 1  # rank 0 alone reports
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2 and run["completed"] == ["B1", "B2"]
    assert not (out / "partial").exists()
