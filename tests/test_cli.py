"""The CLI end to end (synth -> train both methods -> evaluate -> query -> compare) and its errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from factlearn.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("cli")
    world = root / "world"
    r = invoke("synth", world, "--seed", 1, "--facts", 10, "--images-per-fact", 5, "--size", 32, "--workers", 1)
    assert r.exit_code == 0, r.output
    out = {}
    for method in ("finetune", "mas"):
        out[method] = root / method
        r = invoke("train", "--data", world, "--config", tiny_config, "--method", method, "--out", out[method],
                   "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert "B1" in r.output and "B2" in r.output
    return world, out


def test_train_writes_the_metrics_contract(runs):
    _, out = runs
    for method, run in out.items():
        doc = json.loads((run / "metrics.json").read_text())
        assert doc["method"] == method and doc["tasks"] == ["B1", "B2"]
        for m in ("top1", "top5", "top10"):
            matrix = doc["matrix"][m]
            assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
            assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
            assert doc["final"]["B2"][m] == matrix[1][1]
        assert (run / "config.yaml").is_file() and (run / "split.json").is_file() and (run / "tokenizer.json").is_file()
        assert (run / "checkpoints" / "B1" / "model.safetensors").is_file()
        assert (run / "checkpoints" / "B2" / "method.safetensors").is_file()
        split = json.loads((run / "split.json").read_text())
        b1, b2 = (set(t["facts"]) for t in split["tasks"])
        assert b1 and b2 and not b1 & b2


def test_mas_saves_importance_and_anchors(runs):
    from safetensors.torch import load_file

    state = load_file(str(runs[1]["mas"] / "checkpoints" / "B1" / "method.safetensors"))
    omega = {k for k in state if k.startswith("omega.")}
    anchor = {k for k in state if k.startswith("anchor.")}
    assert omega and {k[6:] for k in omega} == {k[7:] for k in anchor}


def test_evaluate_reproduces_the_final_metrics(runs):
    _, out = runs
    r = invoke("evaluate", out["mas"], "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    final = json.loads((out["mas"] / "metrics.json").read_text())["final"]
    for task in ("B1", "B2"):
        for m in ("top1", "top5", "top10"):
            assert got["tasks"][task][m] == pytest.approx(final[task][m], abs=1e-9)
    table = invoke("evaluate", out["mas"], "--after", "B1", "--device", "cpu")
    assert table.exit_code == 0 and "after B1" in table.output and "top5" in table.output


def test_query_prints_ranked_facts(runs):
    world, out = runs
    rows = [json.loads(line) for line in (world / "manifest.jsonl").read_text().splitlines()]
    image = world / rows[0]["image"]
    r = invoke("query", out["finetune"], image, "--top-k", 3, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert len(result) == 1 and len(result[0]["facts"]) == 3
    scores = [h["score"] for h in result[0]["facts"]]
    assert scores == sorted(scores, reverse=True)
    text = invoke("query", out["finetune"], image, "--device", "cpu")
    assert text.exit_code == 0 and text.output.count("<") == 5


def test_compare_prints_both_methods(runs):
    _, out = runs
    r = invoke("compare", out["finetune"], out["mas"])
    assert r.exit_code == 0 and "finetune" in r.output and "mas" in r.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--data", "{world}", "--method", "magic", "--out", "{tmp}/r"], "--method"),
        (["train", "--data", "{tmp}/nowhere", "--method", "mas", "--out", "{tmp}/r"], "data directory not found"),
        (["train", "--data", "{world}", "--config", "{tmp}/bad.yaml", "--out", "{tmp}/r"], "train.epoch"),
        (["train", "--data", "{world}", "--out", "{run}"], "exists and is not empty"),
        (["train", "--data", "{world}", "--device", "tpu", "--out", "{tmp}/r"], "--device"),
        (["query", "{run}", "{tmp}/missing.png"], "image not found"),
        (["query", "{run}", "{tmp}/bad.png"], "cannot read image"),
        (["evaluate", "{tmp}"], "not a factlearn run directory"),
        (["evaluate", "{run}", "--after", "B9"], "--after B9"),
    ],
)
def test_bad_input_is_one_clear_error(runs, tmp_path, args, fragment):
    world, out = runs
    (tmp_path / "bad.yaml").write_text("train: {epoch: 2}\n")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    before = sorted(p.name for p in out["mas"].rglob("*"))
    fill = {"world": world, "tmp": tmp_path, "run": out["mas"]}
    r = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in out["mas"].rglob("*")) == before  # nothing written or lost


def test_corrupt_checkpoint_is_named(runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs[1]["mas"], run)
    (run / "checkpoints" / "B2" / "model.safetensors").write_bytes(b"garbage")
    r = CliRunner().invoke(main, ["evaluate", str(run)])
    assert r.exit_code == 2 and "model.safetensors" in r.output and "corrupt" in r.output


# ---- what a user sees: help, defaults, lambda, task files, imports, faiss's loader (issue 20) ----

def test_help_fits_and_shows_the_defaults():
    listing = invoke("--help").output
    for command in ("compare", "data", "evaluate", "importance", "pretrain", "query", "split", "synth", "train"):
        [line] = [x for x in listing.splitlines() if x.strip().startswith(command + " ")]
        assert not line.rstrip().endswith("..."), line
    train = invoke("train", "--help").output
    assert "[finetune|mas|" in train and "else finetune" in train  # --method: a choice, its default shown
    assert "cuda:N" in train and "split.seed" in train and "tensorboard, csv" in train
    compare = invoke("compare", "--help").output
    assert "generalized" in compare and "both" in compare


def test_train_says_which_lambda_and_logs_as_asked(runs, tmp_path, tiny_config):
    world, out = runs
    r = invoke("train", "--data", world, "--config", tiny_config, "--method", "mas", "--lam", 0.25, "--out",
               tmp_path / "r", "--device", "cpu", "--log", "tensorboard,csv")
    assert r.exit_code == 0, r.output
    assert "method mas, lambda 0.25 (method.lam" in r.output
    assert {p.name.split(".")[0] for p in (tmp_path / "r" / "logs").iterdir()} == {"scalars", "events"}
    assert "(no lambda)" in invoke("train", "--data", world, "--config", tiny_config, "--out", tmp_path / "f",
                                   "--device", "cpu", "--log", "none").output
    assert not (tmp_path / "f" / "logs").exists()
    bad = CliRunner().invoke(main, ["train", "--data", str(world), "--out", str(tmp_path / "b"), "--log", "tb"])
    assert bad.exit_code == 2 and "--log tb" in bad.output and "Traceback" not in bad.output


def test_a_task_file_run_records_the_file_and_resumes(tmp_path, tiny_config):
    import hashlib

    import yaml
    from test_importers import sherlock_tree

    r = invoke("data", "import", "sherlock", sherlock_tree(tmp_path / "mid_scale"), tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert "<S,P,O>" in r.output and "B1 2 facts 6 images" in r.output  # counts per fact order and per task
    summary = json.loads((tmp_path / "data" / "import.json").read_text())
    assert sum(n["images"] for n in summary["by_order"].values()) == 12
    assert summary["by_task"]["4tasks_semantic"]["B1"] == {"facts": 2, "images": 6}
    tasks_file = tmp_path / "data" / "tasks" / "4tasks_semantic.json"
    args = ["train", "--data", tmp_path / "data", "--config", tiny_config, "--tasks-file", tasks_file,
            "--out", tmp_path / "run", "--device", "cpu"]
    assert invoke(*args).exit_code == 0
    split = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["split"]
    assert split["tasks_file"] == str(tasks_file.resolve()) and "kind" not in split and "tasks" not in split
    record = json.loads((tmp_path / "run" / "run.json").read_text())["tasks_file"]
    assert record == {"path": str(tasks_file.resolve()), "sha256": hashlib.sha256(tasks_file.read_bytes()).hexdigest()}
    assert json.loads((tmp_path / "run" / "split.json").read_text())["tasks_file"] == record
    again = invoke(*args, "--resume")  # the config compares equal to the one recorded
    assert again.exit_code == 0, again.output


def test_faiss_loader_noise_is_kept_out_and_the_kernel_said_once():
    import logging

    from factlearn.cli import FaissLoaderFilter

    def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("faiss.loader", level, __file__, 1, message, None, None)

    keep = FaissLoaderFilter()
    assert not keep.filter(record("Loading faiss with AVX2 support."))
    assert not keep.filter(record("Could not load library with AVX2 support due to:\nModuleNotFoundError(...)"))
    said = record("Successfully loaded faiss with AVX2 support.")
    assert keep.filter(said) and said.getMessage().startswith("faiss kernel: faiss with AVX2 support (compile options")
    assert keep.filter(record("something is wrong", logging.WARNING))
