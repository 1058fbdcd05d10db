"""scripts/gpu_check.sh where there is no GPU: its syntax, its one-line exit, and (slow) a dry run of
every step on the CPU at toy sizes, which proves its commands and options exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def run_script(out: Path, **env: str) -> subprocess.CompletedProcess:
    # The venv's python first on PATH, as the script expects when it is run from a checkout.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=480,
                          env={**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", **env})


def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_a_gpu_it_says_so_on_one_line_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU from torch: the same answer on a machine with one.
    done = run_script(tmp_path / "out.json", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stdout
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_a_dry_run_on_the_cpu_passes_every_step_and_writes_one_json(tmp_path):
    """1-2 min on 2 shared cores."""
    out = tmp_path / "figures.json"
    done = run_script(out, GPU_CHECK_DEVICE="cpu", GPU_CHECK_SMALL="1")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["device"] == "cpu"
    steps = ["cuda-tests", "synth", "train", "resume", "search", "bench", "bench-eval"]
    assert list(doc["steps"]) == steps and all(doc["steps"][s]["exit"] == 0 for s in steps)
    assert doc["cuda_tests"]["failures"] == doc["cuda_tests"]["errors"] == 0
    assert doc["train"]["device"] == "cpu" and set(doc["train"]["final_top1"]) == {"B1", "B2"}
    resume = doc["resume"]
    assert resume["interrupted_exit"] == 130 and resume["bit_identical"] and resume["optimizer_tensors"] > 0
    assert doc["search"]["ids_identical_fraction"] == 1.0 and doc["search"]["max_score_diff"] <= 1e-6
    assert doc["bench"]["rows"] and doc["bench_eval"]["rows"]
