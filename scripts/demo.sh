#!/usr/bin/env bash
# Install, generate the small built-in world, train B1 -> B2 with finetune and with MAS, and
# print B1/B2 top-1 and top-5 after the second task under both protocols. 1 min 47 s on a 2-core
# CPU once .venv is installed (measured once, with other jobs loading the cores: docs/demo.md); the
# time scales with the machine's load.
set -euo pipefail
caller="$PWD"
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
factlearn synth "$out/world" --preset small --seed 0
for method in finetune mas; do
    factlearn train --data "$out/world" --config configs/demo.yaml --method "$method" --out "$out/$method"
done
echo
echo "After B2. Standard protocol: each task's images ranked among that task's own 24 facts (top-5 is"
echo "near 1 for any model); generalized: among every fact seen so far (all 48 after B2)."
factlearn compare "$out/finetune" "$out/mas" --metric top1 --metric top5
# A TEST image (never trained on), and paths that work as typed from where the demo was started.
image="$(grep -m1 '"split": "test"' "$out/world/manifest.jsonl" | sed -E 's/.*"image": "([^"]+)".*/\1/')"
rel() { .venv/bin/python -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$caller"; }
echo
echo "Runs in $(rel "$out"). Try, on a test image:"
echo "  $(rel .venv/bin/factlearn) query $(rel "$out/mas") $(rel "$out/world/$image")"
