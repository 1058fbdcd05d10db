"""Training protocols of the reproduction (factlearn.experiments.protocols), summary.json and the
lambda trade-off of the sweep, without training: plans, configs, and reports of written metrics."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from test_reproduce import CONFIG_DIR, METHODS, _write_run

from factlearn.config import Config, from_dict
from factlearn.errors import UserError
from factlearn.experiments import config, execute, report, reproduce, sweep
from factlearn.experiments import plan as plans
from factlearn.experiments.prepare import ensure_pretrained, run_configs, train_steps
from factlearn.experiments.protocols import (
    SCRATCH_PROTOCOL,
    LambdaChoice,
    load_protocol,
    run_config,
    write_lambdas,
)
from factlearn.experiments.tables import METRIC_NAMES
from factlearn.experiments.tradeoff import pick_lambda

INVOCATION = {"command": "x", "jobs": 1, "finished": "now", "seconds": 60, "trained": 1, "skipped": 0, "failed": 0}


@pytest.fixture(scope="module")
def exp() -> config.Experiments:
    return config.load_experiments(CONFIG_DIR / "experiments.yaml")


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of configs/reproduce/ in a checkout of its own (a sweep writes lambda files there),
    without the lambda files a real sweep wrote: the tests write their own."""
    shutil.copytree(CONFIG_DIR, tmp_path / "checkout" / reproduce.CONFIG_DIR,
                    ignore=shutil.ignore_patterns("lambda-*.yaml"))
    return tmp_path / "checkout"


# --- protocols -----------------------------------------------------------------------------------
def test_scratch_is_the_setting_of_before(exp, tmp_path):
    """No --protocol: the same runs, paths and configs as before protocols existed."""
    assert load_protocol(exp, "scratch") is SCRATCH_PROTOCOL
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path)
    assert plan.out == tmp_path and plan.pretrained is None and plan.protocol.name == "scratch"
    assert sorted(plan.runs) == sorted(f"random2/seed0/{m}" for m in METHODS)
    configs = run_configs(plan, exp)
    assert configs == {m: config.method_config(exp, "quick", m) for m in METHODS}
    assert "pretrained" not in configs["mas"]["model"]


def test_faithful_protocol_plan_and_configs(exp, tmp_path):
    faithful = load_protocol(exp, "faithful")
    plan = plans.make_plan(exp, ["two-task", "adaptation"], "full", 3, tmp_path, protocol=faithful)
    assert plan.out == tmp_path / "faithful" and plan.data == tmp_path / "data" / "world"
    assert plan.pretrained == tmp_path / "pretrained" and plan.base_dir == tmp_path / "data" / "base"
    assert plan.base == config.WorldSpec("base", 1000) and plan.pretrain_epochs == 6
    variants = [e.variant for e in plan.suites["two-task"][1]]
    assert variants == METHODS + ["mas-shuffled", "mas-noise"]  # the controls: rows of the two-task suite only
    assert "mas-noise" not in [e.variant for e in plan.suites["adaptation"][1]]
    assert not any("mas-cubed" in r for r in plan.runs)  # suites: [], a curve of the sweep only
    assert load_protocol(exp, "faithful").variants["mas-cubed"].suites == []
    run = plan.runs["random2/seed2/mas-noise"]
    assert (run.method, run.config) == ("mas", "mas-noise")
    cmd = execute.train_command(plan, run, "cpu")
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "faithful" / "configs" / "mas-noise.yaml")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "faithful" / "runs" / "random2" / "seed2" / "mas-noise")
    configs = run_configs(plan, exp)
    for name, cfg in configs.items():
        c = from_dict(Config, cfg)
        assert c.model.pretrained == str(tmp_path / "pretrained"), name
        assert (c.model.freeze_stages, c.model.freeze_language, c.loss.distance, c.loss.contrastive_weight) == (
            1, True, "raw", 0.0)
        assert (c.train.optimizer, c.train.momentum, c.train.weight_decay, c.train.lr_schedule) == (
            "sgd", 0.9, 0.0005, "constant")
        assert c.train.val_fraction > 0 and c.train.patience >= 1 and c.train.epochs == 30
        assert c.model.backbone_config == exp.scale_config("full").model.backbone_config  # the scale's model
    assert configs["mas-shuffled"]["method"]["importance_control"] == "shuffled"
    assert configs["mas-noise"]["method"]["importance_control"] == "noise"
    assert configs["mas-noise"]["method"]["lam"] == configs["mas"]["method"]["lam"]  # the same lambda
    assert "importance_control" not in configs["mas"]["method"]
    quick = run_config(exp, faithful, "quick", "mas", tmp_path)
    assert quick["train"]["epochs"] < 30  # the quick scale's layer


def test_modern_protocol_is_the_scale_setting_from_the_pretrained_tower(exp, tmp_path):
    modern = load_protocol(exp, "modern")
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path, protocol=modern)
    configs = run_configs(plan, exp)
    scale = exp.scale_config("quick")
    for name, cfg in configs.items():
        c = from_dict(Config, cfg)
        assert c.model.pretrained == str(tmp_path / "pretrained")
        assert (c.train, c.loss) == (scale.train, scale.loss), name  # Adam, contrastive, the scale's epochs
        assert not c.model.freeze_language
    assert configs["mas"]["method"]["penalty"] == "loss"
    assert configs["mas-decoupled"]["method"]["penalty"] == "decoupled"
    assert configs["mas-normalized"]["method"]["importance_output"] == "normalized"
    assert {"mas-shuffled", "mas-noise", "mas-normalized", "mas-decoupled"} <= set(configs)
    assert modern.lam(exp, "quick", "mas-normalized")[1].startswith("methods.yaml, not swept")


def test_unknown_or_missing_protocol_is_one_line(exp, checkout):
    with pytest.raises(UserError, match="unknown protocol 'faithfull'.*scratch, faithful, modern"):
        load_protocol(exp, "faithfull")
    (checkout / reproduce.CONFIG_DIR / "modern.yaml").unlink()
    mine = config.load_experiments(checkout / reproduce.CONFIG_DIR / "experiments.yaml")
    with pytest.raises(UserError, match="protocol 'modern': file not found") as caught:
        load_protocol(mine, "modern")
    assert "\n" not in str(caught.value)
    path = checkout / reproduce.CONFIG_DIR / "faithful.yaml"
    good = path.read_text()
    path.write_text(good.replace("optimizer: sgd", "optimiser: sgd"))
    with pytest.raises(UserError, match="faithful.yaml.*'train.optimiser'") as caught:
        load_protocol(mine, "faithful")
    assert "\n" not in str(caught.value)
    path.write_text(good.replace("importance_power: 3}, suites: []", "importance_power: 3}, suites: [too-task]"))
    with pytest.raises(UserError, match="variants.mas-cubed.suites: no suite 'too-task'"):
        load_protocol(mine, "faithful")
    path.write_text(good.replace("importance_power: 3}", "importance_power: 0}"))
    with pytest.raises(UserError, match="importance_power"):
        load_protocol(mine, "faithful")
    code = reproduce.main(["--suite", "two-task", "--protocol", "nope", "--dry-run",
                           "--experiments", str(checkout / reproduce.CONFIG_DIR / "experiments.yaml")], checkout)
    assert code == 2


def test_a_results_folder_holds_one_protocol(exp, tmp_path):
    faithful = load_protocol(exp, "faithful")
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path, protocol=faithful)
    plan.out.mkdir(parents=True)
    (plan.out / "timings.json").write_text(json.dumps({"invocations": [{"protocol": "modern"}]}))
    with pytest.raises(UserError, match="results of the modern protocol, not faithful"):
        reproduce.check_protocol(plan)
    old = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path / "old")  # from before protocols: scratch
    old.out.mkdir()
    (old.out / "timings.json").write_text(json.dumps({"invocations": [{"command": "x"}]}))
    reproduce.check_protocol(old)


def test_an_existing_run_from_the_pretrained_tower_matches_its_config(exp, tmp_path):
    """A run's config.yaml holds the pretrained folder's whole architecture (resolve_pretrained): the
    keys the protocol's config gives must agree, the others are the folder's."""
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path, protocol=load_protocol(exp, "faithful"))
    run = plan.runs["random2/seed0/mas"]
    cfg = run_configs(plan, exp)["mas"]
    saved = from_dict(Config, cfg).to_dict()
    saved["split"]["tasks_file"] = str(plan.tasks_file("random2"))
    saved["model"]["backbone_config"].update(layer_type="basic", hidden_act="relu", num_channels=3)
    plan.run_dir(run).mkdir(parents=True)
    (plan.run_dir(run) / "config.yaml").write_text(yaml.safe_dump(saved))
    assert execute.config_mismatch(plan, run, cfg) is None
    saved["model"]["backbone_config"]["hidden_sizes"] = [8, 8, 8]
    (plan.run_dir(run) / "config.yaml").write_text(yaml.safe_dump(saved))
    assert "model.backbone_config" in execute.config_mismatch(plan, run, cfg)


def test_a_backbone_pretrained_for_other_epochs_is_refused(exp, tmp_path):
    """Changing pretrain_epochs must not silently reuse the old backbone: the runs made from it
    would mix two pretrainings."""
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path, protocol=load_protocol(exp, "faithful"))
    plan.pretrained.mkdir(parents=True)
    (plan.pretrained / "pretrain.json").write_text(json.dumps({"epochs": plan.pretrain_epochs + 1}))
    with pytest.raises(UserError, match=f"pretrained for {plan.pretrain_epochs + 1} epochs"):
        ensure_pretrained(plan, exp, tmp_path / "world", 1, "cpu", tmp_path / "log")
    (plan.pretrained / "pretrain.json").write_text(json.dumps({"epochs": plan.pretrain_epochs}))
    ensure_pretrained(plan, exp, tmp_path / "world", 1, "cpu", tmp_path / "log")  # the same: reused


def test_steps_count_the_validation_share_and_need_no_task_file(exp, tiny_world, tmp_path):
    """tiny world: 12 facts of 4 training images; random2: 6 facts (24 images) per task."""
    faithful = load_protocol(exp, "faithful")
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path, tiny_world, faithful)
    configs = run_configs(plan, exp)
    for cfg in configs.values():
        cfg["train"].update(batch_size=8, epochs=3, val_fraction=0.25)
    steps = train_steps(plan, configs)  # before `factlearn split` wrote the task file: the split it will write
    # 24 - 6 validation images = 18 per task: 3 batches of 8, 3 epochs (at most); joint: 18 then 36
    assert steps["random2/seed0/mas"] == steps["random2/seed0/mas-noise"] == 2 * 3 * 3
    assert steps["random2/seed0/joint"] == 3 * (3 + 5)


# --- the lambda rule and file --------------------------------------------------------------------
def test_pick_lambda_best_mean_ties_to_the_smaller():
    assert pick_lambda({0.1: [0.9, 0.5], 1.0: [0.8, 0.7], 10.0: [0.95, 0.3]}) == 1.0  # means 0.70, 0.75, 0.625
    assert pick_lambda({3.0: [0.6, 0.8], 1.0: [0.8, 0.6], 10.0: [0.5, 0.5]}) == 1.0  # a tie: the smaller
    assert pick_lambda({1.0: [0.1 + 0.2, 0.3], 0.3: [0.3, 0.1 + 0.2]}) == 0.3  # equal up to rounding: a tie
    assert pick_lambda({5.0: [0.5, 0.5]}) == 5.0
    with pytest.raises(ValueError):
        pick_lambda({})


def test_lambda_file_is_read_by_the_reproduction(checkout):
    exp = config.load_experiments(checkout / reproduce.CONFIG_DIR / "experiments.yaml")
    faithful = load_protocol(exp, "faithful")
    assert faithful.lambdas == {} and not faithful.lambda_path.exists()  # none in this checkout yet
    choice = LambdaChoice(3.0, 0.71, "top1", [0], [0.3, 3.0], "scripts/sweep_lambda.py --method mas", "now")
    path = write_lambdas(faithful, "quick", {"mas": choice}, "the rule")
    assert path == checkout / reproduce.CONFIG_DIR / "lambda-faithful.yaml"
    write_lambdas(faithful, "full", {"l2": choice}, "the rule")  # another scale: the first entry stays
    again = load_protocol(exp, "faithful")
    assert again.lambdas["quick"]["mas"] == choice and again.lambdas["full"]["l2"].lam == 3.0
    lam, source = again.lam(exp, "quick", "mas")
    assert lam == 3.0 and "lambda-faithful.yaml" in source and choice.command in source
    assert again.lam(exp, "quick", "mas-noise")[0] == 3.0  # a control: MAS's lambda
    assert run_config(exp, again, "quick", "mas-shuffled", checkout)["method"]["lam"] == 3.0
    assert again.lam(exp, "quick", "l2") == (0.1, "methods.yaml, not swept under this protocol")
    doc = yaml.safe_load(path.read_text())
    assert doc["protocol"] == "faithful" and doc["quick"]["mas"]["command"] == choice.command
    with pytest.raises(UserError, match="methods.yaml"):
        write_lambdas(SCRATCH_PROTOCOL, "quick", {"mas": choice}, "the rule")


# --- summary.json --------------------------------------------------------------------------------
def markdown_cell(page: str, heading: str, row: str, column: str) -> str:
    """The cell of a markdown table under the heading that contains ``heading``."""
    section = page[page.index(heading):]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[header.index(column)]
        if not line.startswith("|"):
            break
    raise AssertionError(f"no row {row!r} under {heading!r}")


def cell_text(rec: dict) -> str:
    if rec["mean"] is None:
        return "-"
    return f"{100 * rec['mean']:.1f}" + ("" if rec["std"] is None else f" ± {100 * rec['std']:.1f}")


def check_summary_against_pages(out: Path, protocol: str, suite: str = "two-task") -> list[dict]:
    """Every final-accuracy record of summary.json is the number its markdown page shows."""
    doc = json.loads((out / "summary.json").read_text())
    assert doc["format"] == "factlearn-experiments-summary" and doc["protocol"] == protocol
    page = (out / f"{suite}.md").read_text()
    final = [r for r in doc["records"] if r["suite"] == suite and r["after"] == "B2"]
    assert final
    for r in final:
        heading = f"{METRIC_NAMES[r['metric']]}, {r['evaluation']} evaluation ({protocol} protocol)"
        assert markdown_cell(page, heading, r["entry"], r["task"]) == cell_text(r), r
        assert r["protocol"] == protocol and r["n"] == len(r["seeds"])
    return doc["records"]


def test_summary_json_holds_the_tables_numbers_with_their_seeds(exp, tmp_path):
    faithful = load_protocol(exp, "faithful")
    plan = plans.make_plan(exp, ["two-task"], "quick", 2, tmp_path, protocol=faithful)
    for run in plan.runs.values():
        if run.seed == 1 and run.variant == "ewc":
            continue  # a seed still missing: ewc's cells cover seed 0 only
        b1 = 0.5 + 0.2 * run.seed + 0.01 * len(run.variant)
        _write_run(plan.run_dir(run), run.method, [[0.9, 0.0], [b1, 0.8]])
    report.write_report(plan, exp, INVOCATION, plots=False)
    records = check_summary_against_pages(plan.out, "faithful")
    assert "(faithful protocol)" in (plan.out / "README.md").read_text()
    by = {(r["entry"], r["evaluation"], r["metric"], r["task"], r["after"]): r for r in records}
    mas = by[("mas", "standard", "top1", "B1", "B2")]
    assert mas["seeds"] == [0, 1] and mas["n"] == 2 and mas["mean"] == pytest.approx(0.63)
    assert mas["std"] == pytest.approx(0.1414, abs=1e-4) and mas["variant"] == "mas"
    ewc = by[("ewc", "generalized", "top5", "mean", "B2")]
    assert ewc["seeds"] == [0] and ewc["std"] is None and ewc["mean"] == pytest.approx((0.53 + 0.8) / 2)
    assert by[("mas-noise", "standard", "top1", "B1", "B1")]["mean"] == pytest.approx(0.9)  # the matrix's first row
    assert by[("mas", "standard", "top1", "BWT", "B2")]["mean"] == pytest.approx(0.63 - 0.9)


# --- the sweep's trade-off -----------------------------------------------------------------------
def test_sweep_writes_the_tradeoff_and_the_lambdas_it_picks(checkout, tmp_path):
    exp = config.load_experiments(checkout / reproduce.CONFIG_DIR / "experiments.yaml")
    faithful = load_protocol(exp, "faithful")
    grids = sweep.sweep_grids(["mas", "l2", "mas-noise", "finetune"], faithful, [0.1, 1.0, 10.0])
    assert grids["finetune"] is None and grids["mas"] == [0.1, 1.0, 10.0]
    assert set(sweep.sweep_grids(["all"], faithful, None)) == {"mas", "l2", "ewc", "si", "lwf", "mas-shuffled",
                                                               "mas-noise", "mas-cubed", "finetune", "joint"}
    out = tmp_path / "sweep"
    plan, configs = sweep.sweep_plan(exp, faithful, grids, "quick", 1, out, "random", 2, 0.2)
    assert plan.out == out / "faithful" and plan.data == out / "data" / "val" and plan.pretrained == out / "pretrained"
    assert configs["mas-noise-lam10"]["method"] == {**configs["mas-lam10"]["method"], "importance_control": "noise"}
    assert configs["l2-lam0.1"]["split"]["test_fraction"] == 0.2 and configs["l2-lam0.1"]["method"]["lam"] == 0.1
    # old task (B1) falls and new task (B2) rises as lambda falls; mas's best mean is at 1, l2's at 0.1
    accuracy = {"mas": {0.1: (0.5, 0.9), 1.0: (0.7, 0.8), 10.0: (0.8, 0.5)},
                "l2": {0.1: (0.6, 0.9), 1.0: (0.65, 0.8), 10.0: (0.7, 0.6)},
                "mas-noise": {0.1: (0.5, 0.9), 1.0: (0.55, 0.85), 10.0: (0.6, 0.8)}}
    for run in plan.runs.values():
        name, lam = (run.variant.rsplit("-lam", 1) + ["0"])[:2]
        b1, b2 = accuracy[name][float(lam)] if name in accuracy else (0.4, 0.95)
        _write_run(plan.run_dir(run), run.method, [[0.9, 0.0], [b1, b2]])
    args = argparse.Namespace(metric="top1", val_fraction=0.2, split="random", tasks=2, seeds=1, no_record=True)
    sweep.write_sweep(plan, exp, grids, args, "a diagnostic: --no-record")
    assert not (checkout / reproduce.CONFIG_DIR / "lambda-faithful.yaml").exists()
    assert "Recorded in" not in (plan.out / "tradeoff.md").read_text()
    args.no_record = False
    text = sweep.write_sweep(plan, exp, grids, args, "scripts/sweep_lambda.py --method mas l2 mas-noise finetune")
    page = (plan.out / "tradeoff.md").read_text()
    assert "| mas | 1 | 75.0 |" in page and "| l2 | 0.1 | 75.0 |" in page and "ties go to the smaller lambda" in page
    assert "| mas | 1* | 70.0 | 80.0 | 75.0 |" in page and "| finetune | - | 40.0 | 95.0 | 67.5 |" in page
    assert "best: λ=1 " in (plan.out / "mas.md").read_text() and "tradeoff.md" not in text
    for proto in ("standard", "generalized"):
        assert (plan.out / "plots" / f"tradeoff_{proto}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lambdas = yaml.safe_load((checkout / reproduce.CONFIG_DIR / "lambda-faithful.yaml").read_text())
    assert {m: e["lam"] for m, e in lambdas["quick"].items()} == {"mas": 1.0, "l2": 0.1}  # the control has mas's
    assert lambdas["quick"]["mas"]["command"].startswith("scripts/sweep_lambda.py") and lambdas["quick"]["mas"]["seeds"] == [0]
    summary = json.loads((plan.out / "summary.json").read_text())
    assert summary["images"] == "validation" and summary["protocol"] == "faithful"
    rec = next(r for r in summary["records"] if r["entry"] == "l2" and r["lam"] == 10.0 and r["task"] == "B1"
               and r["metric"] == "top1" and r["evaluation"] == "standard" and r["after"] == "B2")
    assert rec["mean"] == pytest.approx(0.7) and rec["variant"] == "l2-lam10" and rec["suite"] == "sweep"
    assert load_protocol(exp, "faithful").lam(exp, "quick", "mas-shuffled")[0] == 1.0


def test_a_curve_with_a_missing_seed_picks_nothing(checkout, tmp_path):
    exp = config.load_experiments(checkout / reproduce.CONFIG_DIR / "experiments.yaml")
    modern = load_protocol(exp, "modern")
    grids = {"mas": [0.1, 1.0]}
    plan, _ = sweep.sweep_plan(exp, modern, grids, "quick", 2, tmp_path / "sweep", "random", 2, 0.2)
    for run in plan.runs.values():
        if run.variant != "mas-lam1" or run.seed == 0:
            _write_run(plan.run_dir(run), run.method, [[0.9, 0.0], [0.6, 0.8]])
    args = argparse.Namespace(metric="top1", val_fraction=0.2, split="random", tasks=2, seeds=2)
    sweep.write_sweep(plan, exp, grids, args, "x")
    assert "| mas | - | not every λ has every seed yet |" in (plan.out / "tradeoff.md").read_text()
    assert not (checkout / reproduce.CONFIG_DIR / "lambda-modern.yaml").exists()
    assert re.search(r"best: not yet", (plan.out / "mas.md").read_text())


def test_a_diverged_lambda_is_a_result_never_picked(checkout, tmp_path):
    """A run that diverged (diverged.json) counts as done: the curve is complete, the lambda is
    shown as diverged, never picked, and the run is not trained again."""
    from factlearn.experiments import execute
    from factlearn.run import RunDir

    exp = config.load_experiments(checkout / reproduce.CONFIG_DIR / "experiments.yaml")
    faithful = load_protocol(exp, "faithful")
    grids = {"si": [0.1, 1.0, 3.0]}
    plan, _ = sweep.sweep_plan(exp, faithful, grids, "quick", 1, tmp_path / "sweep", "random", 2, 0.2)
    for run in plan.runs.values():
        if run.variant == "si-lam3":
            _write_run(plan.run_dir(run), run.method, [[0.9, 0.0]], tasks=["B1", "B2"])  # B1 only
            RunDir(plan.run_dir(run)).mark_diverged("B2", "training diverged on task B2 (step 11)")
        else:
            b1 = 0.7 if run.variant == "si-lam1" else 0.5
            _write_run(plan.run_dir(run), run.method, [[0.9, 0.0], [b1, 0.8]])
    args = argparse.Namespace(metric="top1", val_fraction=0.2, split="random", tasks=2, seeds=1)
    sweep.write_sweep(plan, exp, grids, args, "x")
    page = (plan.out / "tradeoff.md").read_text()
    assert "| si | 1 | 75.0 |" in page and "| si | 3 | - | - | diverged (1 seed) |" in page
    lambdas = yaml.safe_load((checkout / reproduce.CONFIG_DIR / "lambda-faithful.yaml").read_text())
    assert lambdas["quick"]["si"]["lam"] == 1.0
    outcome = execute.execute(plan, [plan.runs["random2/seed0/si-lam3"]], 1, "cpu")[0]
    assert outcome.status == "diverged" and "B2" in outcome.message  # not trained again
