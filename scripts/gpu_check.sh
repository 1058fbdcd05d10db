#!/usr/bin/env bash
# The checks that need a GPU, in one run of at most 8 minutes on a machine with one NVIDIA GPU:
#
#   bash scripts/gpu_check.sh [OUT.json]        # default gpu_check.json
#
# 1. cuda-tests   the CUDA-marked tests (pytest -m cuda)
# 2. synth        the demo's small world (48 facts, 3,840 images at 64 px)
# 3. train        a short demo-sized run on the GPU: configs/demo.yaml, MAS, 4 epochs per task
# 4. resume       resume on the GPU: a run stopped by SIGTERM after its first mid-task checkpoint
#                 (train.checkpoint_every) and continued with --resume against an uninterrupted
#                 run, both with torch's deterministic algorithms; the checkpoint must hold the CUDA
#                 RNG and the optimizer state, and the weights and method state must be bit-identical
#                 (or, where torch warned of a nondeterministic kernel, within 1e-3 relative)
# 5. search       exact flat search with torch on the GPU (factlearn.retrieval.torch_search) against
#                 FAISS flat on the CPU: ids, scores, queries/s
# 6. bench        scripts/bench.py --quick, importance / step / pipeline (its GPU rows: exact
#                 importance vs the batch-size-1 loop, steps under bf16 autocast)
# 7. bench-eval   scripts/bench.py --quick --only eval (FactIndex flat vs scikit-learn, on the CPU)
#
# Every step runs under `timeout`, capped so that the whole run ends within 8 minutes; each one's
# time and exit code, its figures and, for a failed step, the end of its log go into ONE JSON file,
# written even when a step fails (the script then exits non-zero). Without a GPU it says so on one
# line and exits 0. GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 runs every step on the CPU at toy sizes,
# to check the script itself where there is no GPU (tests/test_gpu_check.py, marked slow).
set -euo pipefail

out_json="$(realpath -m "${1:-gpu_check.json}")"
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] && export PATH="$PWD/.venv/bin:$PATH"
device="${GPU_CHECK_DEVICE:-cuda}"

if [[ "$device" == cuda* ]] && [[ "$(python -c 'import torch; print(torch.cuda.is_available())')" != True ]]; then
    echo "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check"
    exit 0
fi

if [[ "${GPU_CHECK_SMALL:-0}" == 1 ]]; then  # toy sizes: checks the commands, not the GPU
    world_args=(--facts 12 --images-per-fact 10 --size 32 --seed 3)
    config=configs/tiny.yaml epochs=2 every=2 search_size=(3000 300)
    bench_args=(--quick --repeats 1 --only step)
else
    world_args=(--preset small --seed 0)
    config=configs/demo.yaml epochs=4 every=5 search_size=(200000 5000)
    bench_args=(--quick --repeats 2 --only importance step pipeline)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
export FACTLEARN_IMAGE_CACHE="$work/cache"  # the world is decoded once for the five runs
deadline=$((SECONDS + 470))  # 8 minutes, less the JSON at the end
: >"$work/steps.tsv"

# step NAME SECONDS COMMAND...: run COMMAND (its output to NAME.log) under timeout, at most until
# the deadline; record its time and exit code.
step() {
    local name="$1" limit="$2" rc=0 start end
    shift 2
    ((limit > deadline - SECONDS)) && limit=$((deadline - SECONDS))
    if ((limit < 5)); then
        printf '%s\t0\t124\n' "$name" >>"$work/steps.tsv"
        echo "== $name: no time left" >&2
        return 124
    fi
    echo "== $name (at most ${limit} s)"
    start="$(date +%s.%N)"
    timeout --kill-after=3 "$limit" "$@" >"$work/$name.log" 2>&1 || rc=$?
    end="$(date +%s.%N)"
    printf '%s\t%s\t%s\n' "$name" "$(awk "BEGIN { printf \"%.1f\", $end - $start }")" "$rc" >>"$work/steps.tsv"
    echo "   exit $rc, $(tail -n 1 "$work/steps.tsv" | cut -f 2) s"
    return "$rc"
}

# The one JSON file, from whatever the steps left in $work: written on every exit.
report() {
    local rc=$?
    python - "$work" "$out_json" "$device" "$rc" <<'PY' || rc=1
import json, platform, sys, xml.etree.ElementTree as ET
from pathlib import Path

import torch

work, out, device, rc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def read(path):
    return json.loads(path.read_text()) if path.is_file() else None


doc = {"ok": rc == 0, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "python": platform.python_version(), "steps": {}}
for line in (work / "steps.tsv").read_text().splitlines():
    name, seconds, code = line.split("\t")
    doc["steps"][name] = {"seconds": float(seconds), "exit": int(code)}
    if int(code) != 0 and (work / f"{name}.log").is_file():
        doc["steps"][name]["log_tail"] = (work / f"{name}.log").read_text(errors="replace").splitlines()[-40:]
if (work / "cuda-tests.xml").is_file():
    suite = ET.parse(work / "cuda-tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    doc["cuda_tests"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
run = work / "demo"
if (run / "metrics.json").is_file():
    metrics = read(run / "metrics.json")
    doc["train"] = {"device": read(run / "run.json")["device"], "method": metrics["method"],
                    "final_top1": {task: m["top1"] for task, m in metrics["final"].items()},
                    "final_top5": {task: m["top5"] for task, m in metrics["final"].items()}}
for key in ("resume", "search"):
    if (work / f"{key}.json").is_file():
        doc[key] = read(work / f"{key}.json")
for key, name in (("bench", "bench.json"), ("bench_eval", "bench-eval.json")):
    if (work / name).is_file():
        doc[key] = read(work / name)
out.write_text(json.dumps(doc, indent=2))
print(f"gpu_check: {'all steps passed' if rc == 0 else 'FAILED'}; figures in {out}")
PY
    rm -rf "$work"
    exit "$rc"
}
trap report EXIT

step cuda-tests 75 python -m pytest -q -p no:cacheprovider -m cuda tests --junitxml="$work/cuda-tests.xml"
step synth 45 factlearn synth "$work/world" "${world_args[@]}"
step train 70 factlearn train --data "$work/world" --config "$config" --method mas --epochs "$epochs" \
    --device "$device" --out "$work/demo"

step resume 110 python - "$work" "$config" "$device" "$epochs" "$every" <<'PY'
import json, os, re, signal, subprocess, sys, time
from pathlib import Path

import yaml
from safetensors.torch import load_file

work, config, device, epochs, every = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
cfg = yaml.safe_load(Path(config).read_text())
cfg.setdefault("train", {})["checkpoint_every"] = every
(work / "resume.yaml").write_text(yaml.safe_dump(cfg))
# factlearn train under torch's deterministic algorithms (warning where a kernel has none), so that
# an uninterrupted and a resumed run can be compared to the bit on the GPU too.
launch = ("import runpy, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
          "runpy.run_module('factlearn', run_name='__main__')")
env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
if device == "cpu":  # CPU kernels round alike from run to run with one thread only (docs/run-directory.md)
    env["OMP_NUM_THREADS"] = "1"


def train(out, *extra):
    return [sys.executable, "-c", launch, "train", "--data", str(work / "world"), "--config", str(work / "resume.yaml"),
            "--method", "mas", "--epochs", epochs, "--device", device, "--out", str(work / out), *extra]


logs = []


def run(args, wait=True):
    logs.append(work / f"resume-{len(logs)}.log")
    with open(logs[-1], "w") as log:
        p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return p.wait() if wait else p


figures = {"checkpoint_every": every}
start = time.perf_counter()
assert run(train("uninterrupted")) == 0, "the uninterrupted run failed"
figures["uninterrupted_s"] = round(time.perf_counter() - start, 1)
p = run(train("cut"), wait=False)
partial = work / "cut" / "partial"
while p.poll() is None and not list(partial.glob("*/state.json")):
    time.sleep(0.02)
if p.poll() is None:
    p.send_signal(signal.SIGTERM)  # as Ctrl-C: stop after the current step, with a checkpoint there
figures["interrupted_exit"] = p.wait()
assert figures["interrupted_exit"] == 130, f"the run was not interrupted: exit {figures['interrupted_exit']}"
stops = sorted(partial.glob("*/state.json"))
figures["stopped_at"] = stops[-1].parent.name if stops else "a task's end"
if stops:  # mid-task: what the checkpoint holds besides the weights
    trainer = load_file(str(stops[-1].parent / "trainer.safetensors"))
    figures["optimizer_tensors"] = sum(k.startswith("optimizer.") for k in trainer)
    figures["rng"] = sorted(k for k in trainer if k.startswith("rng."))
    assert figures["optimizer_tensors"] > 0, "no optimizer state in the mid-task checkpoint"
    assert device == "cpu" or "rng.cuda" in trainer, "no CUDA RNG state in the mid-task checkpoint"
assert run(train("cut", "--resume")) == 0, "--resume failed"
figures["nondeterministic_kernels"] = sorted({m for log in logs for m in re.findall(
    r"(\S+) does not have a deterministic implementation", log.read_text(errors="replace"))})
worst, identical = 0.0, True
for task in ("B1", "B2"):
    for name in ("model.safetensors", "method.safetensors"):
        want = load_file(str(work / "uninterrupted" / "checkpoints" / task / name))
        got = load_file(str(work / "cut" / "checkpoints" / task / name))
        assert want.keys() == got.keys(), f"{task}/{name}: other tensors"
        for key, w in want.items():
            identical &= bool((got[key] == w).all())
            if w.is_floating_point() and w.numel():
                worst = max(worst, ((got[key] - w).abs().max() / w.abs().max().clamp(min=1e-12)).item())
figures.update(bit_identical=identical, max_relative_diff=worst)
(work / "resume.json").write_text(json.dumps(figures))
print(json.dumps(figures))
assert identical or (figures["nondeterministic_kernels"] and worst <= 1e-3), "the resumed run differs"
PY

step search 40 python - "$work" "$device" "${search_size[@]}" <<'PY'
import json, sys, time
from pathlib import Path

import numpy as np
import torch

from factlearn.retrieval.index import FactIndex
from factlearn.retrieval.sharded import ShardedFactIndex
from factlearn.retrieval.torch_search import TorchFlatSearch

work, device, n, nq = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
facts = rng.standard_normal((n, 192)).astype(np.float32)
queries = rng.standard_normal((nq, 192)).astype(np.float32)
faiss_index, torch_index = FactIndex(facts), TorchFlatSearch(facts, device=device)
torch_index.search(queries[:100], 10)  # warm-up: kernels, allocator


def timed(index):
    start = time.perf_counter()
    found = index.search(queries, 10)  # returns numpy arrays: the GPU work is done
    return found, time.perf_counter() - start


(want_s, want_i), t_faiss = timed(faiss_index)
(got_s, got_i), t_torch = timed(torch_index)
figures = {"facts": n, "queries": nq, "k": 10, "dim": 192,
           "faiss_cpu_queries_per_s": nq / t_faiss, "torch_queries_per_s": nq / t_torch,
           "ids_identical_fraction": float((got_i == want_i).mean()),
           "max_score_diff": float(np.abs(got_s - want_s).max()),
           "sharded_default_devices": [str(d) for d in ShardedFactIndex(192).devices]}
(work / "search.json").write_text(json.dumps(figures))
print(json.dumps(figures))
# Ids differ only where two facts score within float rounding (about 1e-7) of each other.
assert figures["ids_identical_fraction"] >= 0.999 and figures["max_score_diff"] <= 1e-6, figures
PY

step bench 150 python scripts/bench.py "${bench_args[@]}" --json "$work/bench.json"
step bench-eval 60 python scripts/bench.py --quick --repeats 1 --only eval --json "$work/bench-eval.json"
