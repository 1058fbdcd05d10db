#!/usr/bin/env python
"""factlearn performance benchmarks (issue 8), side by side in one run.

    python scripts/bench.py [--quick] [--json OUT] [--repeats N] [--no-cuda] [--only SECTION ...]

Sections (each timing is repeated; the table shows min / median / max over the repeats, and
a ratio is taken per repeat from measurements made back to back):

1. importance  exact MAS importance, batched per-sample path vs a batch-size-1 loop
               (``mas_importance(batch_size=1, exact=False)``: at batch size 1 the gradient of
               the batch is the sample's own, so it is exact), samples/s, ratio, max rel. diff.;
               on the CPU also where the fast path's time goes (torch.profiler over
               per_sample's labelled ranges) and the bound on fast / ceiling if its rules cost
               no more than their per-sample matrix products.
2. step        one training step (factlearn.training.train_step, as the training loop takes it), finetune vs MAS, penalty active.
3. pipeline    images/s of the training loop fed from the uint8 in-memory store (index it,
               ``to_model_input``, forward/backward/step) vs from pre-loaded float tensors.
4. eval        FactIndex flat top-k vs scikit-learn NearestNeighbors(cosine, brute) on the same
               embeddings: identical top-k ids (ties aside), speed ratio. 6DS scale and large.
5. ann         HNSW and IVF (FactIndex) vs flat: recall@10 and queries/s over a parameter sweep,
               on clustered data (targets) and on fact-structured data (harder; for information).
6. memory      MAS state after 3 simulated tasks (tensor count); peak RSS of a short training
               run (child process) with MAS vs finetune.
7. negatives   one training step with ``loss.negatives: all`` vs ``sampled`` (K = the default
               num_negatives), per stage size F (facts of the task), on a world of the large
               preset: where sampling starts to pay (the step's candidate selection, wildcard
               exclusion, both towers, backward and optimizer step: the library's own code).

Synthetic embeddings (sections 4, 5) are NOT uniform random vectors, which have no neighbour
structure. ``fact_space`` mimics the fact table itself: a fact is <S>, <S,P> or <S,P,O>, each
slot's part the vector of a word shared by many facts (unit length, open slots zero), and an image
embedding is its fact's vector plus noise. ``clustered_space`` is a Gaussian mixture of low
intrinsic dimension mapped into the slot space. Section 4 uses fact_space; section 5 checks its
targets on clustered_space and reports fact_space (harder for graph and list indexes: many facts
tie on two of three slots) for information.

Timings use time.perf_counter after warm-up runs, torch's default thread count, and
torch.cuda.synchronize() around GPU work. Where CUDA is available, sections 1-3 and 6 also run on
the GPU (training steps under bf16 autocast); FAISS here is the CPU build.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from factlearn.config import Config, MethodConfig
from factlearn.continual import create_method, per_sample
from factlearn.continual.mas import mas_importance
from factlearn.data.images import to_model_input
from factlearn.data.manifest import load_dataset
from factlearn.data.synth import generate_world
from factlearn.distributed import Towers
from factlearn.retrieval.index import FactIndex
from factlearn.training import Session, StepInput, train_step
from factlearn.training.task import step_generator, step_input

# Sizes per mode. "full" is the scale; "quick" must finish within 5 minutes on 2 cores.
# IVF lists: 1 to 2 sqrt(F) (k-means over more lists costs minutes at 1M facts on 2 cores).
SIZES = {
    "quick": dict(world_facts=24, images_per_fact=20, importance_samples=64, pipeline_batches=4, steps=3,
                  eval_large=(50_000, 5_000), ann_facts=100_000, ann_queries=2_000, ann_M=32, ann_efc=80, ann_nlist=512,
                  repeats=3, rss_epochs=1, negatives_facts=[500, 1_000, 2_000, 4_000]),
    "full": dict(world_facts=48, images_per_fact=40, importance_samples=256, pipeline_batches=12, steps=5,
                 eval_large=(200_000, 50_000), ann_facts=1_000_000, ann_queries=10_000, ann_M=32, ann_efc=100, ann_nlist=1024,
                 repeats=5, rss_epochs=2, negatives_facts=[500, 1_000, 2_000, 5_000, 10_000, 20_000]),
}
SIX_DS = (186, 14_000)  # facts x test images of 6DS
K = 10
BATCH = 64


# --- measurement ---------------------------------------------------------------------------------
@dataclass
class Row:
    section: str
    name: str
    unit: str
    values: list[float]
    target: str = ""
    met: bool | None = None  # None: no target
    note: str = ""

    def stats(self) -> tuple[float, float, float]:
        return min(self.values), statistics.median(self.values), max(self.values)

    def line(self) -> str:
        status = "" if self.met is None else ("met" if self.met else "NOT MET")
        cells = " ".join(f"{_fmt(v):>10}" for v in self.stats())
        return f"{self.section:<10} {self.name:<62} {cells} {self.unit:<9} {self.target:<9} {status:<7} {self.note}".rstrip()


HEADER = f"{'section':<10} {'measurement':<62} {'min':>10} {'median':>10} {'max':>10} {'unit':<9} {'target':<9} status"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, section: str, name: str, unit: str, values, target: str = "", check=None, note: str = "") -> Row:
        """Record a measurement (one value or one per repeat); ``check`` tests the median against the target."""
        values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        row = Row(section, name, unit, values, target, None if check is None else bool(check(statistics.median(values))), note)
        self.rows.append(row)
        print(row.line(), flush=True)
        return row

    def table(self) -> str:
        return "\n".join([HEADER, "-" * len(HEADER)] + [r.line() for r in self.rows])


def _fmt(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:.3e}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def paired(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, interleaved within every repeat in A B, B A, A B ...
    order, so that neither always runs first (after a pause, or after the other warmed a cache)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
            out[name].append(timed(fn, device))
    return out


def ratio(rep: Report, section: str, name: str, top: list[float], bottom: list[float], target: str, check) -> Row:
    """The ratio of two lists of seconds, per repeat (top[i] / bottom[i], measured back to back); the
    note adds the ratio of the fastest runs (min / min), which noise from other processes can only
    make slower, never faster."""
    return rep.add(section, name, "x", [a / b for a, b in zip(top, bottom)], target, check,
                   note=f"min/min {min(top) / min(bottom):.3g}")


# --- the training session (sections 1-3) -----------------------------------------------------
def make_world(root: Path, size: dict) -> Path:
    world = root / "world"
    generate_world(world, seed=0, facts=size["world_facts"], images_per_fact=size["images_per_fact"], size=64,
                   workers=min(2, os.cpu_count() or 1))
    return world


def make_session(world: Path, device: torch.device, size: dict) -> Session:
    cfg = Config()  # default ModelConfig: ResNet, 64 px, slot_dim 64
    cfg.train.batch_size = BATCH
    cfg.split.tasks = 3
    cfg.method.max_importance_samples = size["importance_samples"]
    s = Session(load_dataset(world), cfg, seed=0, device=device, progress=False)
    train_steps(s, steps=2)  # batch-norm statistics and weights away from their initial values
    return s


@dataclass
class StepInputs:
    opt: torch.optim.Optimizer
    rows: np.ndarray
    targets: torch.Tensor  # (N,) per training row of the stage
    exclude: torch.Tensor  # (F_t, F_t)
    fact_tokens: torch.Tensor
    fact_mask: torch.Tensor

    def batch(self, s: Session, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tg = self.targets[sel]
        return tg.to(s.device), self.exclude[tg].to(s.device)


def step_inputs(s: Session) -> StepInputs:
    stage = s.stage(0)
    rows = s.rows(stage, test=False)
    targets, exclude = s.labels(stage.facts, rows)
    return StepInputs(s.optimizer(), rows, targets, exclude, s.tokens[stage.facts].to(s.device),
                      s.slot_mask[stage.facts].to(s.device))


def step(s: Session, si: StepInputs, x: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor) -> None:
    """One optimizer step: the library's own :func:`factlearn.training.train_step`, as the training
    loop takes it in a single process (so a change to the real step is what gets measured)."""
    train_step(s.model, s.method, si.opt, Towers(s.model), StepInput(x, targets, exclude, si.fact_tokens, si.fact_mask),
               s.cfg.loss)


def train_steps(s: Session, steps: int) -> None:
    si = step_inputs(s)
    s.model.train()
    for i in range(steps):
        sel = torch.arange(i * BATCH, (i + 1) * BATCH) % len(si.rows)
        x = to_model_input(s.images[si.rows[sel.numpy()]].to(s.device))
        step(s, si, x, *si.batch(s, sel))


def amp(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def bench_importance(rep: Report, s: Session, repeats: int, tag: str) -> None:
    task = s.task_data(s.tasks[0])
    n = task.num_samples
    fast = lambda: mas_importance(s.model, task, batch_size=64)  # noqa: E731
    loop = lambda: mas_importance(s.model, task, batch_size=1, exact=False)  # noqa: E731
    # The ceiling: one batched forward and backward with ordinary (batch-summed) parameter
    # gradients, the `importance: batch` approximation. Any exact per-sample method needs at least
    # this pass, so ceiling / loop bounds the speed-up any exact method can reach on this machine.
    ceiling = lambda: mas_importance(s.model, task, batch_size=64, exact=False)  # noqa: E731
    # Accuracy. Run in float64, the fast path's rules must give the float64 loop's values up to
    # float64 rounding: that is the check that they are exact. In float32 both paths differ from
    # float64 by the rounding of the forward pass, and a ReLU input that rounds to the other side of
    # zero flips one unit's gradient for one sample: the largest per-parameter difference then
    # measures where such a unit happens to fall (batched and batch-1 kernels round differently,
    # and kernels differ between CPUs), not the method, so it is reported for both paths with the
    # aggregate difference next to it.
    model64, task64 = float64_copy(s.model, task)
    ref = mas_importance(model64, task64, batch_size=1, exact=False)
    exact64 = max_relative_diff(mas_importance(model64, task64, batch_size=64), ref)
    got = {"fast path": fast(), "loop": loop()}
    t = paired({"fast": fast, "loop": loop, "ceiling": ceiling}, repeats, s.device)
    rep.add("importance", f"exact fast path, batch 64 [{tag}]", "samples/s", [n / x for x in t["fast"]])
    rep.add("importance", f"batch-size-1 loop [{tag}]", "samples/s", [n / x for x in t["loop"]])
    ratio(rep, "importance", f"fast / loop samples/s [{tag}] ({n} samples)", t["loop"], t["fast"], ">= 10",
          lambda m: m >= 10)
    rep.add("importance", f"ceiling: one batched fwd+bwd pass, batch 64 [{tag}]", "samples/s", [n / x for x in t["ceiling"]])
    ratio(rep, "importance", f"ceiling / loop samples/s (bound on any exact path) [{tag}]", t["loop"], t["ceiling"], "", None)
    ratio(rep, "importance", f"fast / ceiling samples/s [{tag}]", t["ceiling"], t["fast"], "", None)
    rep.add("importance", f"max relative diff per parameter, fast path vs loop, both in float64 [{tag}]", "", exact64,
            "<= 1e-10", lambda m: m <= 1e-10)
    ref32 = {k: v.float() for k, v in ref.items()}
    for name, imp in got.items():
        rep.add("importance", f"max relative diff per parameter, {name} in float32 vs float64 loop [{tag}]", "",
                max_relative_diff(imp, ref32))
        rep.add("importance", f"relative L1 diff per parameter (max), {name} in float32 vs float64 loop [{tag}]", "",
                max_relative_l1(imp, ref32))
    bench_importance_breakdown(rep, fast, ceiling, repeats, s.device, tag)


# The per-sample products of the rules: the matmuls that write each sample's weight gradient.
PRODUCT_OPS = ("aten::bmm", "aten::mm")


def importance_profile(fn: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """One importance run under torch.profiler: its wall seconds and the seconds inside each of
    per_sample's labelled ranges ("pass", "rule:<layer class>", "vmap") and, as "products", the
    seconds of the product ops (PRODUCT_OPS) inside the rules."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    parts: dict[str, float] = {}

    def products(event) -> float:
        own = event.self_cpu_time_total if event.name in PRODUCT_OPS else 0.0
        return own + sum(products(c) for c in event.cpu_children)

    for e in prof.events():
        for label, key in ((per_sample.PASS_LABEL, "pass"), (per_sample.VMAP_LABEL, "vmap")):
            if e.name == label:
                parts[key] = parts.get(key, 0.0) + e.cpu_time_total / 1e6
        if e.name.startswith(per_sample.RULE_LABEL):
            key = "rule:" + e.name[len(per_sample.RULE_LABEL):]
            parts[key] = parts.get(key, 0.0) + e.cpu_time_total / 1e6
            parts["products"] = parts.get("products", 0.0) + products(e) / 1e6
    return wall, parts


def bench_importance_breakdown(rep: Report, fast: Callable[[], object], ceiling: Callable[[], object], repeats: int,
                               device: torch.device, tag: str) -> None:
    """Where the fast path's time goes (CPU only: on a GPU the profiler's CPU ranges time kernel
    launches, not kernels): the shared forward + backward to the layer outputs, each kind of rule,
    and inside the rules the bare per-sample products. A path whose rules cost no more than those
    products would take (fast - rules + products); ceiling / that bounds fast / ceiling for any
    rule built from the same per-sample matmuls (the rest is |.|, the sum over samples, copies)."""
    if device.type != "cpu":
        return
    runs = []
    for _ in range(repeats):  # both under the profiler, so that its small per-op cost is on both sides
        t_ceiling, _ = importance_profile(ceiling)
        wall, parts = importance_profile(fast)
        runs.append((wall, parts, t_ceiling))
    kinds = sorted({k for _, parts, _ in runs for k in parts} - {"products"})
    for k in kinds:
        what = {"pass": "shared forward + backward to the layer outputs", "vmap": "vmap fallback"}.get(k, f"{k[5:]} rules")
        rep.add("importance", f"fast path time: {what} [{tag}]", "%", [100 * parts.get(k, 0.0) / wall for wall, parts, _ in runs])
    rep.add("importance", f"fast path time: per-sample products inside the rules [{tag}]", "%",
            [100 * parts.get("products", 0.0) / wall for wall, parts, _ in runs])
    rules = [sum(v for k, v in parts.items() if k.startswith("rule:")) for _, parts, _ in runs]
    rep.add("importance", f"bound on fast / ceiling, rules reduced to their products [{tag}]", "x",
            [c / (wall - r + parts.get("products", 0.0)) for (wall, parts, c), r in zip(runs, rules)])


def float64_copy(model: torch.nn.Module, task):
    """A float64 copy of the model and a view of the task's batches in float64."""
    model64 = copy.deepcopy(model).double()

    def batches(batch_size: int):
        for pixels, tokens, mask in task.batches(batch_size):
            yield pixels.double(), tokens, mask.double() if mask.is_floating_point() else mask

    return model64, dataclasses.replace(task, batches=batches)


def max_relative_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """max over parameters of max |got - want| / max |want| (per parameter tensor)."""
    return max(((got[k] - want[k]).abs().max() / want[k].abs().max().clamp(min=1e-12)).item() for k in want)


def max_relative_l1(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """max over parameters of sum |got - want| / sum |want| (per parameter tensor)."""
    return max(((got[k] - want[k]).abs().sum() / want[k].abs().sum().clamp(min=1e-12)).item() for k in want)


def bench_step(rep: Report, s: Session, repeats: int, steps: int, tag: str) -> None:
    si = step_inputs(s)
    sel = torch.arange(BATCH) % len(si.rows)
    x = to_model_input(s.images[si.rows[sel.numpy()]].to(s.device))
    batch = si.batch(s, sel)
    finetune = create_method(MethodConfig(name="finetune"))
    mas = create_method(MethodConfig(name="mas"))
    mas.after_task(s.model, s.task_data(s.tasks[0]))  # importance and anchor: the penalty is active
    saved = s.method

    def run(method) -> Callable[[], None]:
        def go() -> None:
            s.method = method
            with amp(s.device):
                step(s, si, x, *batch)

        return go

    s.model.train()
    # Single steps, alternating, so that each ratio compares two steps taken back to back.
    t = paired({"finetune": run(finetune), "mas": run(mas)}, repeats * steps, s.device, warmup=2)
    s.method = saved
    prec = " bf16" if s.device.type == "cuda" else ""
    rep.add("step", f"finetune step [{tag}{prec}]", "ms", [1e3 * v for v in t["finetune"]])
    rep.add("step", f"MAS step, penalty active [{tag}{prec}]", "ms", [1e3 * v for v in t["mas"]])
    ratio(rep, "step", f"MAS / finetune step time [{tag}{prec}]", t["mas"], t["finetune"], "<= 1.10", lambda m: m <= 1.10)


def bench_pipeline(rep: Report, s: Session, repeats: int, n_batches: int, tag: str) -> None:
    si = step_inputs(s)
    order = torch.randperm(len(si.rows), generator=torch.Generator().manual_seed(0))
    sels = [order[i * BATCH : (i + 1) * BATCH] for i in range(min(n_batches, len(si.rows) // BATCH))]
    preloaded = [to_model_input(s.images[si.rows[sel.numpy()]].to(s.device)) for sel in sels]
    s.method = create_method(MethodConfig(name="finetune"))
    turn = {"store": 0, "floats": 0}

    def from_store() -> None:  # what the training loop does per step
        sel = sels[turn["store"] % len(sels)]
        turn["store"] += 1
        with amp(s.device):
            x = to_model_input(s.images[si.rows[sel.numpy()]].to(s.device))
            step(s, si, x, *si.batch(s, sel))

    def from_floats() -> None:
        i = turn["floats"] % len(sels)
        turn["floats"] += 1
        with amp(s.device):
            step(s, si, preloaded[i], *si.batch(s, sels[i]))

    s.model.train()
    # One batch each way, alternating: the same batches, each pair back to back.
    t = paired({"store": from_store, "floats": from_floats}, repeats * len(sels), s.device)
    rep.add("pipeline", f"uint8 store -> to_model_input -> step [{tag}]", "images/s", [BATCH / v for v in t["store"]])
    rep.add("pipeline", f"pre-loaded float tensors -> step [{tag}]", "images/s", [BATCH / v for v in t["floats"]])
    ratio(rep, "pipeline", f"store / pre-loaded images/s [{tag}]", t["floats"], t["store"], ">= 0.9", lambda m: m >= 0.9)


# --- synthetic embeddings (sections 4, 5) ------------------------------------------------------
def _unit_slots(v: np.ndarray) -> np.ndarray:
    """(N, 3, d) -> each slot scaled to unit length (zero slots stay zero)."""
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def fact_space(n_facts: int, n_queries: int, seed: int = 0, slot_dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Fact embeddings (n_facts, 3*d) and image embeddings (n_queries, 3*d), float32, slot-normalised.

    Facts are distinct word combinations <S>, <S,P> (45%) and <S,P,O> (55%, and as many <S> as there
    are subjects, at most a quarter); a slot's part is its word's vector, shared by every fact with
    that word, as a language tower makes it. Vocabularies grow with the fact count (2 sqrt(F)
    subjects and objects, sqrt(F) / 2 predicates). An image embedding is its fact's vector plus
    noise (0.6 of a slot's length), with a random part for the slots its fact leaves open.
    """
    rng = np.random.default_rng(seed)
    root = n_facts**0.5
    sizes = [max(16, int(2 * root)), max(8, int(root / 2)), max(16, int(2 * root))]
    words = [_unit_slots(rng.standard_normal((n, 1, slot_dim)).astype(np.float32))[:, 0] for n in sizes]
    n_s = min(sizes[0], n_facts // 4)
    n_sp = int(0.45 * (n_facts - n_s))
    combos = [np.stack([rng.permutation(sizes[0])[:n_s], np.full(n_s, -1), np.full(n_s, -1)], 1)]
    for count, slots in ((n_sp, 2), (n_facts - n_s - n_sp, 3)):
        picked = np.empty((0, 3), dtype=np.int64)
        while len(picked) < count:  # distinct combinations: draw, drop repeats, draw more
            draw = np.stack([rng.integers(0, sizes[i], 2 * count) if i < slots else np.full(2 * count, -1) for i in range(3)], 1)
            picked = np.unique(np.concatenate([picked, draw]), axis=0)
        combos.append(picked[rng.permutation(len(picked))[:count]])
    combos = np.concatenate(combos)[rng.permutation(n_facts)]  # (F, 3) word per slot, -1 = open
    facts = np.zeros((n_facts, 3, slot_dim), dtype=np.float32)
    for slot in range(3):
        present = combos[:, slot] >= 0
        facts[present, slot] = words[slot][combos[present, slot]]
    which = rng.integers(0, n_facts, n_queries)
    open_slot = (combos[which] < 0)[:, :, None]
    images = np.where(open_slot, rng.standard_normal((n_queries, 3, slot_dim)).astype(np.float32) / slot_dim**0.5, facts[which])
    images += 0.6 / slot_dim**0.5 * rng.standard_normal((n_queries, 3, slot_dim)).astype(np.float32)
    return facts.reshape(n_facts, -1), _unit_slots(images).reshape(n_queries, -1)


def bench_eval(rep: Report, n_facts: int, n_queries: int, repeats: int, label: str) -> None:
    from sklearn.neighbors import NearestNeighbors

    facts, queries = fact_space(n_facts, n_queries, seed=1)
    index = FactIndex(facts)
    nn_ = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(facts)
    ours = lambda: index.search(queries, K)  # noqa: E731
    theirs = lambda: nn_.kneighbors(queries)  # noqa: E731
    fns = {"faiss": ours, "sklearn": theirs}
    if n_facts * n_queries <= 1e9:  # the score matrix alone fits in memory (at most 4 GB)
        # The ceiling: the bare (Q, F) score matrix of an exact search, no top-k selection.
        normed = np.ascontiguousarray((facts / np.maximum(np.linalg.norm(facts, axis=1, keepdims=True), 1e-12)).T)
        fns["gemm"] = lambda: queries @ normed  # noqa: E731
    t = paired(fns, repeats, torch.device("cpu"), warmup=1 if n_facts * n_queries < 1e9 else 0)
    scores, ids = ours()
    _, ids_sk = theirs()
    same = (ids == ids_sk).all(1)
    # A differing row is a tie when the two top-k lists score the same at every rank.
    fn = facts / np.maximum(np.linalg.norm(facts, axis=1, keepdims=True), 1e-12)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    diff = np.flatnonzero(~same)
    sk_scores = np.einsum("qd,qkd->qk", qn[diff], fn[ids_sk[diff]])
    unexplained = int((np.abs(sk_scores - scores[diff]) > 1e-5).any(1).sum())
    size = f"{n_facts:,} x {n_queries:,}"
    rep.add("eval", f"FactIndex flat top-{K}, {label} ({size})", "queries/s", [n_queries / v for v in t["faiss"]])
    rep.add("eval", f"sklearn NearestNeighbors cosine brute, {label}", "queries/s", [n_queries / v for v in t["sklearn"]])
    ratio(rep, "eval", f"FactIndex / sklearn queries/s, {label}", t["sklearn"], t["faiss"], ">= 5", lambda m: m >= 5)
    if "gemm" in t:
        ratio(rep, "eval", f"ceiling: bare score matrix (numpy) / sklearn, {label}", t["sklearn"], t["gemm"], "", None)
    rep.add("eval", f"top-{K} ids identical, {label}", "fraction", float(same.mean()),
            note=f"{len(diff)} rows differ, {unexplained} not explained by ties")
    rep.add("eval", f"top-{K} differences not explained by ties, {label}", "rows", unexplained, "0", lambda m: m == 0)


def clustered_space(n_facts: int, n_queries: int, seed: int = 0, latent: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Clustered embeddings of low intrinsic dimension, as learned embeddings tend to be.

    A Gaussian mixture (F / 100 clusters, spread 0.35 around unit-variance centres) in a
    ``latent``-dimensional space, mapped by a random linear map into the 3 x 64 slot space, plus
    isotropic noise (0.3 of a slot's length), slot-normalised; queries are facts plus noise 0.4.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n_facts // 100), latent)).astype(np.float32)
    z = centres[rng.integers(0, len(centres), n_facts)] + 0.35 * rng.standard_normal((n_facts, latent)).astype(np.float32)
    facts = _unit_slots((z @ rng.standard_normal((latent, 192)).astype(np.float32)).reshape(n_facts, 3, 64))
    facts = _unit_slots(facts + 0.3 / 8 * rng.standard_normal(facts.shape).astype(np.float32))
    queries = facts[rng.integers(0, n_facts, n_queries)]
    queries = _unit_slots(queries + 0.4 / 8 * rng.standard_normal(queries.shape).astype(np.float32))
    return facts.reshape(n_facts, -1), queries.reshape(n_queries, -1)


def learned_space(run_dir: str | Path, n_queries: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A trained run's embeddings: every fact of the run through its last checkpoint's language
    tower (F, 3*d), and a seeded sample of ``n_queries`` of its data set's images through the image
    tower, as ``factlearn query --all-facts`` embeds them (float32; the facts as the flat index holds
    them, unit rows; the images as the model outputs them, FactIndex normalises them)."""
    from factlearn.data.images import read_images
    from factlearn.query import RunIndex

    index = RunIndex.load(run_dir, all_facts=True)  # also checks the run; builds the flat index once
    data = Path(json.loads((Path(run_dir) / "run.json").read_text())["data"])
    records = load_dataset(data).records
    picked = np.sort(np.random.default_rng(seed).choice(len(records), min(n_queries, len(records)), replace=False))
    images = read_images([records[i].image for i in picked], index.image_size)
    with torch.no_grad():
        queries = torch.cat([index.model.encode_images(images[i : i + 256]) for i in range(0, len(images), 256)])
    facts = index.index.index.reconstruct_n(0, index.index.index.ntotal)  # the embeddings the flat index holds
    return np.ascontiguousarray(facts, dtype=np.float32), queries.numpy().astype(np.float32)


def bench_ann(rep: Report, data: str, n_facts: int, n_queries: int, repeats: int, size: dict, targets: bool,
              run: str | None = None) -> None:
    """Sweep each approximate index's search knob upwards until recall@10 reaches 0.95: over
    synthetic embeddings (``data`` clustered or fact-structured), or a trained ``run``'s (learned)."""
    if run is not None:
        facts, queries = learned_space(run, n_queries)
        n_facts, n_queries = len(facts), len(queries)
    else:
        facts, queries = (clustered_space if data == "clustered" else fact_space)(n_facts, n_queries, seed=2)
    cpu = torch.device("cpu")
    build = {}
    start = time.perf_counter()
    flat = FactIndex(facts)
    build["flat"] = time.perf_counter() - start
    _, exact = flat.search(queries, K)  # also the warm-up
    t_flat = paired({"flat": lambda: flat.search(queries, K)}, repeats, cpu, warmup=0)["flat"]
    rep.add("ann", f"flat, {data} data, {n_facts:,} facts", "queries/s", [n_queries / v for v in t_flat])
    sweeps = {
        "hnsw": (dict(M=size["ann_M"], ef_construction=size["ann_efc"]), "ef_search", (16, 32, 64, 128, 256)),
        "ivf": (dict(nlist=size["ann_nlist"], nprobe=1), "nprobe", (1, 2, 4, 8, 16, 32, 64)),
    }
    for kind, (options, knob, values) in sweeps.items():
        start = time.perf_counter()
        index = FactIndex(facts, kind=kind, **options)
        build[kind] = time.perf_counter() - start
        best = None
        for v in values:  # search-time knob, set on the built FAISS index
            if kind == "hnsw":
                index.index.hnsw.efSearch = v
            else:
                index.index.nprobe = v
            _, found = index.search(queries, K)
            recall = float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, exact)]))
            t = paired({kind: lambda: index.search(queries, K)}, repeats, cpu, warmup=0)[kind]
            speedup = [statistics.median(t_flat) / x for x in t]
            print(f"    {data} {kind} {knob}={v}: recall@{K} {recall:.4f}, {statistics.median(speedup):.1f}x flat q/s", flush=True)
            if recall >= 0.95:  # the knob only trades speed for recall: the first setting here is the fastest
                best = (v, recall, speedup, t)
                break
        opts = ", ".join(f"{k}={v}" for k, v in options.items() if k != "nprobe")
        if best is None:
            rep.add("ann", f"{kind} ({opts}), {data}: best recall@{K} (none >= 0.95)", "", recall,
                    ">= 0.95" if targets else "", (lambda m: False) if targets else None)
            continue
        v, recall, speedup, t = best
        rep.add("ann", f"{kind} ({opts}, {knob}={v}), {data}: recall@{K}", "", recall,
                ">= 0.95" if targets else "", (lambda m: m >= 0.95) if targets else None)
        rep.add("ann", f"{kind} ({knob}={v}), {data}: queries/s", "queries/s", [n_queries / x for x in t])
        rep.add("ann", f"{kind} ({knob}={v}), {data}: speed / flat", "x", speedup,
                ">= 10" if targets else "", (lambda m: m >= 10) if targets else None)
    for kind, seconds in build.items():
        rep.add("ann", f"build {kind}, {data} data, {n_facts:,} facts", "s", seconds)


# --- memory (section 6) ------------------------------------------------------------------------
def bench_state(rep: Report, s: Session) -> None:
    method = create_method(MethodConfig(name="mas"))
    n_params = sum(1 for p in s.model.parameters() if p.requires_grad)
    n_elems = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    counts, elems = [], []
    for t in range(3):
        method.after_task(s.model, s.task_data(s.tasks[t]))
        with torch.no_grad():  # the next task moves the parameters
            for p in s.model.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        state = {k: v for k, v in method.state.items() if not k.startswith("meta.")}
        counts.append(len(state))
        elems.append(sum(v.numel() for v in state.values()))
    rep.add("memory", f"MAS state tensors after tasks 1,2,3 (2 x {n_params})", "tensors", counts,
            f"== {2 * n_params}", lambda m: all(c == 2 * n_params for c in counts))
    rep.add("memory", "MAS state size / parameter size after tasks 1,2,3", "x", [e / n_elems for e in elems],
            "== 2", lambda m: all(e == 2 * n_elems for e in elems))


def bench_rss(rep: Report, world: Path, device: torch.device, epochs: int, tag: str) -> None:
    peaks = {}
    for method in ("finetune", "mas"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", method, "--world", str(world),
               "--device", device.type, "--epochs", str(epochs)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"child training ({method}) failed:\n{done.stderr[-3000:]}")
        peaks[method] = json.loads(done.stdout.strip().splitlines()[-1])
    key, unit = ("cuda_peak_mb", "MB (GPU)") if device.type == "cuda" else ("rss_peak_mb", "MB")
    for method in peaks:
        rep.add("memory", f"peak {'GPU memory' if device.type == 'cuda' else 'RSS'}, short training, {method} [{tag}]",
                unit, peaks[method][key])
    rep.add("memory", f"peak MAS / finetune [{tag}]", "x", peaks["mas"][key] / peaks["finetune"][key])


def bench_negatives(rep: Report, root: Path, stage_facts: list[int], repeats: int, steps: int,
                    device: torch.device) -> dict[int, dict[str, list[float]]]:
    """Section 7: seconds per training step with every fact of the stage as candidates (``all``)
    and with the batch's own plus K drawn (``sampled``, K = ``loss.num_negatives``'s default), for
    stages of about each of ``stage_facts`` facts (one world of the large preset, split into
    max/F tasks), steps alternating. Returns {F: {"all": [...], "sampled": [...]}} per stage."""
    n = max(stage_facts)
    world = root / "negatives-world"
    generate_world(world, seed=0, preset="lsc", facts=n, images_per_fact=2, size=64,
                   workers=min(2, os.cpu_count() or 1))
    data = load_dataset(world)
    out = {}
    for want in stage_facts:
        cfg = Config()  # the default model (ResNet, 64 px) and loss
        cfg.train.batch_size = BATCH
        cfg.split.tasks = max(1, round(n / want))
        s = Session(data, cfg, seed=0, device=device, progress=False)
        stage = s.stage(0)
        rows = s.rows(stage, test=False)
        targets, wildcards = s.labels(stage.facts, rows)
        tokens, mask = s.tokens[stage.facts].to(device), s.slot_mask[stage.facts].to(device)
        opt, sel = s.optimizer(), torch.arange(BATCH) % len(rows)
        x = to_model_input(s.images[rows[sel.numpy()]].to(device))
        s.model.train()

        def run(kind: str) -> Callable[[], None]:
            def go() -> None:
                s.cfg.loss.negatives = kind
                batch = step_input(s, x, targets[sel], targets[sel], wildcards, tokens, mask, step_generator(0, 0, 0))
                train_step(s.model, s.method, opt, Towers(s.model), batch, s.cfg.loss)

            return go

        t = paired({"all": run("all"), "sampled": run("sampled")}, repeats * steps, device)
        f, k = len(stage.facts), cfg.loss.num_negatives
        rep.add("negatives", f"step, all ({f:,} facts) [{device.type}]", "ms", [1e3 * v for v in t["all"]])
        rep.add("negatives", f"step, sampled K={k:,} ({f:,} facts) [{device.type}]", "ms",
                [1e3 * v for v in t["sampled"]])
        ratio(rep, "negatives", f"all / sampled step time ({f:,} facts) [{device.type}]", t["all"], t["sampled"], "", None)
        out[f] = t
    return out


def rss_child(method: str, world: str, device: str, epochs: int) -> None:
    """Run a short training (3 tasks) and print its peak memory as JSON on the last line."""
    from factlearn.training import train

    cfg = Config()
    cfg.method.name = method
    cfg.train.epochs = epochs
    cfg.split.tasks = 3
    with tempfile.TemporaryDirectory() as out:
        train(world, cfg, Path(out) / "run", seed=0, device=device)
    peak = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        peak["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(peak))


# --- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; finishes within 5 minutes on 2 cores")
    parser.add_argument("--json", type=Path, help="write every measurement to this JSON file")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (default: 3 quick, 5 full)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU variants")
    parser.add_argument("--only", nargs="+", choices=["importance", "step", "pipeline", "eval", "ann", "memory",
                                                      "negatives"],
                        help="run only these sections")
    parser.add_argument("--ann-run", nargs="+", metavar="RUN",
                        help="also sweep the approximate indexes over these trained runs' embeddings (every "
                             "fact of the run; queries: a seeded sample of its data set's images), with --only ann")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--world", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.world, args.device, args.epochs)

    logging.basicConfig(level=logging.WARNING)
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    repeats = args.repeats or size["repeats"]
    sections = set(args.only or ["importance", "step", "pipeline", "eval", "ann", "memory", "negatives"])
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    env = {"mode": mode, "repeats": repeats, "python": platform.python_version(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
           "cuda": torch.cuda.get_device_name(0) if len(devices) > 1 else None}
    print("factlearn bench:", ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    rep = Report()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = make_world(Path(tmp), size) if sections & {"importance", "step", "pipeline", "memory"} else None
        for device in devices:
            if not sections & {"importance", "step", "pipeline", "memory"}:
                break
            tag = device.type
            s = make_session(world, device, size)
            if "importance" in sections:
                print(f"[1] exact MAS importance ({tag})", flush=True)
                bench_importance(rep, s, repeats, tag)
            if "step" in sections:
                print(f"[2] training step, finetune vs MAS ({tag})", flush=True)
                bench_step(rep, s, repeats, size["steps"], tag)
            if "pipeline" in sections:
                print(f"[3] input pipeline ({tag})", flush=True)
                bench_pipeline(rep, s, repeats, size["pipeline_batches"], tag)
            if "memory" in sections:
                print(f"[6] memory ({tag})", flush=True)
                if device.type == "cpu":
                    bench_state(rep, s)
                bench_rss(rep, world, device, size["rss_epochs"], tag)
            del s
        if "eval" in sections:
            print("[4] evaluation: FactIndex flat vs scikit-learn", flush=True)
            bench_eval(rep, *SIX_DS, repeats, "6DS scale")
            bench_eval(rep, *size["eval_large"], max(2, repeats - 2) if mode == "full" else repeats, "large")
        if "ann" in sections:
            print(f"[5] approximate indexes over {size['ann_facts']:,} facts", flush=True)
            bench_ann(rep, "clustered", size["ann_facts"], size["ann_queries"], repeats, size, targets=True)
            bench_ann(rep, "fact-structured", size["ann_facts"], size["ann_queries"], repeats, size, targets=False)
        if "negatives" in sections:
            for device in devices:
                print(f"[7] negatives: all vs sampled per stage size ({device.type})", flush=True)
                bench_negatives(rep, Path(tmp), size["negatives_facts"], repeats, size["steps"], device)
                shutil.rmtree(Path(tmp) / "negatives-world")
        for run in args.ann_run or []:
            print(f"[5] approximate indexes over the learned embeddings of {run}", flush=True)
            bench_ann(rep, f"learned ({Path(run).name})", 0, size["ann_queries"], repeats, size,
                      targets=False, run=run)
    elapsed = time.perf_counter() - start
    print(f"\n{rep.table()}\n\ntotal {elapsed:.0f} s ({mode})")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "seconds": elapsed,
                                         "rows": [r.__dict__ | {"min_median_max": r.stats()} for r in rep.rows]}, indent=2))


if __name__ == "__main__":
    main()
