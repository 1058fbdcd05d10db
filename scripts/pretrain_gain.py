"""What pretraining the image tower buys: B1 learned from scratch vs from a pretrained backbone.

    python scripts/pretrain_gain.py --out OUT [--quick] [--pretrain-epochs N] [--config CFG]

Steps (each skipped when its output is complete, so an interrupted run continues):
1. OUT/world: the continual world (``synth --preset 6ds``; --quick: 60 facts x 40 images).
2. OUT/base: a base world sharing none of its facts (``synth --preset base --exclude OUT/world``).
3. OUT/pretrained: ``factlearn pretrain`` on the base world (configs/demo.yaml's model and optimizer).
4. OUT/runs/{scratch,pretrained}: task B1 of a random two-task split, trained with CFG (default
   configs/faithful.yaml: each task to a plateau of its validation top-1), once from scratch and
   once from the pretrained backbone.

5. With ``--continual M [M ...]``: OUT/continual/<M>-lam<λ>, both tasks of that split learned by each method
   from the pretrained backbone with CFG, ``--lam`` and ``method.importance_norm: mean`` (one λ fixed
   in advance, not tuned: a first look at the trade-off, not a result).

Writes OUT/pretrain_gain.json and prints markdown tables: the pretraining time, and per start the
epochs B1 trained, its validation top-1 after every epoch, its test top-1/top-5 and the time taken;
with --continual, per method B1 and B2 after B2. Every process runs with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def factlearn(*args: str) -> float:
    """Run ``python -m factlearn ARGS`` single-threaded; returns its wall time in seconds."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "factlearn", *args], check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="A small world and base world (minutes, not an hour).")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="Default 3 (--quick: 2).")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "faithful.yaml",
                   help="The continual run's config (model.pretrained is set here for the second run).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--continual", nargs="*", default=[], metavar="METHOD",
                   help="Also learn both tasks with these methods from the pretrained backbone (step 5).")
    p.add_argument("--lam", type=float, default=1.0, help="λ of the --continual methods (Ω mean-normalised).")
    args = p.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    world, base, pre = out / "world", out / "base", out / "pretrained"
    small = ["--facts", "60", "--images-per-fact", "40"] if args.quick else []
    times: dict[str, float] = {}
    if not (world / "world.json").is_file():
        times["synth world"] = factlearn("synth", str(world), "--preset", "6ds", "--seed", str(args.seed), *small)
    if not (base / "world.json").is_file():
        base_size = ["--facts", "100", "--images-per-fact", "20"] if args.quick else []
        times["synth base"] = factlearn("synth", str(base), "--preset", "base", "--exclude", str(world), *base_size)
    epochs = args.pretrain_epochs or (2 if args.quick else 3)
    if not (pre / "pretrain.json").is_file():
        times["pretrain"] = factlearn("pretrain", "--data", str(base), "--config", str(ROOT / "configs" / "demo.yaml"),
                                      "--out", str(pre), "--epochs", str(epochs), "--seed", str(args.seed),
                                      "--device", "cpu")
    both = out / "tasks-2.json"
    if not both.is_file():  # a random two-task split
        factlearn("split", str(world), "--tasks", "2", "--seed", "0", "--out", str(both))
    tasks = out / "tasks.json"
    if not tasks.is_file():  # its B1: the only task the runs of step 4 train
        doc = json.loads(both.read_text())
        doc["tasks"] = doc["tasks"][:1]
        tasks.write_text(json.dumps(doc, indent=1) + "\n")
    cfg = yaml.safe_load(args.config.read_text())
    results = {}
    for start in ("scratch", "pretrained"):
        run = out / "runs" / start
        own = dict(cfg, model={**cfg.get("model", {}), **({"pretrained": str(pre.resolve())} if start == "pretrained"
                                                          else {})})
        cfg_file = out / f"config-{start}.yaml"
        cfg_file.write_text(yaml.safe_dump(own, sort_keys=False))
        if not (run / "checkpoints" / "B1" / "state.json").is_file():
            resume = ["--resume"] if (run / "run.json").is_file() else []
            times[f"train {start}"] = factlearn("train", "--data", str(world), "--config", str(cfg_file), "--tasks-file",
                                                str(tasks), "--method", "finetune", "--out", str(run), "--seed",
                                                str(args.seed), "--device", "cpu", *resume)
        info = json.loads((run / "run.json").read_text())
        final = json.loads((run / "metrics.json").read_text())["final"]["B1"]
        results[start] = {"epochs": info["epochs"]["B1"], "validation_top1": info.get("validation", {}).get("B1"),
                          "test_top1": final["top1"], "test_top5": final["top5"],
                          "seconds": times.get(f"train {start}")}
    continual = {}
    for method in args.continual:
        run = out / "continual" / f"{method}-lam{args.lam:g}"
        own = dict(cfg, model={**cfg.get("model", {}), "pretrained": str(pre.resolve())},
                   method={**cfg.get("method", {}), "lam": args.lam, "importance_norm": "mean"})
        cfg_file = out / "config-continual.yaml"
        cfg_file.write_text(yaml.safe_dump(own, sort_keys=False))
        if not (run / "checkpoints" / "B2" / "state.json").is_file():
            resume = ["--resume"] if (run / "run.json").is_file() else []
            times[f"continual {method}"] = factlearn(
                "train", "--data", str(world), "--config", str(cfg_file), "--tasks-file", str(both), "--method", method,
                "--out", str(run), "--seed", str(args.seed), "--device", "cpu", *resume)
        doc = json.loads((run / "metrics.json").read_text())
        continual[method] = {"epochs": json.loads((run / "run.json").read_text())["epochs"],
                             "b1_after_b1": doc["matrix"]["top1"][0][0],
                             **{f"{t}_{m}": doc["final"][t][m] for t in ("B1", "B2") for m in ("top1", "top5")}}
    record = json.loads((pre / "pretrain.json").read_text())
    summary = {"quick": args.quick, "pretrain": {k: record.get(k) for k in ("seconds", "epochs_trained", "facts",
                                                                           "test_top1", "test_top5")},
               "runs": results, "continual": {"lam": args.lam, "runs": continual}, "times_this_invocation": times}
    (out / "pretrain_gain.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"pretraining: {record.get('epochs_trained')} epochs in {record.get('seconds')} s "
          f"(base-world test top-1 {record.get('test_top1')})\n")
    print("| B1 from | epochs to plateau | validation top-1 per epoch | test top-1 | test top-5 | time (s) |")
    print("|---|---:|---|---:|---:|---:|")
    for start, r in results.items():
        curve = ", ".join(f"{100 * v:.1f}" for v in r["validation_top1"] or [])
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        print(f"| {start} | {r['epochs']} | {curve} | {100 * r['test_top1']:.1f} | {100 * r['test_top5']:.1f} | {secs} |")
    if continual:
        print(f"\n| method (λ {args.lam:g}, Ω mean-normalised) | epochs B1, B2 | B1 after B1 | B1 after B2 | "
              "B2 after B2 | mean | top-5 B1, B2 |")
        print("|---|---|---:|---:|---:|---:|---|")
        for method, r in continual.items():
            mean = (r["B1_top1"] + r["B2_top1"]) / 2
            print(f"| {method} | {r['epochs']['B1']}, {r['epochs']['B2']} | {100 * r['b1_after_b1']:.1f} | "
                  f"{100 * r['B1_top1']:.1f} | {100 * r['B2_top1']:.1f} | {100 * mean:.1f} | "
                  f"{100 * r['B1_top5']:.1f}, {100 * r['B2_top5']:.1f} |")


if __name__ == "__main__":
    main()
