#!/usr/bin/env bash
# The sweep behind configs/demo.yaml's lambda: finetune and MAS (lambda 0.3 and 1) on the demo
# world, seeds 0 and 1, printing B1/B2 top-1 after B2 for each. Assumes factlearn is installed
# (scripts/setup.sh). About 6 training runs of 1-4 minutes each on a 2-core CPU.
# Usage: bash scripts/demo_sweep.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo-sweep}"
[ -d "$out/world" ] || factlearn synth "$out/world" --preset small --seed 0
runs=()
for seed in 0 1; do
    for spec in "finetune:0" "mas:0.3" "mas:1"; do
        method="${spec%%:*}"; lam="${spec##*:}"
        name="$out/$method-lam$lam-seed$seed"
        [ -f "$name/metrics.json" ] || factlearn train --data "$out/world" --config configs/demo.yaml \
            --method "$method" --lam "$lam" --seed "$seed" --out "$name"
        runs+=("$name")
    done
done
factlearn compare "${runs[@]}" --metric top1 --metric top5
