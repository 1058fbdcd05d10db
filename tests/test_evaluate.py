"""evaluate_tasks against a brute-force reference; export, metrics.json and compare outputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from factlearn.cli import main
from factlearn.compare import compare_plots, compare_table
from factlearn.data.splits import Task
from factlearn.evaluate import cut_views, embed_test_set, evaluate_tasks, evaluate_view
from factlearn.facts import Fact, FactTable
from factlearn.model import Vocabulary, create_model
from factlearn.run import RunDir

KS = (1, 5, 10)

# Wildcard facts with shared subjects and predicates, so an image of <S> or <S,P> has several
# correct candidates (g > 1) and the k + g - 1 rule matters.
FACTS = FactTable([
    Fact("star"), Fact("circle"), Fact("cross"),
    Fact("star", "red"), Fact("star", "blue"), Fact("circle", "red"), Fact("cross", "small"),
    Fact("star", "left of", "circle"), Fact("star", "left of", "cross"), Fact("star", "red", "circle"),
    Fact("circle", "above", "star"), Fact("cross", "inside", "circle"),
])
TASKS = [Task("B1", [0, 3, 5, 7, 10, 11]), Task("B2", [1, 2, 4, 6, 8, 9])]


# ---------------------------------------------------------------------------------------------
# Brute-force reference, written without factlearn's metrics or index.


def ref_correct(image_fact: Fact, candidate: Fact) -> bool:
    slots = [s for s in image_fact.slots if s is not None]
    return list(candidate.slots[: len(slots)]) == slots


def ref_recognition(scores, correct):
    hits = {k: [] for k in KS}
    rr = []
    for n in range(len(scores)):
        order = np.argsort(-scores[n], kind="stable")
        g = int(correct[n].sum())
        places = [p for p, c in enumerate(order) if correct[n, c]]
        for k in KS:
            hits[k].append(bool(places) and places[0] < k + g - 1)
        rr.append(1.0 / (places[0] + 1) if places else 0.0)
    out = {f"top{k}": float(np.mean(hits[k])) for k in KS}
    out["mrr"] = float(np.mean(rr))
    out["n"] = len(scores)
    return out


def ref_map_at_100(scores, correct):
    aps = []
    for f in range(scores.shape[1]):
        n_pos = int(correct[:, f].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-scores[:, f], kind="stable")
        found, total = 0, 0.0
        for place, image in enumerate(order[:100]):
            if correct[image, f]:
                found += 1
                total += found / (place + 1)
        aps.append(total / min(n_pos, 100))
    return float(np.mean(aps))


def ref_evaluate(img_emb, fact_emb, image_fact_ids, trained, protocol):
    img = img_emb / np.linalg.norm(img_emb, axis=1, keepdims=True)  # float64
    fact = fact_emb / np.linalg.norm(fact_emb, axis=1, keepdims=True)
    out = {}
    for task in TASKS:
        if protocol == "standard":
            cand = list(task.facts)
        else:
            cand = sorted({f for t in TASKS[:trained] for f in t.facts} | set(task.facts))
        rows = [n for n, f in enumerate(image_fact_ids) if f in task.facts]
        scores = img[rows] @ fact[cand].T
        # float32 (the index) and float64 (here) rank alike only without near-ties
        gaps = np.diff(np.sort(scores, axis=1), axis=1)
        assert gaps.min() > 1e-5, "near-tied scores: choose another seed"
        correct = np.array([[ref_correct(FACTS[image_fact_ids[n]], FACTS[c]) for c in cand] for n in rows])
        res = ref_recognition(scores, correct)
        res["map@100"] = ref_map_at_100(scores, correct)
        orders = np.array([FACTS[image_fact_ids[n]].order for n in rows])
        res["by_order"] = {str(o): ref_recognition(scores[orders == o], correct[orders == o])
                           for o in (1, 2, 3) if (orders == o).any()}
        out[task.name] = res
    return out


@pytest.fixture(scope="module")
def random_model_setup(tiny_model_config):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = create_model(cfg, Vocabulary(FACTS.words())).eval()
    rng = np.random.default_rng(0)
    image_fact_ids = np.concatenate([np.arange(len(FACTS)).repeat(3), rng.integers(len(FACTS), size=36)])
    images = torch.from_numpy(rng.integers(0, 256, size=(len(image_fact_ids), 3, 32, 32), dtype=np.uint8))
    img_emb = model.encode_images(images).numpy().astype(np.float64)
    fact_emb = model.encode_facts(FACTS.facts).numpy().astype(np.float64)
    return model, images, image_fact_ids, img_emb, fact_emb


def assert_metrics_equal(got: dict, want: dict):
    for key in ("top1", "top5", "top10", "mrr"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["n"] == want["n"]


@pytest.mark.parametrize("protocol, trained", [("standard", 2), ("generalized", 1), ("generalized", 2)])
def test_evaluate_tasks_matches_bruteforce(random_model_setup, protocol, trained):
    model, images, image_fact_ids, img_emb, fact_emb = random_model_setup
    got = evaluate_tasks(model, FACTS, TASKS, images, image_fact_ids, trained, protocol, batch_size=32)
    want = ref_evaluate(img_emb, fact_emb, image_fact_ids, trained, protocol)
    assert list(got) == ["B1", "B2"]
    for name in got:
        assert_metrics_equal(got[name], want[name])
        assert got[name]["map@100"] == pytest.approx(want[name]["map@100"], abs=1e-12)
        assert got[name]["map"] == pytest.approx(want[name]["map@100"], abs=1e-12)  # < 100 images per fact
        assert sorted(got[name]["by_order"]) == sorted(want[name]["by_order"]) == ["1", "2", "3"]
        for order, sub in want[name]["by_order"].items():
            assert_metrics_equal(got[name]["by_order"][order], sub)
        assert "recall@10" not in got[name]


def test_several_protocols_embed_the_images_once(random_model_setup, monkeypatch):
    model, images, image_fact_ids, img_emb, fact_emb = random_model_setup
    calls = []
    encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda *a, **k: calls.append(1) or encode(*a, **k))
    got = evaluate_tasks(model, FACTS, TASKS, images, image_fact_ids, 1, ["standard", "generalized"], batch_size=32)
    assert len(calls) == 1 and list(got) == ["standard", "generalized"]
    for protocol in got:
        want = ref_evaluate(img_emb, fact_emb, image_fact_ids, 1, protocol)
        for name in ("B1", "B2"):
            assert_metrics_equal(got[protocol][name], want[name])


def test_approximate_index_reports_recall(random_model_setup):
    model, images, image_fact_ids, _, _ = random_model_setup
    img_emb, fact_emb = embed_test_set(model, FACTS, images)
    for view in cut_views(TASKS, image_fact_ids, img_emb, fact_emb, 2, "generalized"):
        exact = evaluate_view(view, FACTS)
        for kind in ("hnsw", "ivf"):
            approx = evaluate_view(view, FACTS, kind)
            # a dozen facts: the approximate search is exhaustive, so it finds what flat finds
            assert approx["recall@10"] == 1.0
            assert_metrics_equal(approx, exact)
            assert approx["map@100"] == exact["map@100"]


# ---------------------------------------------------------------------------------------------
# A trained run (tiny world, one epoch per task): export, metrics.json, compare.


@pytest.fixture(scope="module")
def trained_runs(tiny_world, tiny_config, tmp_path_factory):
    from factlearn.config import load_config
    from factlearn.training import train

    root = tmp_path_factory.mktemp("runs")
    train(tiny_world, load_config(tiny_config, {"method.name": "finetune"}), root / "finetune", seed=0)
    # A second run for compare: the same numbers under another name and method.
    shutil.copytree(root / "finetune", root / "mas")
    doc = json.loads((root / "mas" / "metrics.json").read_text())
    doc["method"] = "mas"
    (root / "mas" / "metrics.json").write_text(json.dumps(doc))
    return root / "finetune", root / "mas"


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_metrics_json_final_has_retrieval_and_orders(trained_runs):
    doc = json.loads((trained_runs[0] / "metrics.json").read_text())
    for proto in ("standard", "generalized"):
        block = doc["protocols"][proto]
        for name in doc["tasks"]:
            final = block["final"][name]
            assert {"top1", "top5", "top10", "mrr", "map", "map@100", "by_order"} <= set(final)
            assert final["top1"] == block["matrix"]["top1"][-1][doc["tasks"].index(name)]
        assert {"average", "bwt"} <= set(block["sequence"]["map@100"])


def test_export_files_and_top1_from_arrays(trained_runs, tiny_world, tmp_path):
    run = trained_runs[0]
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["evaluate", str(run), "--export", str(out), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    facts, tasks = RunDir(run).facts(), {t.name: t.facts for t in RunDir(run).tasks()}
    assert sorted(p.name for p in out.iterdir()) == sorted(report["tasks"])
    for name, metrics in report["tasks"].items():
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "fact_embeddings.npy", "facts.csv", "image_embeddings.npy", "images.csv"]  # no temp files
        img = np.load(folder / "image_embeddings.npy")
        fact = np.load(folder / "fact_embeddings.npy")
        images = read_csv(folder / "images.csv")
        fact_rows = read_csv(folder / "facts.csv")
        assert images[0] == ["image", "fact_id"] and fact_rows[0] == ["fact_id", "subject", "predicate", "object"]
        images, fact_rows = images[1:], fact_rows[1:]
        assert img.dtype == fact.dtype == np.float32 and img.shape[1] == fact.shape[1]
        assert img.shape[0] == len(images) == metrics["n"] and fact.shape[0] == len(fact_rows)
        assert all((tiny_world / path).is_file() for path, _ in images)  # relative to the data dir
        assert [int(row[0]) for row in fact_rows] == tasks[name]  # standard protocol: the task's facts
        cand = [facts[int(row[0])] for row in fact_rows]
        for row, f in zip(fact_rows, cand):
            assert row[1:] == [s or "" for s in f.slots]
        # top-1 recomputed from the exported arrays alone
        scores = img @ fact.T
        hits = []
        for n, (_, fid) in enumerate(images):
            correct = np.array([ref_correct(facts[int(fid)], c) for c in cand])
            first = [p for p, c in enumerate(np.argsort(-scores[n], kind="stable")) if correct[c]]
            hits.append(bool(first) and first[0] < int(correct.sum()))
        assert float(np.mean(hits)) == pytest.approx(metrics["top1"], abs=1e-12)


def test_evaluate_table_and_approximate_index(trained_runs):
    result = CliRunner().invoke(main, ["evaluate", str(trained_runs[0]), "--index", "hnsw", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[1].split()
    assert header == ["task", "n", "top1", "top5", "top10", "mrr", "mAP@100", "recall@10"]
    assert "<S,P,O>" in result.output


def test_compare_table_and_plots(trained_runs, tmp_path):
    paths = [str(p) for p in trained_runs]
    table = compare_table(paths, ["top1"])
    lines = table.splitlines()
    assert lines[0].split(" | ")[-2:] == ["avg top1", "BWT top1 |"]
    seq = json.loads((trained_runs[0] / "metrics.json").read_text())["sequence"]["top1"]
    assert lines[2].split(" | ")[-2:] == [f"{seq['average']:.3f}", f"{seq['bwt']:.3f} |"]
    assert "| mas |" in lines[3]

    result = CliRunner().invoke(main, ["compare", *paths, "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    # both protocols by default, one table each, standard first
    assert result.output.index("standard protocol:") < result.output.index("generalized protocol:")
    expected = ["finetune_top1_matrix.png", "finetune_top5_matrix.png", "mas_top1_matrix.png",
                "mas_top5_matrix.png", "sequence_top1.png", "sequence_top5.png", "tradeoff_top1.png",
                "tradeoff_top5.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["generalized", "standard"]
    for proto in ("standard", "generalized"):
        assert sorted(p.name for p in (tmp_path / "plots" / proto).iterdir()) == expected  # no temp files
        for name in expected:
            data = (tmp_path / "plots" / proto / name).read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    one = CliRunner().invoke(main, ["compare", *paths, "--protocol", "generalized"])
    assert one.exit_code == 0 and "standard protocol" not in one.output and "generalized protocol" in one.output


def test_matrix_heatmap_greys_out_tasks_not_trained_yet(trained_runs):
    from factlearn.compare import _load_runs, _matrix_figure

    [run] = _load_runs([str(trained_runs[0])], "standard")
    ax = _matrix_figure(run, "top1").axes[0]
    cells = {(round(x.get_position()[1]), round(x.get_position()[0])): x.get_text() for x in ax.texts}
    matrix = run.matrix("top1")
    assert cells[(0, 1)] == "not\ntrained"  # B2 after B1: no number that looks like a result
    assert cells[(0, 0)] == f"{matrix[0][0]:.2f}" and cells[(1, 1)] == f"{matrix[1][1]:.2f}"
    shown = ax.images[0].get_array()
    assert shown.mask[0, 1] and not shown.mask[1, 0] and not shown.mask[0, 0]


def test_tradeoff_scatter_is_old_mean_against_newest_task(trained_runs):
    from factlearn.compare import _load_runs, _tradeoff_figure

    runs = _load_runs([str(p) for p in trained_runs], "standard")
    ax = _tradeoff_figure(runs, "top1").axes[0]
    points = [line.get_xydata()[0].tolist() for line in ax.lines]
    assert len(points) == len(runs)  # one point per run
    for run, (x, y) in zip(runs, points):
        last = run.matrix("top1")[-1]
        assert (x, y) == (last[1], last[0])  # x: B2 after B2 (new), y: mean of B1 after B2 (old)


def test_compare_plots_disambiguates_same_names(trained_runs, tmp_path):
    twin = tmp_path / "other" / trained_runs[0].name
    shutil.copytree(trained_runs[0], twin)
    written = compare_plots([str(trained_runs[0]), str(twin)], tmp_path / "plots", ["mrr"])
    assert [p.name for p in written] == ["1_finetune_mrr_matrix.png", "2_finetune_mrr_matrix.png", "sequence_mrr.png",
                                         "tradeoff_mrr.png"]


def test_evaluate_under_a_test_condition_shift(trained_runs, tmp_path):
    """A restyled world (same facts, ids and splits, other pixels) evaluates the run's old tasks under
    that condition: `factlearn evaluate RUN --data SHIFTED_WORLD`."""
    from factlearn.data.synth import generate_world
    from factlearn.evaluate import evaluate_run

    shifted = tmp_path / "dark"
    generate_world(shifted, seed=3, facts=12, images_per_fact=6, size=32, style="dark", workers=1)
    clean = evaluate_run(trained_runs[0], device="cpu")
    dark = evaluate_run(trained_runs[0], shifted, device="cpu")
    assert clean.keys() == dark.keys() == {"B2"}
    for task, m in dark["B2"]["standard"].items():
        assert m["n"] == clean["B2"]["standard"][task]["n"]  # the same test images, restyled
    assert dark != clean  # other pixels, other rankings
    r = CliRunner().invoke(main, ["evaluate", str(trained_runs[0]), "--data", str(shifted), "--device", "cpu"])
    assert r.exit_code == 0 and "B1" in r.output, r.output


def test_max_images_per_task_samples_the_same_images_in_training_and_evaluate(tmp_path, tiny_world, tiny_config):
    """eval.max_images_per_task: each task is evaluated on at most that many test images, the same
    sample after every task and in `factlearn evaluate` (drawn with split.seed)."""
    from factlearn.config import load_config
    from factlearn.data.splits import Task
    from factlearn.evaluate import evaluate_run, sample_per_task
    from factlearn.training import train

    doc = train(tiny_world, load_config(tiny_config, {"eval.max_images_per_task": 3}), tmp_path / "run", device="cpu")
    assert all(doc["final"][t]["n"] == 3 for t in ("B1", "B2"))
    again = evaluate_run(tmp_path / "run", device="cpu")["B2"]["standard"]
    assert {t: again[t]["top1"] for t in again} == {t: doc["final"][t]["top1"] for t in ("B1", "B2")}
    ids = np.array([0, 0, 1, 1, 1, 2, 2, 5])
    tasks = [Task("B1", [0, 1]), Task("B2", [2])]
    assert sample_per_task(ids, tasks, None, 0).tolist() == list(range(8))
    kept = sample_per_task(ids, tasks, 2, 0)
    assert kept.tolist() == sorted(kept.tolist()) and len(kept) == 4 and 7 not in kept
    assert np.array_equal(kept, sample_per_task(ids, tasks, 2, 0))
