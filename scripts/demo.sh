#!/usr/bin/env bash
# Install, generate the small built-in world, train B1 -> B2 with finetune and with MAS, and
# print B1/B2 top-1 and top-5 after the second task. About 5 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
factlearn synth "$out/world" --preset small --seed 0
for method in finetune mas; do
    factlearn train --data "$out/world" --config configs/demo.yaml --method "$method" --out "$out/$method"
done
echo
echo "After B2 (standard protocol: each task's images ranked among that task's facts):"
factlearn compare "$out/finetune" "$out/mas" --metric top1 --metric top5
echo
echo "Runs in $out. Try: factlearn query $out/mas $out/world/images/000000.png"
