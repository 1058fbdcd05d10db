#!/usr/bin/env python
"""Training throughput with 1 process vs N processes (DistributedDataParallel; gloo on CPU).

    OMP_NUM_THREADS=1 python scripts/bench_ddp.py [--world DIR] [--nproc 2] [--epochs 3] [--repeats 2] [--batch-size 64]

Generates the small built-in world (48 facts x 80 images at 64 px; a few seconds) unless --world
names one, then times the training of task B1 (``factlearn.training.task.train_task``: its steps, with the
default model, ``--batch-size`` (default 64) as the global batch, method finetune; decoding, importance
and evaluation are not timed) in three set-ups:

- 1 process, T threads (T = OMP_NUM_THREADS, default 1): the baseline;
- N processes, T threads each (torch.multiprocessing, gloo): DDP with GlobalBatchNorm (the steps
  of one process);
- the same with ``train.sync_batch_norm: false`` (each rank's own batch-norm statistics);
- 1 process, N*T threads: the same cores used by one process instead.

Each rank times from a barrier to the end of its task; the slowest rank counts. Prints images/s
(training images x epochs / seconds, best of --repeats) and the ratios to the baseline, and the
latency of one small gloo all-reduce: a DDP step makes about 2 per batch-norm layer (9 in the
default model) plus the gradients' and the loss's, which is what a CPU machine pays for.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from factlearn.config import load_config
from factlearn.data.manifest import load_dataset
from factlearn.data.synth import generate_world
from factlearn.distributed import SINGLE, Context, join_group
from factlearn.training import Session
from factlearn.training.task import train_task


def time_task(world: str, epochs: int, ctx: Context, sync_bn: bool = True, batch: int = 64) -> tuple[float, int]:
    """Seconds to train task B1 on this rank, and the images trained on (all ranks together)."""
    cfg = load_config(None, {"train.epochs": epochs, "train.checkpoint_every": 0, "method.name": "finetune",
                             "train.sync_batch_norm": sync_bn, "train.batch_size": batch})
    s = Session(load_dataset(world), cfg, 0, torch.device("cpu"), False, ctx)
    ctx.barrier()
    start = time.perf_counter()
    train_task(s, 0)
    ctx.barrier()
    return time.perf_counter() - start, epochs * len(s.rows(s.tasks[0], test=False))


def rank_main(rank: int, nproc: int, threads: int, sync_bn: bool, port: int, world: str, epochs: int,
              batch: int, out: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nproc)
    try:
        ctx, _, _ = join_group(torch.device("cpu"))
        seconds, images = time_task(world, epochs, ctx, sync_bn, batch)
        probe = torch.zeros(130)  # about a batch-norm layer's statistics
        start = time.perf_counter()
        for _ in range(200):
            dist.all_reduce(probe)
        latency = (time.perf_counter() - start) / 200
        if ctx.is_main:
            Path(out).write_text(f"{seconds} {images} {latency}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Now and then (about 1 run in 4 here) a spawned rank aborted at interpreter exit, after its work
    # and with no Python frame ("terminate called without an active exception": a native thread
    # still joinable at teardown). The result is written; skip the native teardown.
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(setup: str, world: str, epochs: int, batch: int, nproc: int, threads: int, sync_bn: bool,
            tmp: Path) -> float:
    """images/s of one run of ``setup``."""
    if nproc == 1:
        torch.set_num_threads(threads)
        seconds, images = time_task(world, epochs, SINGLE, batch=batch)
    else:
        out = tmp / "result.txt"
        mp.spawn(rank_main, args=(nproc, threads, sync_bn, free_port(), world, epochs, batch, str(out)), nprocs=nproc)
        seconds, images, latency = (float(v) for v in out.read_text().split())
        setup += f" [all-reduce {latency * 1e6:.0f} us]"
    print(f"  {setup:<56} {images / seconds:8.1f} images/s  ({seconds:.1f} s for {int(images)} images)", flush=True)
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=None, help="a data directory (default: generate the small world)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="train.batch_size, the global batch")
    args = parser.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        world = args.world
        if world is None:
            world = tmp / "world"
            generate_world(world, seed=0, preset="small", workers=1)
        setups = [("1 process", 1, threads, True), (f"{args.nproc} processes (DDP)", args.nproc, threads, True),
                  (f"{args.nproc} processes (DDP, per-rank batch norm)", args.nproc, threads, False),
                  (f"1 process, {args.nproc * threads} threads", 1, args.nproc * threads, True)]
        best = {name: 0.0 for name, *_ in setups}
        print(f"task B1 of {world}, {args.epochs} epochs, global batch {args.batch_size}, {threads} thread(s) per process, "
              f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}", flush=True)
        for r in range(args.repeats):
            print(f"repeat {r + 1}", flush=True)
            for name, nproc, n_threads, sync_bn in setups:
                best[name] = max(best[name], measure(name, str(world), args.epochs, args.batch_size, nproc, n_threads, sync_bn, tmp))
    base = best[setups[0][0]]
    print(f"\nbest of repeats (load average now {os.getloadavg()[0]:.1f}):")
    for name, *_ in setups:
        print(f"  {name:<40} {best[name]:8.1f} images/s  x{best[name] / base:.2f}")


if __name__ == "__main__":
    main()
