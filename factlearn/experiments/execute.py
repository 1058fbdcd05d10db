"""Running a plan: each run's ``factlearn train`` child (skipped when complete, resumed when
started), then its probes, ``jobs`` runs at a time.

A run whose metrics.json covers every task is complete; one with a run.json continues with
``--resume``; a run made with another config than the one asked for now is refused before
anything starts (:func:`config_mismatch`, the comparison ``factlearn train --resume`` makes).

A run with a parent (:func:`factlearn.experiments.plan.assign_parents`) waits for it and starts
from its first task (``factlearn train --start-from``) when the parent has that checkpoint and the
two configs differ only in the method section; otherwise it trains its first task itself.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, from_dict
from ..errors import UserError
from ..io import read_json, read_yaml_document
from ..results import Metrics
from ..run import RunDir
from ..training.state import RESUME_MAY_CHANGE, comparable_config, flatten_config
from .children import call, child_env
from .plan import Plan, RunSpec


def train_command(plan: Plan, run: RunSpec, device: str, parent: Path | None = None) -> list[str]:
    """The ``factlearn train`` command of a run; ``--resume`` once the run directory holds a run,
    ``--start-from parent`` for a fresh run that takes its first task from ``parent``."""
    cmd = [sys.executable, "-m", "factlearn", "train", "--data", str(plan.data_of(run.sequence)),
           "--config", str(plan.config_file(run.config or run.method)), "--tasks-file", str(plan.tasks_file(run.sequence)),
           "--out", str(plan.run_dir(run)), "--seed", str(run.seed), "--device", device]
    if run.importance:
        cmd += ["--importance-data", str(plan.view_dir(run.importance))]
    if RunDir(plan.run_dir(run)).is_run():
        cmd.append("--resume")
    elif parent is not None:
        cmd += ["--start-from", str(parent)]
    return cmd


def usable_parent(plan: Plan, run: RunSpec) -> Path | None:
    """The parent's run directory when ``run`` can start from its first task: the parent has a
    checkpoint after it and the two config files differ only in the method section. None otherwise
    (then the run trains its first task itself)."""
    if run.parent is None or run.parent not in plan.runs:
        return None
    parent = plan.runs[run.parent]
    folder = plan.run_dir(parent)
    try:
        done = read_json(folder / "run.json").get("completed") or []
        configs = [flatten_config(read_yaml_document(plan.config_file(r.config or r.method))) for r in (run, parent)]
    except (UserError, OSError, AttributeError):  # not written yet, or not a config: train it whole
        return None
    child, theirs = ({k: v for k, v in c.items() if not k.startswith("method.")} for c in configs)
    return folder if done and child == theirs else None


def probe_command(plan: Plan, run: RunSpec, view: str, device: str) -> list[str]:
    """The child that evaluates every checkpoint of a run on a view (:mod:`.probe`)."""
    return [sys.executable, "-m", "factlearn.experiments.probe", str(plan.run_dir(run)), str(plan.view_dir(view)),
            str(plan.probe_file(run, view)), device]


def run_complete(run_dir: Path) -> bool:
    """metrics.json has a row of the accuracy matrix for every task of the sequence."""
    metrics = read_metrics(run_dir)
    return metrics is not None and metrics.complete()


def run_diverged(run_dir: Path) -> dict | None:
    """The divergence a run recorded (diverged.json: its task and message), None if it has none.
    A diverged run is a result (its lambda is too large for the optimizer): it is not trained again."""
    try:
        return RunDir(run_dir).diverged()
    except UserError:
        return None


def read_metrics(run_dir: Path) -> Metrics | None:
    """A run's metrics.json, None when it has none yet (or an unreadable one: the run is not done)."""
    try:
        return Metrics.read(run_dir)
    except UserError:
        return None


def read_probe(plan: Plan, run: RunSpec, view: str) -> dict | None:
    """The probe of a run on a view when complete: it covers every task, and is newer than the
    run's metrics. None otherwise (missing, unreadable, or older than the run)."""
    path, metrics = plan.probe_file(run, view), read_metrics(plan.run_dir(run))
    try:
        doc = read_json(path)
    except UserError:
        return None
    complete = (metrics is not None and isinstance(doc, dict) and list(doc.get("after", {})) == metrics.tasks
                and path.stat().st_mtime >= metrics.path.stat().st_mtime)
    return doc if complete else None


def config_mismatch(plan: Plan, run: RunSpec, cfg: dict) -> str | None:
    """How an existing run's config.yaml differs from ``cfg`` with the run's task file and
    importance data, by the keys ``factlearn train --resume`` compares (None: it does not)."""
    run_dir = RunDir(plan.run_dir(run))
    if not run_dir.file("config.yaml").is_file():
        return None
    want = from_dict(Config, cfg)
    want.split.tasks_file = str(plan.tasks_file(run.sequence).resolve())
    want.method.importance_data = str(plan.view_dir(run.importance)) if run.importance else None
    num_facts = len(read_json(run_dir.file("facts.json"))) if run_dir.file("facts.json").is_file() else 0
    saved = comparable_config(run_dir.config(), num_facts)
    if want.model.pretrained and isinstance(saved.get("model.backbone_config"), dict):
        # a run records the pretrained folder's whole architecture there (resolve_pretrained): the keys
        # the config gives must agree, the others come from the folder
        saved["model.backbone_config"] = {k: saved["model.backbone_config"].get(k) for k in want.model.backbone_config}
    for key, value in comparable_config(want, num_facts).items():
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            return f"{key} is {saved.get(key)!r} there, {value!r} here"
    return None


@dataclass
class Outcome:
    """What became of a run in :func:`execute`."""

    run: RunSpec
    status: str  # "trained", "resumed", "probed", "skipped" (all done already), "diverged", "failed", "interrupted"
    train_s: float = 0.0  # wall seconds of training
    train_cpu_s: float = 0.0  # CPU seconds of the training process (what a busy machine does not inflate)
    probe_s: float = 0.0
    message: str = ""


def execute(plan: Plan, runs: list[RunSpec], jobs: int, device: str) -> list[Outcome]:
    """Train every run not complete yet and evaluate it on its probe views; ``jobs`` at a time.

    A failed run is reported and the others go on. Ctrl-C reaches the training processes too
    (they save a checkpoint and stop); runs not started yet are not started.
    """
    lock, done_count, stop = threading.Lock(), [0], threading.Event()
    env = child_env(plan.out / "cache")
    ids = {run.id for run in runs}
    finished = {run.id: threading.Event() for run in runs}
    # parents first: a run waits for its parent (below), which must then have started already
    runs = sorted(runs, key=lambda r: r.parent is not None and r.parent in ids)

    def work(run: RunSpec) -> Outcome:
        try:
            return run_one(run)
        finally:
            finished[run.id].set()

    def run_one(run: RunSpec) -> Outcome:
        if run.parent in finished and not run_complete(plan.run_dir(run)):
            finished[run.parent].wait()
        if stop.is_set():
            return Outcome(run, "interrupted")
        log = plan.log_file(run.id)
        out = Outcome(run, "skipped")
        t0 = time.perf_counter()
        diverged = run_diverged(plan.run_dir(run))
        if diverged is not None and not run_complete(plan.run_dir(run)):
            out.status, out.message = "diverged", f"in {diverged.get('task')} (recorded; not trained again)"
        elif not run_complete(plan.run_dir(run)):
            cmd = train_command(plan, run, device, usable_parent(plan, run))
            out.status = "resumed" if "--resume" in cmd else "trained"
            rc, out.train_cpu_s = call(cmd, log, env)
            out.train_s = time.perf_counter() - t0
            if rc != 0 and run_diverged(plan.run_dir(run)) is not None:
                out.status, out.message = "diverged", f"see {log}"
            elif rc != 0 or not run_complete(plan.run_dir(run)):
                out.status, out.message = "failed", f"train exited with {rc}; see {log}"
        t1 = time.perf_counter()
        for view in run.probes if out.status not in ("failed", "diverged") else ():
            if read_probe(plan, run, view) is not None or stop.is_set():
                continue
            out.status = "probed" if out.status == "skipped" else out.status
            rc, _ = call(probe_command(plan, run, view, device), log, env)
            if rc != 0:
                out.status, out.message = "failed", f"probe {view} exited with {rc}; see {log}"
                break
        out.probe_s = time.perf_counter() - t1
        with lock:
            done_count[0] += 1
            took = f" in {out.train_s + out.probe_s:.0f} s" if out.status != "skipped" else ""
            print(f"[{done_count[0]}/{len(runs)}] {run.id}: {out.status}{took} {out.message}".rstrip(), flush=True)
        return out

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    futures = [pool.submit(work, run) for run in runs]
    try:
        return [f.result() for f in as_completed(futures)]
    except KeyboardInterrupt:
        stop.set()
        print("interrupted: waiting for the running jobs to save a checkpoint", file=sys.stderr, flush=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
