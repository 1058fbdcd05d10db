"""factlearn.experiments (scripts/reproduce.py and scripts/sweep_lambda.py) without training: the
runs they would launch, skip and resume, and the tables they write from metrics files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

import factlearn
from factlearn.errors import UserError
from factlearn.experiments import (
    config,
    execute,
    plots,
    report,
    reproduce,
    sweep,
    tables,
)
from factlearn.experiments import plan as plans
from factlearn.experiments.children import child_cwd, child_env
from factlearn.io import atomic_write_text
from factlearn.results import PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / reproduce.CONFIG_DIR

METHODS = ["finetune", "l2", "ewc", "si", "lwf", "mas", "lmas", "joint"]


@pytest.fixture(scope="module")
def exp() -> config.Experiments:
    return config.load_experiments(CONFIG_DIR / "experiments.yaml")


def test_plan_of_every_suite(exp, tmp_path):
    plan = plans.make_plan(exp, list(config.SUITES), "quick", 1, tmp_path)
    ids = set(plan.runs)
    # 8 methods x 3 sequences, + mas on B11 and on B12, + mas on the group's images; the rest is shared;
    # + the fact-level adaptation: finetune, mas, mas on the held-out images of B11, B12 and both;
    # + the same with halves by group (adaptation-groups: its own sequence, random2-groups);
    # + the shift: mas on B1's images in each of the three styles (finetune and mas are the two-task runs);
    # + topic-distinct: finetune, mas, joint and mas on the group's held-out images, on the topic world
    assert len(ids) == 27 + 5 + 5 + 3 + 4
    assert plan.suites["adaptation-groups"][0] == "random2-groups"
    assert plan.runs["random4-topic/seed0/mas-imp-topic-held-out"].config == "mas-imp-topic-held-out"
    assert [e.variant for e in plan.suites["shift"][1]] == ["finetune", "mas", "mas-imp-background-B1",
                                                            "mas-imp-dusk-B1", "mas-imp-dim-B1"]
    assert plan.runs["random2/seed0/mas-imp-background-B1"].importance == "random2-background-B1"
    assert plan.suites["adaptation-facts"][0] == "random2-facts"
    assert [e.variant for e in plan.suites["adaptation-facts"][1]] == ["finetune", "mas", "mas-imp-B11", "mas-imp-B12",
                                                                      "mas-imp-B1"]
    assert plan.runs["random2-facts/seed0/mas"].probes == ("random2-facts-B11-test", "random2-facts-B12-test")
    assert plan.runs["random2-facts/seed0/mas-imp-B1"].parent == "random2-facts/seed0/finetune"
    assert {f"random2/seed0/{m}" for m in METHODS} <= ids
    assert {"random2/seed0/mas-imp-B11", "random2/seed0/mas-imp-B12", "random4/seed0/mas-imp-group-colour-train"} <= ids
    shared = plan.runs["random2/seed0/mas"]  # two-task, adaptation, shift: one run, probed on every view
    assert shared.probes == ("random2-B11", "random2-B12", "test-background", "test-dusk", "test-dim")
    assert shared.importance is None
    assert plan.runs["random2/seed0/lwf"].probes == ()
    assert plan.suites["adaptation"][0] == "random2" and plan.suites["topic"][0] == "random4"
    assert [e.variant for e in plan.suites["adaptation"][1]] == ["finetune", "mas", "mas-imp-B11", "mas-imp-B12"]
    assert [e.variant for e in plan.suites["topic"][1]] == ["finetune", "mas", "joint", "mas-imp-group-colour-train"]
    assert plan.data == tmp_path / "data" / "world" and plan.world == config.WorldSpec("small", 0)
    # the first task of a sequence and seed is trained once, by finetune; si trains its own (its path
    # integral runs during the first task)
    parents = {run.id: run.parent for run in plan.runs.values()}
    assert parents["random2/seed0/finetune"] is None and parents["random2/seed0/si"] is None
    assert parents["random2/seed0/mas-imp-B11"] == parents["random2/seed0/joint"] == "random2/seed0/finetune"
    assert parents["random4/seed0/mas-imp-group-colour-train"] == "random4/seed0/finetune"

    cmd = execute.train_command(plan, plan.runs["random2/seed0/mas-imp-B11"], "cpu")
    assert cmd[:4] == [sys.executable, "-m", "factlearn", "train"]
    assert cmd[cmd.index("--importance-data") + 1] == str(tmp_path / "views" / "random2-B11")
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "configs" / "mas.yaml")
    assert cmd[cmd.index("--tasks-file") + 1] == str(tmp_path / "tasks" / "random2.json")
    assert "--resume" not in cmd
    # children run from OUT/logs, not from here (python -m would import a checkout's factlearn/ first),
    # so every path they get is absolute
    assert all(Path(cmd[i + 1]).is_absolute() for i, a in enumerate(cmd) if a in ("--data", "--config", "--out"))
    assert child_cwd(tmp_path / "logs" / "x.log") == tmp_path / "logs"
    assert child_env()["OMP_NUM_THREADS"] == "1"
    assert child_env(tmp_path / "cache")["FACTLEARN_IMAGE_CACHE"] == str(tmp_path / "cache")


def test_plan_seeds_and_data(exp, tmp_path):
    plan = plans.make_plan(exp, ["two-task"], "full", 3, tmp_path / "out", tmp_path / "mydata")
    assert len(plan.runs) == 8 * 3 and plan.world is None and plan.data == tmp_path / "mydata"
    assert sorted({r.seed for r in plan.runs.values()}) == [0, 1, 2]
    assert {r.sequence for r in plan.runs.values()} == {"random2"}
    assert not plan.views


def test_skip_complete_and_resume_started(exp, tmp_path):
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path)
    done, started = plan.runs["random2/seed0/mas"], plan.runs["random2/seed0/ewc"]
    _write_run(plan.run_dir(done), "mas", [[0.9, 0.1], [0.8, 0.9]])
    partial = plan.run_dir(started)
    _write_run(partial, "ewc", [[0.9, 0.1]], tasks=["B1", "B2"])  # one row of two: not complete
    assert execute.run_complete(plan.run_dir(done))
    assert not execute.run_complete(partial)
    assert "--resume" in execute.train_command(plan, started, "cpu")
    assert not execute.run_complete(plan.run_dir(plan.runs["random2/seed0/si"]))


def test_config_of_an_existing_run_must_match(exp, tmp_path):
    from factlearn.config import Config, from_dict

    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path)
    run = plan.runs["random2/seed0/mas"]
    cfg = config.method_config(exp, "quick", "mas")
    saved = from_dict(Config, cfg).to_dict()
    saved["split"]["tasks_file"] = str(plan.tasks_file("random2"))
    plan.run_dir(run).mkdir(parents=True)
    (plan.run_dir(run) / "config.yaml").write_text(yaml.safe_dump(saved))
    assert execute.config_mismatch(plan, run, cfg) is None
    saved["method"]["lam"] = cfg["method"]["lam"] + 1
    (plan.run_dir(run) / "config.yaml").write_text(yaml.safe_dump(saved))
    assert "method.lam" in execute.config_mismatch(plan, run, cfg)
    # what `factlearn train --resume` lets change (how often it saves) is no mismatch either
    saved["method"]["lam"] = cfg["method"]["lam"]
    saved["train"]["checkpoint_every"] += 1
    (plan.run_dir(run) / "config.yaml").write_text(yaml.safe_dump(saved))
    assert execute.config_mismatch(plan, run, cfg) is None


@pytest.mark.parametrize("file, old, new, key", [
    ("experiments.yaml", "split_seed: 0", "split_seed: 0\nsplit_sed: 1", "'split_sed'"),  # unknown key
    ("experiments.yaml", "split_seed: 0", "", "missing key 'split_seed'"),
    ("experiments.yaml", "split_seed: 0", "split_seed: zero", "split_seed: expected int"),
    ("experiments.yaml", "{split: random, tasks: 2}", "{split: random, taks: 2}", "'suites.two-task.taks'"),
    ("experiments.yaml", "{split: random, tasks: 2}", "{split: random, tasks: two}", "suites.two-task.tasks: expected int"),
    ("experiments.yaml", "{split: random, tasks: 2}", "{tasks: 2}", "missing key 'suites.two-task.split'"),
    ("experiments.yaml", "two-task:", "five-task:", "unknown suite 'five-task'"),
    ("experiments.yaml", "{preset: small, seed: 0}", "{preset: small}", "missing key 'scales.quick.world.seed'"),
    ("experiments.yaml", "methods_file: methods.yaml", "methods_file: [methods.yaml]", "methods_file: expected str"),
    ("experiments.yaml", "group: colour, ", "", "suites.topic needs a 'group'"),
    ("experiments.yaml", "topic_world: true, ", "", "suites.topic-distinct: topic_world is for topic-distinct"),
    ("experiments.yaml", "held_out: 0.2,", "held_out: 1.5,", "needs group: topic"),
    ("experiments.yaml", "styles: [background, dusk, dim], ", "styles: [background, clean], ", "suites.shift needs 'styles'"),
    ("experiments.yaml", "styles: [background, dusk, dim], ", "styles: [dusk, dusk], ", "a list of distinct styles"),
    ("experiments.yaml", "styles: [background, dusk, dim], ", "", "suites.shift needs 'styles'"),
    ("quick.yaml", "epochs: 4", "epoch: 4", "'train.epoch'"),
    ("methods.yaml", "  mas: {lam: 0.3}", "  mas: {lamb: 0.3}", "'method.lamb'"),
])
def test_experiments_file_is_checked(tmp_path, file, old, new, key):
    """Every mistake in the experiments file or the files it names is one line naming the file and the key."""
    for name in ("experiments.yaml", "quick.yaml", "full.yaml", "methods.yaml", "faithful.yaml", "modern.yaml"):
        text = (CONFIG_DIR / name).read_text()
        if name == file:
            assert old in text
            text = text.replace(old, new, 1)
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as caught:
        exp = config.load_experiments(tmp_path / "experiments.yaml")
        config.method_config(exp, "quick", "mas")  # the methods file's keys are checked per method
    message = str(caught.value)
    assert key in message and "\n" not in message
    assert str(tmp_path / file) in message or (file == "methods.yaml" and str(tmp_path) in message)


def test_tables_mean_and_std_over_seeds(exp, tmp_path):
    plan = plans.make_plan(exp, ["two-task"], "quick", 2, tmp_path)
    for seed, b1 in ((0, 0.5), (1, 0.7)):
        for method in METHODS:
            run = plan.runs[f"random2/seed{seed}/{method}"]
            _write_run(plan.run_dir(run), method, [[0.9, 0.0], [b1, 0.8]])
    res = tables.collect(plan, "two-task")
    table = tables.final_table(res, "standard", "top1").splitlines()
    assert table[0] == "| method | B1 | B2 | mean | BWT | vs finetune |"
    # B1 0.5 and 0.7: 60.0 ± 14.1; B2 80.0 twice; mean (0.65, 0.75); BWT (-0.4, -0.2)
    assert table[2] == "| finetune | 60.0 ± 14.1 | 80.0 ± 0.0 | 70.0 ± 7.1 | -30.0 ± 14.1 | - |"
    assert table[3] == "| l2 | 60.0 ± 14.1 | 80.0 ± 0.0 | 70.0 ± 7.1 | -30.0 ± 14.1 | 0.0 ± 0.0 |"
    # paired: seed 0 of l2 against seed 0 of finetune, seed 1 against seed 1
    _write_run(plan.run_dir(plan.runs["random2/seed1/l2"]), "l2", [[0.9, 0.0], [0.9, 0.8]])
    paired = tables.final_cells(tables.collect(plan, "two-task"), "standard", "top1")["l2"]["vs finetune"]
    assert paired.seeds == (0, 1) and paired.values == pytest.approx((0.0, 0.1))
    assert len(table) == 2 + len(METHODS)
    matrix = tables.matrix_table(res, "mas", "standard", "top1").splitlines()
    assert matrix[2] == "| after B1 | 90.0 ± 0.0 |  |"
    assert tables.mean_std([0.123]) == "12.3" and tables.mean_std([]) == "-" and tables.mean_std([float("nan")]) == "-"
    readme = report.write_report(plan, exp, {"command": "x", "jobs": 1, "finished": "now", "seconds": 60,
                                         "trained": 16, "skipped": 0, "failed": 0}, plots=False)
    text = readme.read_text()
    assert "## two-task" in text and "60.0 ± 14.1" in text and (tmp_path / "two-task.md").is_file()


def test_several_suites_in_one_invocation():
    args = reproduce.parse_args(["--suite", "two-task", "four-task", "--seeds", "3"])
    assert args.suite == ["two-task", "four-task"]
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--suite", "two-task", "nonsense"])


def test_report_only_trains_nothing(exp, tmp_path, capsys):
    plan = plans.make_plan(exp, ["two-task"], "quick", 1, tmp_path)
    for method in METHODS[:3]:  # a reproduction still under way: three runs of eight complete
        _write_run(plan.run_dir(plan.runs[f"random2/seed0/{method}"]), method, [[0.9, 0.0], [0.6, 0.8]])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert reproduce.main(["--suite", "all", "--quick", "--out", str(tmp_path), "--report-only", "--no-plots"], ROOT) == 0
    assert "report of the complete runs so far" in capsys.readouterr().out
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # no world, no run, no log; adaptation shares the two-task finetune run
    assert set(after) - set(before) == {Path("README.md"), Path("two-task.md"), Path("adaptation.md"),
                                        Path("shift.md"), Path("summary.json")}
    table = (tmp_path / "two-task.md").read_text()
    assert "| finetune | 60.0 | 80.0 |" in table and "| joint | - | - | - | - |" in table
    # the page names its task file by the command that writes it: no link to OUT/tasks/, which is
    # not published with the pages
    assert "](tasks/" not in table
    assert "`factlearn split <data> --kind random --tasks 2 --seed 0 --adaptation-images --test-fraction 0.3`" in table


def test_plots_of_the_final_accuracy(exp, tmp_path):
    plan = plans.make_plan(exp, ["two-task"], "quick", 2, tmp_path)
    for run in plan.runs.values():
        _write_run(plan.run_dir(run), run.method, [[0.9, 0.0], [0.5 + 0.1 * run.seed, 0.8]])
    pngs = plots.suite_plots(plan.out, "two-task", exp.suites["two-task"], tables.collect(plan, "two-task"))
    names = {p.relative_to(tmp_path / "plots" / "two-task").as_posix() for p in pngs}
    assert {"final_standard.png", "final_generalized.png", "standard/sequence_top1.png"} <= names
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_adaptation_and_topic_tables_from_probes(exp, tmp_path):
    plan = plans.make_plan(exp, ["adaptation", "topic"], "quick", 1, tmp_path)
    for run in plan.runs.values():
        tasks = ["B1", "B2"] if run.sequence == "random2" else ["B1", "B2", "B3", "B4"]
        acc = [[0.5] * len(tasks) for _ in tasks]
        _write_run(plan.run_dir(run), run.method, acc, tasks=tasks)
        for view in run.probes:
            # every task's view: B1 has 30 images at 0.9, the others 10 at 0.5
            after = {t: {p: {u: {"top1": 0.9 if u == "B1" else 0.5, "top5": 1.0, "n": 30 if u == "B1" else 10}
                             for u in tasks} for p in PROTOCOLS} for t in tasks}
            atomic_write_text(plan.probe_file(run, view), json.dumps({"after": after}))
    sections = tables.suite_sections("adaptation", exp.suites["adaptation"], tables.collect(plan, "adaptation"))
    header = sections[0].splitlines()[-len(plan.suites["adaptation"][1]) - 2]
    assert header.startswith("| method | B1 test top-1 | B2 test top-1 | B11 images top-1 | B12 images top-1 |")
    assert "| mas (importance: B11) | 50.0 | 50.0 | 90.0 | 90.0 |" in sections[0]
    res = tables.collect(plan, "topic")
    curve = tables.monitored_curve(res.probes["finetune"]["group-colour-test"], res.tasks, "standard", "top1")
    assert curve[0] == pytest.approx([0.9, (27 + 5) / 40, (27 + 10) / 50, (27 + 15) / 60])
    sections = tables.suite_sections("topic", exp.suites["topic"], res)
    assert "| mas (importance: colour images only) | 90.0 | 80.0 | 74.0 | 70.0 |" in sections[0]


def test_sweep_plan_uses_a_validation_split(exp, tmp_path):
    from factlearn.experiments.protocols import SCRATCH_PROTOCOL

    plan, configs = sweep.sweep_plan(exp, SCRATCH_PROTOCOL, {"mas": [1, 10]}, "quick", 1, tmp_path, "random", 2, 0.2)
    assert sorted(plan.runs) == ["random2/seed0/mas-lam1", "random2/seed0/mas-lam10"]
    assert plan.data == tmp_path / "data" / "val" and plan.test_fraction == 0.2
    assert configs["mas-lam10"]["method"]["lam"] == 10 and configs["mas-lam10"]["split"]["test_fraction"] == 0.2
    cmd = execute.train_command(plan, plan.runs["random2/seed0/mas-lam10"], "cpu")
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "configs" / "mas-lam10.yaml")
    assert cmd[cmd.index("--data") + 1] == str(tmp_path / "data" / "val")


def test_views_and_steps_from_a_world(exp, tiny_world, tmp_path):
    """The task files, views and step counts of the adaptation and topic suites on a tiny world
    (12 facts of 4 training and 2 test images each)."""
    from click.testing import CliRunner

    from factlearn.cli import main as factlearn_main
    from factlearn.data.manifest import load_dataset
    from factlearn.data.splits import load_tasks_file
    from factlearn.experiments.prepare import (
        run_configs,
        split_options,
        train_steps,
        view_rows,
        write_view,
    )

    plan = plans.make_plan(exp, ["adaptation", "topic"], "quick", 1, tmp_path, tiny_world)
    for seq in plan.sequences:  # what prepare() runs as a child process, in this one
        result = CliRunner().invoke(factlearn_main, ["split", str(tiny_world), *split_options(plan, seq),
                                                     "--out", str(plan.tasks_file(seq))])
        assert result.exit_code == 0, result.output
    world = load_dataset(tiny_world)
    source_lines = (tiny_world / "manifest.jsonl").read_text().splitlines()
    for view in plan.views.values():
        rows = view_rows(plan, view)
        write_view(plan.data, rows, plan.view_dir(view.name))
        # the data's own manifest rows, byte for byte, and its images, linked
        lines = (plan.view_dir(view.name) / "manifest.jsonl").read_text().splitlines()
        assert lines == [source_lines[i] for i in rows]
        written = load_dataset(plan.view_dir(view.name))
        assert all(r.image.samefile(world.records[i].image) for r, i in zip(written.records, rows))
        if view.kind == "half":
            assert rows == list(load_tasks_file(plan.tasks_file(view.sequence), world).adaptation[view.half])
        else:
            assert {r.group for r in written.records} == {"colour"}
            assert {r.split for r in written.records} == {"test" if view.kind == "group-test" else "train"}
    steps = train_steps(plan, run_configs(plan, exp))
    # quick: batch 32, 4 epochs. random2: 6 facts x 4 training images = 24 per task, 1 batch per epoch;
    # joint trains on 24, then 48 (2 batches). random4: 3 facts x 4 = 12 per task.
    assert steps["random2/seed0/mas"] == steps["random2/seed0/mas-imp-B11"] == 2 * 4
    assert steps["random4/seed0/finetune"] == 4 * 4 and steps["random4/seed0/joint"] == 4 * (1 + 1 + 2 + 2)


def test_probe_evaluates_every_checkpoint_on_every_image(tiny_world, tmp_path, monkeypatch):
    from factlearn.experiments import probe

    calls = []

    class Run:  # a run directory whose tasks B1 and B2 are complete
        def __init__(self, path):
            pass

        def completed(self):
            return ["B1", "B2"]

    def evaluate_run(run_dir, data_dir, **options):
        calls.append((run_dir, data_dir, options))
        return {"B1": {}, "B2": {}}

    monkeypatch.setattr(probe, "RunDir", Run)
    monkeypatch.setattr(probe, "evaluate_run", evaluate_run)
    probe.probe(tmp_path / "run", tiny_world, tmp_path / "probe.json", "cpu")
    assert calls == [(tmp_path / "run", tiny_world, {"after": ["B1", "B2"], "protocols": PROTOCOLS,
                                                      "device": "cpu", "images": "all"})]
    doc = json.loads((tmp_path / "probe.json").read_text())
    assert doc == {"run": str(tmp_path / "run"), "view": str(tiny_world), "images": 72, "after": {"B1": {}, "B2": {}}}


def _write_run(folder: Path, method: str, acc: list[list[float]], tasks: list[str] | None = None) -> None:
    """A run directory with a metrics.json like factlearn's, the same numbers for top-1 and top-5."""
    tasks = tasks or [f"B{j + 1}" for j in range(len(acc[0]))]
    last = len(acc) - 1
    seq = {"average": sum(acc[last][: last + 1]) / (last + 1),
           "bwt": sum(acc[last][j] - acc[j][j] for j in range(last)) / last if last else float("nan")}
    block = {"matrix": {"top1": acc, "top5": acc},
             "final": {t: {"top1": acc[last][j], "top5": acc[last][j], "n": 10} for j, t in enumerate(tasks)},
             "sequence": {"top1": seq, "top5": seq}}
    doc = {"method": method, "protocol": "standard", "tasks": tasks, **block,
           "protocols": {"standard": block, "generalized": block}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(doc))
    (folder / "run.json").write_text(json.dumps({"factlearn_version": factlearn.__version__}))


def test_tiny_reproduction_of_the_faithful_protocol_end_to_end(tiny_world, tmp_path, capsys):
    """scripts/reproduce.py --protocol faithful on the tiny world, for real (child processes): the base
    world and the pretrained tower, the runs (MAS's controls too) from it, the pages and summary.json
    agreeing with them; a second invocation trains nothing."""
    from test_experiments_protocols import check_summary_against_pages

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "faithful.yaml").write_text((CONFIG_DIR / "faithful.yaml").read_text())  # the real protocol file
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    tiny["train"]["checkpoint_every"] = 0
    (configs / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    (configs / "methods.yaml").write_text("quick: {finetune: {}, mas: {lam: 1.0}}\n")
    (configs / "experiments.yaml").write_text(yaml.safe_dump({
        "scales": {"quick": {"world": {"preset": "small", "seed": 0}, "config": "tiny.yaml", "pretrain_epochs": 1,
                             "base": {"preset": "base", "seed": 1000, "facts": 12, "images_per_fact": 4, "size": 32}}},
        "methods_file": "methods.yaml", "split_seed": 0, "methods": ["finetune", "mas"],
        "suites": {"two-task": {"split": "random", "tasks": 2}}, "protocols": {"faithful": "faithful.yaml"}}))
    out = tmp_path / "out"
    argv = ["--suite", "two-task", "--quick", "--protocol", "faithful", "--data", str(tiny_world), "--out", str(out),
            "--experiments", str(configs / "experiments.yaml"), "--jobs", "2", "--device", "cpu", "--no-plots"]
    assert reproduce.main(argv, ROOT) == 0, capsys.readouterr()
    assert (out / "pretrained" / "pretrain.json").is_file() and (out / "data" / "base" / "manifest.jsonl").is_file()
    assert not (out / "data" / "world").exists()  # --data: no world generated
    faithful = out / "faithful"
    run = faithful / "runs" / "random2" / "seed0" / "mas-noise"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["pretrained"] == str(out / "pretrained") and saved["loss"]["distance"] == "raw"
    assert saved["method"]["importance_control"] == "noise" and saved["train"]["optimizer"] == "sgd"
    readme = (faithful / "README.md").read_text()
    assert "faithful protocol" in readme and "pretrained on the base world" in readme
    assert "mas-noise: 1 (mas's: methods.yaml, not swept under this protocol)" in readme
    # the MAS runs took their first task from finetune's (train --start-from), and trained the second
    for variant in ("mas", "mas-noise", "mas-shuffled"):
        info = json.loads((faithful / "runs" / "random2" / "seed0" / variant / "run.json").read_text())
        assert info["started_from"] == str(faithful / "runs" / "random2" / "seed0" / "finetune")
        assert info["completed"] == ["B1", "B2"]
    records = check_summary_against_pages(faithful, "faithful")
    assert {r["entry"] for r in records} == {"finetune", "mas", "mas-shuffled", "mas-noise"}
    assert all(r["seeds"] == [0] for r in records)
    capsys.readouterr()
    assert reproduce.main(argv, ROOT) == 0  # everything complete: skipped, the pretrained config matches
    printed = capsys.readouterr().out
    assert printed.count(": skipped") == 4 and "trained" not in printed.replace("0 to train", "")


@pytest.mark.parametrize("suite, seq", [("adaptation-facts", "random2-facts"), ("adaptation-groups", "random2-groups")])
def test_fact_level_adaptation_views_and_table(exp, tiny_world, tmp_path, suite, seq):
    """adaptation-facts: `split --adaptation` (halves of B1's facts, held-out images); importance
    views of each half's held-out images and of both; probe views of each half's test images;
    the table's "B11 test" columns come from those probes. adaptation-groups: the same with halves
    of whole semantic groups (`--adaptation-by group`)."""
    from click.testing import CliRunner

    from factlearn.cli import main as factlearn_main
    from factlearn.data.manifest import load_dataset
    from factlearn.data.splits import image_splits, load_tasks_file
    from factlearn.experiments.prepare import split_options, view_rows

    plan = plans.make_plan(exp, [suite], "quick", 1, tmp_path, tiny_world)
    assert list(plan.sequences) == [seq]
    assert "--adaptation" in split_options(plan, seq) and "--adaptation-images" not in split_options(plan, seq)
    assert ("group" in split_options(plan, seq)) == (suite == "adaptation-groups")
    result = CliRunner().invoke(factlearn_main, ["split", str(tiny_world), *split_options(plan, seq),
                                                 "--out", str(plan.tasks_file(seq))])
    assert result.exit_code == 0, result.output
    world = load_dataset(tiny_world)
    task_file = load_tasks_file(plan.tasks_file(seq), world)
    is_test, facts = image_splits(world, plan.test_fraction, plan.split_seed), world.fact_ids()
    rows = {name: view_rows(plan, view) for name, view in plan.views.items()}
    for half in ("B11", "B12"):
        held_out = rows[f"{seq}-{half}"]
        assert held_out == list(task_file.adaptation[half]) and held_out
        assert {facts[i] for i in held_out} <= set(task_file.adaptation_facts[half])
        test = rows[f"{seq}-{half}-test"]
        assert test and all(is_test[i] for i in test) and not set(test) & set(held_out)
        assert {facts[i] for i in test} == set(task_file.adaptation_facts[half])
    assert rows[f"{seq}-B1"] == sorted(rows[f"{seq}-B11"] + rows[f"{seq}-B12"])
    assert not set(task_file.adaptation_facts["B11"]) & set(task_file.adaptation_facts["B12"])
    if suite == "adaptation-groups":  # no semantic group in both halves
        group, table = world.groups(), world.facts.facts
        in_half = {h: {group[table[f]] for f in task_file.adaptation_facts[h]} for h in ("B11", "B12")}
        assert in_half["B11"] and in_half["B12"] and not in_half["B11"] & in_half["B12"]

    for run in plan.runs.values():
        _write_run(plan.run_dir(run), run.method, [[0.5, 0.5], [0.5, 0.5]], tasks=["B1", "B2"])
        for view in run.probes:
            acc = 0.8 if view.endswith("B11-test") else 0.6
            after = {t: {p: {u: {"top1": acc, "top5": 1.0, "n": 10} for u in ("B1", "B2")} for p in PROTOCOLS}
                     for t in ("B1", "B2")}
            atomic_write_text(plan.probe_file(run, view), json.dumps({"after": after}))
    sections = tables.suite_sections(suite, exp.suites[suite], tables.collect(plan, suite))
    assert "| method | B1 test top-1 | B2 test top-1 | B11 test top-1 | B12 test top-1 |" in sections[0]
    assert "| mas (importance: held-out images of B11) | 50.0 | 50.0 | 80.0 | 60.0 |" in sections[0]


def test_shift_views_and_table(exp, tmp_path):
    """shift: the world rendered again in the suite's style; the importance view holds B1's training
    images and the probe view every test image, both restyled (same rows, other pixels); the table's
    "B1 test, background" columns come from that probe, and a run shared with another suite shows only
    its own suite's probes."""
    from click.testing import CliRunner

    from factlearn.cli import main as factlearn_main
    from factlearn.data.manifest import load_dataset
    from factlearn.data.splits import image_splits, load_tasks_file
    from factlearn.data.synth import generate_world
    from factlearn.experiments.prepare import check_restyled, split_options, view_rows, write_view

    plan = plans.make_plan(exp, ["adaptation", "shift"], "quick", 1, tmp_path)
    styled = plan.world_dir("background")
    assert styled == tmp_path / "data" / "world-background"
    for out, style in ((plan.data, "clean"), (styled, "background")):
        generate_world(out, seed=3, facts=12, images_per_fact=6, size=32, style=style, workers=1)
    check_restyled(plan.data, styled)
    result = CliRunner().invoke(factlearn_main, ["split", str(plan.data), *split_options(plan, "random2"),
                                                 "--out", str(plan.tasks_file("random2"))])
    assert result.exit_code == 0, result.output
    world = load_dataset(plan.data)
    is_test, facts = image_splits(world, plan.test_fraction, plan.split_seed), world.fact_ids()
    b1 = set(load_tasks_file(plan.tasks_file("random2"), world).tasks[0].facts)
    train, test = view_rows(plan, plan.views["random2-background-B1"]), view_rows(plan, plan.views["test-background"])
    assert train == [i for i in range(len(facts)) if facts[i] in b1 and not is_test[i]] and train
    assert test == [i for i in range(len(facts)) if is_test[i]] and test
    write_view(styled, train, plan.view_dir("random2-background-B1"))
    written = load_dataset(plan.view_dir("random2-background-B1"))
    assert all(r.image.samefile(load_dataset(styled).records[i].image) for r, i in zip(written.records, train))
    assert written.records[0].image.read_bytes() != world.records[train[0]].image.read_bytes()  # other pixels

    other = tmp_path / "other"  # another world is not the same world restyled
    generate_world(other, seed=4, facts=12, images_per_fact=6, size=32, style="dark", workers=1)
    with pytest.raises(UserError, match="not .* in another style"):
        check_restyled(plan.data, other)
    with pytest.raises(UserError, match="cannot run on --data"):
        plans.make_plan(exp, ["shift"], "quick", 1, tmp_path, plan.data)

    for run in plan.runs.values():
        _write_run(plan.run_dir(run), run.method, [[0.9, 0.0], [0.5, 0.8]])
        for view in run.probes:  # B1 in a style: 0.4 with importance from that style's images, else 0.3
            style = view.removeprefix("test-")
            acc = {"B1": 0.4 if run.importance == f"random2-{style}-B1" else 0.3, "B2": 0.6}
            after = {t: {p: {u: {"top1": 0.7 if t == "B1" else acc[u], "top5": 1.0, "n": 10} for u in ("B1", "B2")}
                         for p in PROTOCOLS} for t in ("B1", "B2")}
            atomic_write_text(plan.probe_file(run, view), json.dumps({"after": after}))
    sections = tables.suite_sections("shift", exp.suites["shift"], tables.collect(plan, "shift"))
    assert ("| method | B1 test after B1 top-1 | B1 test top-1 | B2 test top-1 | B1 test, background after B1 top-1 | "
            "B1 test, background top-1 | B2 test, background top-1 | B1 test, dim after B1 top-1 | B1 test, dim top-1 | "
            "B2 test, dim top-1 | B1 test, dusk after B1 top-1 | B1 test, dusk top-1 | B2 test, dusk top-1 | "
            "B1 test after B1 top-5 |" in sections[0])  # the styles' columns in name order
    row = "| 90.0 | 50.0 | 80.0 | 70.0 | {} | 60.0 | 70.0 | {} | 60.0 | 70.0 | {} | 60.0 |"
    assert "| mas (importance: B1's training images, background) " + row.format(40.0, 30.0, 30.0) in sections[0]
    assert "| mas (importance: B1's training images, dusk) " + row.format(30.0, 30.0, 40.0) in sections[0]
    assert "| mas (importance: B1's training images, dim) " + row.format(30.0, 40.0, 30.0) in sections[0]
    assert "| mas (importance: B1's training images, clean) " + row.format(30.0, 30.0, 30.0) in sections[0]
    adaptation = tables.suite_sections("adaptation", exp.suites["adaptation"], tables.collect(plan, "adaptation"))
    assert "background" not in adaptation[0]  # the shared mas run's shift probe is not an adaptation column


def test_topic_distinct_on_its_own_world(exp, tmp_path):
    """topic-distinct: its sequence is cut from and trained on the world made with --topic (the
    world's facts and a small new group), with held-out images and the monitored group in the task
    file; its importance variant is mas with config keys, not a view; steps count the held-out
    images out; the base world shares no fact with the topic world."""
    from click.testing import CliRunner

    from factlearn.cli import main as factlearn_main
    from factlearn.data.manifest import load_dataset
    from factlearn.data.splits import image_splits, load_tasks_file
    from factlearn.data.synth import generate_world
    from factlearn.data.synth.vocabulary import sample_facts
    from factlearn.experiments.prepare import run_configs, split_options, train_steps, view_rows

    plan = plans.make_plan(exp, ["four-task", "topic-distinct"], "quick", 1, tmp_path)
    seq = "random4-topic"
    assert plan.worlds["topic"].synth_options()[-1] == "--topic" and plan.data_of(seq) == tmp_path / "data" / "world-topic"
    assert plan.data_of("random4") == plan.data
    options = split_options(plan, seq)
    assert options[options.index("--held-out") + 1] == "0.2" and options[options.index("--monitor") + 1] == "topic"
    assert "--adaptation-images" not in options and "--adaptation-images" in split_options(plan, "random4")
    run = plan.runs[f"{seq}/seed0/mas-imp-topic-held-out"]
    assert run.importance is None and run.parent == f"{seq}/seed0/finetune"
    cmd = execute.train_command(plan, run, "cpu")
    assert cmd[cmd.index("--data") + 1] == str(tmp_path / "data" / "world-topic")
    configs = run_configs(plan, exp)
    assert configs["mas-imp-topic-held-out"]["method"]["importance_images"] == "held_out"
    assert configs["mas-imp-topic-held-out"]["method"]["importance_facts"] == "topic"
    assert configs["mas"]["method"].get("importance_facts", "all") == "all"  # the method's own config untouched
    assert {k: v for k, v in configs["mas-imp-topic-held-out"]["method"].items() if not k.startswith("importance")} \
        == {k: v for k, v in configs["mas"]["method"].items() if not k.startswith("importance")}

    for out, topic in ((plan.data, False), (plan.data_of(seq), True)):
        generate_world(out, seed=3, facts=20, images_per_fact=6, size=32, topic=topic, workers=1)
    result = CliRunner().invoke(factlearn_main, ["split", str(plan.data_of(seq)), *options,
                                                 "--out", str(plan.tasks_file(seq))])
    assert result.exit_code == 0, result.output
    world = load_dataset(plan.data_of(seq))
    task_file = load_tasks_file(plan.tasks_file(seq), world)
    assert task_file.held_out and task_file.monitored["topic"]
    rows = view_rows(plan, plan.views[f"{seq}-group-topic-test"])
    assert rows and {world.records[i].group for i in rows} == {"topic"}
    for cfg in configs.values():
        cfg["train"]["batch_size"] = 1  # a step per image: steps = 4 epochs x the images trained on
    steps = train_steps(plan, configs)
    is_test = image_splits(world, plan.test_fraction, plan.split_seed)
    trained = sum(1 for i in range(len(world.records)) if not is_test[i] and i not in set(task_file.held_out))
    assert steps[f"{seq}/seed0/finetune"] == 4 * trained  # the held-out images are not trained on
    plain = load_dataset(plan.data)
    assert steps["random4/seed0/finetune"] == 4 * int((~image_splits(plain, plan.test_fraction, plan.split_seed)).sum())
    # the topic world's regular facts are the world's (excluded from the base world); its topic facts
    # are new shapes, which no world without --topic shows
    facts = {str(f) for f, _ in sample_facts(186, 0)}
    regular = {str(f) for f, g in sample_facts(186, 0, topic=True) if g != "topic"}
    assert regular <= facts
