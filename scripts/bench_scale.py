#!/usr/bin/env python
"""The whole pipeline at growing size (issue 18): data -> decoded-image store -> train two tasks,
one epoch each -> MAS importance -> evaluation (both protocols) -> query, per stage the seconds, the
peak resident memory and the growth factor between sizes.

    python scripts/bench_scale.py [--quick] [--sizes 2000,20000,200000] [--json OUT] [--work DIR]

Sizes are facts of the large built-in world (``factlearn synth --preset lsc``, 4 images per fact
at 32 px: 200,000 facts are 800,000 images); ``--quick`` stops at 20,000. Every stage is a
child process (``python -m factlearn ...``, OMP_NUM_THREADS=1 unless set), so its peak resident
memory is its own (``ru_maxrss`` from ``wait4``):

- ``data``: ``factlearn synth`` (2 worker processes; the peak is the parent's);
- ``store``: decoding every image into the on-disk store that the later stages read
  (FACTLEARN_IMAGE_CACHE=WORK/F/cache);
- ``train``, ``importance``, ``evaluate``: one ``factlearn train --method mas --tasks 2 --epochs 1``;
  the importance and evaluation times are the phases it prints (after each task, both protocols),
  ``train`` is the rest of its wall time (start-up included); the three share the process's peak;
- ``query``: ``factlearn query --all-facts`` of 256 test images against every fact.

The model is small (ResNet 16-32-64, 32 px, 32 dims per slot) with ``loss.negatives: sampled``
(1,024 per step): at 2,000 facts a task's 1,000 facts are all drawn, as ``all`` would. Each task is
evaluated on at most 5,000 of its test images (``eval.max_images_per_task``): the work of the
evaluation is images x candidates, and the candidates grow with the facts.

JSON rows (a list): ``{"facts": F, "images": N, "stage": "...", "seconds": s, "peak_rss_mb": m}``,
and per stage above the first size ``growth`` (seconds over the previous size's) and ``linear``
(the size ratio): the target is growth <= 1.3 x linear and a peak of at most 6 GB at 200,000 facts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from factlearn.data.manifest import load_dataset

CONFIG = {
    "model": {"backbone": "resnet", "image_size": 32, "slot_dim": 32, "word_dim": 32, "text_hidden": 64,
              "backbone_config": {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1]}},
    "loss": {"negatives": "sampled", "num_negatives": 1024},
    "train": {"batch_size": 128, "lr": 0.001, "checkpoint_every": 0, "log": []},
    "method": {"lam": 1.0, "importance_batch_size": 128},
    "eval": {"batch_size": 512, "max_images_per_task": 5000},
}
PHASE = re.compile(r"^(?P<what>.+?): (?P<s>[0-9.]+) s$")  # factlearn.progress.phase's closing line
QUERY_IMAGES = 256


def child(cmd: list[str], log: Path, env: dict) -> tuple[float, float, str]:
    """Run ``cmd``; returns (wall seconds, peak RSS in MB of that process, its output). A failure
    stops the benchmark with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out = log.read_text(encoding="utf-8", errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_scale: {' '.join(cmd[:4])} failed; see {log}:\n{out[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out  # ru_maxrss: KiB on Linux


def phases(output: str, kind: str) -> float:
    """Seconds of the phases of ``kind`` ("importance", "evaluate") a training run printed."""
    total = 0.0
    for line in output.replace("\r", "\n").splitlines():
        m = PHASE.match(line.strip())
        if m and (m["what"].startswith("evaluate after") if kind == "evaluate" else f"{kind} after" in m["what"]):
            total += float(m["s"])
    return total


def store_stage(data: Path, log: Path, env: dict) -> tuple[float, float]:
    """Decode ``data``'s images into the store of ``env``'s FACTLEARN_IMAGE_CACHE: (seconds, peak RSS MB).
    open_images builds (or maps) the store without copying it into memory, as training opens it."""
    code = ("import sys; from factlearn.data.manifest import load_dataset; from factlearn.data.images import "
            "open_images; d = load_dataset(sys.argv[1]); "
            "s = open_images([r.image for r in d.records], 32, data_dir=d.root); assert s.mapped, 'no store'")
    s, rss, _ = child([sys.executable, "-c", code, str(data)], log, env)
    return s, rss


def store_again(data: Path, work: Path, env: dict) -> dict:
    """The store stage alone, over a data directory an earlier run generated, into a fresh store
    folder under ``work`` (removed afterwards): its row."""
    dataset = load_dataset(data)
    facts, images = len(dataset.facts), len(dataset.records)
    cache = work / "store-again"
    shutil.rmtree(cache, ignore_errors=True)
    (cache / "logs").mkdir(parents=True)
    try:
        s, rss = store_stage(data, cache / "logs" / "store.log", {**env, "FACTLEARN_IMAGE_CACHE": str(cache / "cache")})
    finally:
        shutil.rmtree(cache / "cache", ignore_errors=True)
    print(f"{facts:>8} facts  {'store':<10} {s:9.1f} s  {rss:8.0f} MB", flush=True)
    return {"facts": facts, "images": images, "stage": "store", "seconds": round(s, 2), "peak_rss_mb": round(rss, 1)}


def run_size(facts: int, work: Path, env: dict, preset: str = "lsc") -> list[dict]:
    """Every stage at ``facts`` facts; the rows of the JSON."""
    py = [sys.executable, "-m", "factlearn"]
    root = work / str(facts)
    if root.exists():
        shutil.rmtree(root)
    (root / "logs").mkdir(parents=True)
    data, run, cache = root / "data", root / "run", root / "cache"
    env = {**env, "FACTLEARN_IMAGE_CACHE": str(cache)}
    rows = []

    def row(stage: str, seconds: float, rss: float) -> None:
        rows.append({"facts": facts, "images": images, "stage": stage, "seconds": round(seconds, 2),
                     "peak_rss_mb": round(rss, 1)})
        print(f"{facts:>8} facts  {stage:<10} {seconds:9.1f} s  {rss:8.0f} MB", flush=True)

    images = 0
    s, rss, _ = child(py + ["synth", str(data), "--preset", preset, "--facts", str(facts), "--images-per-fact", "4",
                            "--size", "32", "--workers", "2"], root / "logs" / "data.log", env)
    dataset = load_dataset(data)
    images = len(dataset.records)
    row("data", s, rss)
    s, rss = store_stage(data, root / "logs" / "store.log", env)
    row("store", s, rss)
    config = root / "bench.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    s, rss, out = child(py + ["train", "--data", str(data), "--config", str(config), "--method", "mas", "--tasks", "2",
                              "--epochs", "1", "--out", str(run), "--seed", "0", "--device", "cpu"],
                        root / "logs" / "train.log", env)
    imp, ev = phases(out, "importance"), phases(out, "evaluate")
    row("train", s - imp - ev, rss)
    row("importance", imp, rss)
    row("evaluate", ev, rss)
    test = ([r.image for r in dataset.records if r.split == "test"] or [r.image for r in dataset.records])[:QUERY_IMAGES]
    listing = root / "query_images"
    listing.mkdir()
    for i, path in enumerate(test):  # a folder of links: one query command over many images
        os.symlink(Path(path).resolve(), listing / f"{i:04d}{Path(path).suffix}")
    s, rss, _ = child(py + ["query", str(run), str(listing), "--all-facts", "--top-k", "5", "--json",
                            "--device", "cpu"], root / "logs" / "query.log", env)
    row("query", s, rss)
    return rows


def growth(rows: list[dict]) -> None:
    """Add ``growth`` and ``linear`` to each row from the previous size's row of the same stage."""
    last: dict[str, dict] = {}
    for r in rows:
        prev = last.get(r["stage"])
        if prev is not None and prev["seconds"] > 0:
            r["growth"] = round(r["seconds"] / prev["seconds"], 2)
            r["linear"] = round(r["facts"] / prev["facts"], 2)
        last[r["stage"]] = r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Stop at 20,000 facts (at most about 10 minutes).")
    p.add_argument("--sizes", default=None, help="Comma-separated fact counts (default 2000,20000,200000).")
    p.add_argument("--json", type=Path, default=None, help="Write the rows there.")
    p.add_argument("--preset", default="lsc", help="World preset of factlearn synth (lsc; others for a smoke test).")
    p.add_argument("--work", type=Path, default=Path("results/bench-scale"), help="Scratch folder (replaced per size).")
    p.add_argument("--store-again", type=Path, metavar="DATA",
                   help="Measure only the store stage, over DATA (a data directory an earlier run generated, e.g. "
                        "WORK/200000/data), into a fresh store folder; its row goes to --json.")
    args = p.parse_args()
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    if args.store_again is not None:
        print(f"bench_scale: the store of {args.store_again}, load average {os.getloadavg()[0]:.1f}", flush=True)
        row = store_again(args.store_again.resolve(), args.work.resolve(), env)
        if args.json:
            args.json.write_text(json.dumps([row], indent=1) + "\n")
        return 0
    try:
        sizes = [int(v) for v in (args.sizes or "2000,20000,200000").split(",")]
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: expected comma-separated integers")
    if args.quick:
        sizes = [s for s in sizes if s <= 20_000]
    if not sizes or min(sizes) < 100:
        p.error("--sizes: at least one size, each at least 100 facts")
    print(f"bench_scale: sizes {sizes}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict] = []
    for facts in sizes:
        rows += run_size(facts, args.work.resolve(), env, args.preset)
        growth(rows)
        if args.json:  # after every size: a long run leaves what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    for r in rows:
        if "growth" in r:
            print(f"{r['stage']:<10} {r['facts']:>8} facts: x{r['growth']} time for x{r['linear']} facts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
