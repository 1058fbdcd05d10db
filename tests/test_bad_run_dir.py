"""No traceback for a user's mistake (issue 19): every command on malformed versions of every file a
run directory holds, and the other mistakes that used to end in a traceback or a run skeleton left
behind (a checkpoint with NaN weights, a bad backbone config, an --out that cannot be written, OS
errors anywhere). Each ends with exit code 2 and one line, or, for a command that never reads the
file, as it would have anyway. One tiny run is trained once for the module and copied per case.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import factlearn.compare
import factlearn.run
from factlearn.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_world, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_world), "--config", str(tiny_config), "--method",
                                  "mas", "--out", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return run


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line(r, fragment: str = "") -> None:
    """Exit 2 and one line on stderr (besides progress bars), no traceback."""
    assert r.exit_code == 2, f"exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.splitlines() if line.strip() and "%|" not in line]  # tqdm's bars
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# ---- every command on every file of a run directory --------------------------------------------

def _other_tensors(path: Path) -> None:
    save_file({"x": torch.zeros(2)}, str(path))


JSON_VARIANTS = {"empty": b"", "garbage": b"\x00\xff\x89garbage{[", "object": b'{"a": 1}\n', "list": b"[]\n"}
YAML_VARIANTS = {"empty": b"", "garbage": b"\x00\xff\x89garbage{[", "list": b"[1, 2]\n", "unknown key": b"a: 1\n"}
TENSOR_VARIANTS = {"empty": b"", "garbage": b"\x00\xff\x89garbage{[", "other tensors": _other_tensors}
COMMANDS = ("evaluate", "query", "compare", "importance", "resume")
# file -> its variants and the commands that read it (and so must refuse every variant)
FILES = {
    "config.yaml": (YAML_VARIANTS, {"evaluate", "query", "resume"}),
    "run.json": (JSON_VARIANTS, set(COMMANDS)),
    "facts.json": (JSON_VARIANTS, {"evaluate", "query", "resume"}),
    "vocab.json": (JSON_VARIANTS, {"evaluate", "query", "resume"}),
    "split.json": (JSON_VARIANTS, {"evaluate", "query", "importance", "resume"}),
    "metrics.json": (JSON_VARIANTS, {"compare"}),
    "data.json": (JSON_VARIANTS, {"resume"}),
    "checkpoints/B2/state.json": (JSON_VARIANTS, {"resume"}),
    "checkpoints/B2/model.safetensors": (TENSOR_VARIANTS, {"evaluate", "query", "resume"}),
    "checkpoints/B2/method.safetensors": (TENSOR_VARIANTS, {"importance", "resume"}),
    "checkpoints/B2/trainer.safetensors": (TENSOR_VARIANTS, {"resume"}),
}
# A well-formed safetensors file of other tensors is only refused where the tensors are checked,
# and then for what it lacks rather than by its name.
NOT_CHECKED = {("checkpoints/B2/method.safetensors", "other tensors", "resume"),
               ("checkpoints/B2/trainer.safetensors", "other tensors", "resume")}
SAYS = {("checkpoints/B2/method.safetensors", "other tensors", "importance"): "keeps no importance"}
CASES = [(name, variant) for name, (variants, _) in FILES.items() for variant in variants]


@pytest.mark.parametrize("name, variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_every_command_on_a_malformed_run_file(tmp_path, trained, tiny_world, tiny_config, name, variant):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    variants, readers = FILES[name]
    content = variants[variant]
    content(run / name) if callable(content) else (run / name).write_bytes(content)
    image = tiny_world / json.loads((tiny_world / "manifest.jsonl").read_text().splitlines()[0])["image"]
    args = {
        "evaluate": ["evaluate", run, "--device", "cpu"],
        "query": ["query", run, image, "--device", "cpu"],
        "compare": ["compare", run],
        "importance": ["importance", run, "--summary"],
        # last: where it does not read the file it finishes the (finished) run and rewrites its results
        "resume": ["train", "--data", tiny_world, "--config", tiny_config, "--method", "mas", "--out", run,
                   "--device", "cpu", "--resume"],
    }
    for command in COMMANDS:
        r = invoke(*args[command])
        assert r.exit_code in (0, 2) and "Traceback" not in r.output, f"{command}: {r.output}\n{r.exception!r}"
        if command in readers and (name, variant, command) not in NOT_CHECKED:
            assert_one_line(r, SAYS.get((name, variant, command), Path(name).name))
        elif r.exit_code == 2:
            assert_one_line(r)


# ---- compare, evaluate: results and weights of the wrong form ------------------------------------

def _without(key: str):
    def edit(doc: dict) -> dict:
        for block in (doc, *doc["protocols"].values()):
            block.pop(key, None)
        return doc

    return edit


def _short_rows(doc: dict) -> dict:
    doc["protocols"]["standard"]["matrix"]["top1"] = [[0.5]]
    return doc


METRICS_DOCS = {
    "object of other keys": (lambda doc: {"a": 1}, "no method"),
    "list": (lambda doc: [], "expected a JSON object, got list"),
    "no matrix": (_without("matrix"), "no matrix"),
    "no final": (_without("final"), "no final metrics"),
    "short matrix rows": (_short_rows, "matrix.top1: expected 1 to 2 rows of 2 numbers"),
}


@pytest.mark.parametrize("edit, fragment", METRICS_DOCS.values(), ids=METRICS_DOCS.keys())
def test_compare_refuses_a_malformed_metrics_document(tmp_path, trained, edit, fragment):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    doc = edit(json.loads((run / "metrics.json").read_text()))
    (run / "metrics.json").write_text(json.dumps(doc))
    assert_one_line(invoke("compare", run, trained), fragment)
    assert_one_line(invoke("compare", trained, run, "--plots", tmp_path / "plots"), "metrics.json is malformed")
    assert not (tmp_path / "plots").exists()


def test_evaluate_refuses_non_finite_weights(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "B2" / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, str(path), metadata={"factlearn_version": factlearn.__version__})
    r = invoke("evaluate", run, "--device", "cpu")
    assert_one_line(r, f"checkpoint {path} holds non-finite weights ({name}")
    assert invoke("evaluate", run, "--after", "B1", "--device", "cpu").exit_code == 0  # B1's is fine


# ---- failed starts: one line, and nothing written ------------------------------------------------

BACKBONES = {
    "negative size": ({"embedding_size": -8, "hidden_sizes": [8, 16], "depths": [1, 1]},
                      "model.backbone_config.embedding_size: expected a whole number >= 1, got -8"),
    "sizes and depths differ": ({"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1]},
                                "hidden_sizes has 2 stages but depths has 1"),
    "string for a list": ({"embedding_size": 8, "hidden_sizes": "8, 16", "depths": [1, 1]},
                          "model.backbone_config.hidden_sizes: expected a list"),
    "string for a size": ({"embedding_size": "eight", "hidden_sizes": [8, 16], "depths": [1, 1]},
                          "model.backbone_config.embedding_size"),
    "string for the section": ("resnet-18", "config model.backbone_config: expected dict"),
}


@pytest.mark.parametrize("backbone, fragment", BACKBONES.values(), ids=BACKBONES.keys())
def test_a_bad_backbone_config_fails_before_anything_is_written(tmp_path, tiny_world, tiny_config, backbone,
                                                                fragment):
    import yaml

    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["model"]["backbone_config"] = backbone
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = invoke("train", "--data", tiny_world, "--config", tmp_path / "bad.yaml", "--out", tmp_path / "out",
               "--device", "cpu")
    assert_one_line(r, fragment)
    assert not (tmp_path / "out").exists()


def test_a_failed_start_leaves_nothing(tmp_path, tiny_world, tiny_config):
    """A missing importance source is told before anything is written; a broken image in it is
    found once the run has started, and what the start wrote goes again."""
    base = ["train", "--data", tiny_world, "--config", tiny_config, "--method", "mas", "--device", "cpu"]
    r = invoke(*base, "--importance-data", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_one_line(r, "importance data not found")
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "unlabeled"
    broken.mkdir()
    (broken / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = invoke(*base, "--importance-data", broken, "--out", tmp_path / "out")
    assert_one_line(r, "broken.png")
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()  # the user's own empty folder stays, empty
    r = invoke(*base, "--importance-data", broken, "--out", tmp_path / "mine")
    assert_one_line(r, "broken.png")
    assert list((tmp_path / "mine").iterdir()) == []


def test_an_out_folder_that_cannot_be_written(monkeypatch, tmp_path, tiny_world, tiny_config):
    args = ["train", "--data", tiny_world, "--config", tiny_config, "--device", "cpu", "--out"]
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: there the errors are simulated below
        locked.chmod(0o555)
        try:
            assert_one_line(invoke(*args, locked / "run"), "permission denied")
            assert_one_line(invoke(*args, locked), "permission denied")
        finally:
            locked.chmod(0o755)
    mkdir, real_open = Path.mkdir, open

    def no_mkdir(self, *a, **k):
        if self == locked / "run":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    assert_one_line(invoke(*args, locked / "run"), f"cannot write to {locked / 'run'}: permission denied")
    monkeypatch.undo()

    def no_lock(path, *a, **k):
        if Path(path) == locked / ".lock":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(factlearn.run, "open", no_lock, raising=False)
    assert_one_line(invoke(*args, locked), f"cannot write to {locked}: permission denied")
    assert list(locked.iterdir()) == []


# ---- the CLI: OS errors a user can meet are one line, others stay loud ---------------------------

@pytest.mark.parametrize("error, line", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/runs/a/metrics.json"),
     "Error: /srv/runs/a/metrics.json: permission denied"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/x"), "Error: /srv/x: no such file or directory"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/srv/d"), "Error: /srv/d: is a directory"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/srv/f/x"), "Error: /srv/f/x: not a directory"),
    (OSError(errno.ENOSPC, "No space left on device", "/srv/plots/a.png"),
     "Error: /srv/plots/a.png: no space left on device"),
], ids=["permission", "missing", "is a directory", "not a directory", "disk full"])
def test_the_cli_reports_os_errors_on_one_line(monkeypatch, trained, error, line):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(factlearn.compare, "compare_table", fail)
    r = invoke("compare", trained)
    assert_one_line(r)
    assert r.stderr.strip() == line


def test_other_os_errors_stay_loud(monkeypatch, trained):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/dev/sdz")

    monkeypatch.setattr(factlearn.compare, "compare_table", fail)
    r = invoke("compare", trained)
    assert r.exit_code == 1 and isinstance(r.exception, OSError)
