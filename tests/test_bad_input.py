"""A corpus of bad input, run through every command that reads it (CliRunner).

Every case must end with exit code 2 and one clear message naming the file, line or option, no
traceback, and nothing written or lost (the case's folder is byte-for-byte as before). Images in
the formats people actually have (grayscale, RGBA, 16-bit, palette) must work. The few errors
tests/test_cli.py already covers are not repeated here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from factlearn.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash ('dir' for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def assert_refused(root: Path, args: list, fragment: str) -> None:
    before = snapshot(root)
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2, f"{args}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert fragment in r.output, f"{args}: {fragment!r} not in\n{r.output}"
    assert "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1
    assert snapshot(root) == before, f"{args}: files changed"


def rows_of(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]


def write_rows(data: Path, rows: list) -> None:
    (data / "manifest.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---- bad manifests: each edits a copy of the tiny world and returns the expected fragment ----------

def _edit_row(key: str, value) -> Callable[[Path], str]:
    def edit(data: Path) -> str:
        rows = rows_of(data)
        if value is _DROP:
            rows[2].pop(key)
        else:
            rows[2][key] = value
        write_rows(data, rows)
        return "manifest.jsonl:3: "

    return edit


_DROP = object()


def _csv_without_subject(data: Path) -> str:
    rows = rows_of(data)
    (data / "manifest.jsonl").unlink()
    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "predicate", "object", "group", "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return "manifest.csv:1: missing column 'subject'"


def _csv_ragged(data: Path) -> str:
    rows = rows_of(data)
    (data / "manifest.jsonl").unlink()
    lines = ["image,subject"] + [f"{r['image']},{r['subject']}" for r in rows]
    lines[3] += ",extra"
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    return "manifest.csv:4: more cells than columns"


def _csv_huge_cell(data: Path) -> str:
    rows = rows_of(data)
    (data / "manifest.jsonl").unlink()
    lines = ["image,subject"] + [f"{r['image']},{r['subject']}" for r in rows]
    lines[5] = f'{rows[4]["image"]},"{"x" * 200_000}"'  # over the csv module's field limit
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    return "manifest.csv:6: malformed CSV"


def _not_utf8(data: Path) -> str:
    lines = (data / "manifest.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"subject": "', b'"subject": "\xff\xfe')
    (data / "manifest.jsonl").write_bytes(b"".join(lines))
    return "manifest.jsonl:3: not valid UTF-8"


def _duplicate(data: Path) -> str:
    rows = rows_of(data)
    write_rows(data, rows + [rows[2]])
    return f"manifest.jsonl:{len(rows) + 1}: duplicate row for image"


def _outside(kind: str) -> Callable[[Path], str]:
    def edit(data: Path) -> str:
        outside = data.parent / "outside.png"
        shutil.copyfile(data / rows_of(data)[0]["image"], outside)
        if kind == "symlink":
            (data / "images" / "link.png").symlink_to(outside)
            image = "images/link.png"
        else:
            image = "../outside.png" if kind == "relative" else str(outside)
        rows = rows_of(data)
        rows[2]["image"] = image
        write_rows(data, rows)
        return "manifest.jsonl:3: image path"  # ... escapes the data directory

    return edit


def _not_json(data: Path) -> str:
    rows = rows_of(data)
    write_rows(data, rows[:2] + ['{"image": "images/000002.png", '] + rows[3:])
    return "manifest.jsonl:3: not valid JSON"


def _empty(data: Path) -> str:
    (data / "manifest.jsonl").write_text("\n  \n")
    return "manifest.jsonl"


MANIFESTS = {
    "missing column (csv)": _csv_without_subject,
    "missing key": _edit_row("subject", _DROP),
    "empty subject": _edit_row("subject", ""),
    "whitespace subject": _edit_row("subject", "   "),
    "whitespace predicate": _edit_row("predicate", "  \t"),
    "number as subject": _edit_row("subject", 7),
    "object without predicate": _edit_row("object", "circle"),
    "unknown split": _edit_row("split", "validation"),
    "unknown key": _edit_row("colour", "red"),
    "missing image file": _edit_row("image", "images/nowhere.png"),
    "image is a folder": _edit_row("image", "images"),
    "non-UTF-8 bytes": _not_utf8,
    "duplicate row": _duplicate,
    "path outside (relative)": _outside("relative"),
    "path outside (absolute)": _outside("absolute"),
    "path outside (symlink)": _outside("symlink"),
    "not JSON": _not_json,
    "ragged CSV row": _csv_ragged,
    "huge CSV cell": _csv_huge_cell,
    "no rows": _empty,
}


@pytest.fixture()
def case(tmp_path, tiny_world) -> Path:
    """A fresh copy of the tiny world in tmp_path/data; outputs would go to tmp_path/out."""
    shutil.copytree(tiny_world, tmp_path / "data")
    return tmp_path


@pytest.mark.parametrize("edit", MANIFESTS.values(), ids=MANIFESTS.keys())
def test_bad_manifest(case, tiny_config, edit):
    fragment = edit(case / "data")
    for args in (
        ["train", "--data", case / "data", "--config", tiny_config, "--out", case / "out", "--device", "cpu"],
        ["split", case / "data", "--out", case / "tasks.json"],
        ["data", "import", "manifest", case / "data", case / "out"],
    ):
        expected = "nothing to import" if edit is _empty and args[0] == "data" else fragment
        assert_refused(case, args, expected)


def test_spreadsheet_csv_works(case):
    """A CSV saved by a spreadsheet: byte-order mark, CRLF line ends, a quoted cell over two lines."""
    rows = rows_of(case / "data")
    (case / "data" / "manifest.jsonl").unlink()
    lines = ["image,subject,predicate,object,group,split"]
    lines += [",".join([r["image"], r["subject"], r["predicate"] or "", r["object"] or "", f'"{r["group"]}"',
                        r["split"]]) for r in rows]
    lines[1] = lines[1].replace(f'"{rows[0]["group"]}"', f'"{rows[0]["group"]}\r\n"')
    (case / "data" / "manifest.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    r = CliRunner().invoke(main, ["split", str(case / "data"), "--out", str(case / "tasks.json")])
    assert r.exit_code == 0, r.output
    assert len(json.loads((case / "tasks.json").read_text())["tasks"]) == 2


# ---- bad images ---------------------------------------------------------------------------------

def _bytes(make: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def edit(image: Path) -> Path:
        image.write_bytes(make(image.read_bytes()))
        return image

    return edit


IMAGES = {
    "zero bytes": (_bytes(lambda b: b""), "cannot read image"),
    "truncated": (_bytes(lambda b: b[: len(b) // 2]), "cannot read image"),
    "not an image": (_bytes(lambda b: b"just some text, not pixels\n"), "cannot read image"),
    "bomb 100000x100000": (_bytes(lambda b: png_header(100_000, 100_000)), "pixels"),
    "bomb 9000x9000 (under PIL's own limit)": (_bytes(lambda b: png_header(9000, 9000)), "over the limit"),
}


@pytest.mark.parametrize("edit, fragment", IMAGES.values(), ids=IMAGES.keys())
def test_bad_image(case, tiny_config, trained, edit, fragment):
    rows = rows_of(case / "data")
    bad = edit(case / "data" / rows[4]["image"])
    alone = case / "query"
    alone.mkdir()
    shutil.copyfile(bad, alone / bad.name)
    run = case / "run"
    shutil.copytree(trained, run)
    for args in (
        ["train", "--data", case / "data", "--config", tiny_config, "--out", case / "out", "--device", "cpu"],
        ["data", "import", "manifest", case / "data", case / "out"],
        ["query", run, alone / bad.name, "--device", "cpu"],
        ["query", run, alone, "--device", "cpu"],
        ["importance", run, "--images", alone, "--device", "cpu"],
    ):
        assert_refused(case, args, fragment)
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert bad.name in r.output  # the message names the file


def test_bad_importance_image_fails_before_training(case, tiny_config):
    unlabeled = case / "unlabeled"
    unlabeled.mkdir()
    (unlabeled / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = CliRunner().invoke(main, ["train", "--data", str(case / "data"), "--config", str(tiny_config), "--method",
                                  "mas", "--importance-data", str(unlabeled), "--out", str(case / "out"),
                                  "--device", "cpu"])
    assert r.exit_code == 2 and "cannot read image" in r.output and "broken.png" in r.output, r.output
    assert "Traceback" not in r.output and not (case / "out" / "checkpoints").exists()
    (unlabeled / "broken.png").unlink()  # fixed: the same command runs (nothing was trained to keep)
    shutil.copyfile(case / "data" / rows_of(case / "data")[0]["image"], unlabeled / "fine.png")
    r = CliRunner().invoke(main, ["train", "--data", str(case / "data"), "--config", str(tiny_config), "--method",
                                  "mas", "--importance-data", str(unlabeled), "--out", str(case / "out"),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output


# ---- images that must work: grayscale, RGBA, 16-bit, palette ------------------------------------

MODES = {
    "grayscale": lambda im: im.convert("L"),
    "grayscale+alpha": lambda im: im.convert("LA"),
    "rgba": lambda im: im.convert("RGBA"),
    "16-bit": lambda im: Image.fromarray((np.asarray(im.convert("L"), dtype=np.uint16) * 257)),
    "palette": lambda im: im.convert("P"),
    "palette+transparency": lambda im: _with_transparency(im.convert("P")),
    "bilevel": lambda im: im.convert("1"),
}


def _with_transparency(im: Image.Image) -> Image.Image:
    im.info["transparency"] = 0
    return im


@pytest.fixture(scope="module")
def modes_world(tmp_path_factory, tiny_world) -> tuple[Path, dict[str, Path]]:
    """The tiny world with some images re-saved in other modes (same pixels, other encodings)."""
    data = tmp_path_factory.mktemp("modes") / "data"
    shutil.copytree(tiny_world, data)
    files = {}
    for i, (name, convert) in enumerate(MODES.items()):
        path = data / rows_of(data)[i * 5]["image"]
        with Image.open(path) as im:
            converted = convert(im.convert("RGB"))
        converted.save(path, format="PNG")
        with Image.open(path) as check:
            assert check.mode != "RGB", name
        files[name] = path
    return data, files


@pytest.fixture(scope="module")
def trained(tmp_path_factory, modes_world, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(modes_world[0]), "--config", str(tiny_config),
                                  "--method", "mas", "--out", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output  # the modes train
    return run


def test_image_modes_work_in_train_and_query(modes_world, trained):
    _, files = modes_world
    r = CliRunner().invoke(main, ["query", str(trained), *map(str, files.values()), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert [Path(item["image"]) for item in result] == list(files.values())
    assert all(len(item["facts"]) == 5 for item in result)


# ---- tasks, configs and options -----------------------------------------------------------------

def _all_test(data: Path) -> list:
    write_rows(data, [{**r, "split": "test"} for r in rows_of(data)])
    return []


def _tasks_file(name: str) -> Callable[[Path], list]:
    def edit(data: Path) -> list:
        facts = sorted({(r["subject"], r["predicate"], r["object"]) for r in rows_of(data)})
        doc = {"tasks": [{"name": name, "facts": [list(f) for f in facts[:6]]},
                         {"name": "B2", "facts": [list(f) for f in facts[6:]]}]}
        (data.parent / "tasks.json").write_text(json.dumps(doc))
        return ["--tasks-file", data.parent / "tasks.json"]

    return edit


TASKS = {
    "no training images": (_all_test, "task B1 has no training images"),
    "more tasks than facts": (lambda data: ["--tasks", "99"], "cannot split 12 facts into 99 tasks"),
    "task name with a path": (_tasks_file("../../evil"), "cannot be a folder name"),
    "hidden task name": (_tasks_file(".B1"), "cannot be a folder name"),
}


@pytest.mark.parametrize("edit, fragment", TASKS.values(), ids=TASKS.keys())
def test_bad_tasks(case, tiny_config, edit, fragment):
    extra = edit(case / "data")
    assert_refused(case, ["train", "--data", case / "data", "--config", tiny_config, "--out", case / "out",
                          "--device", "cpu", *extra], fragment)


CONFIGS = {
    "unknown nested key": ("model: {slot_dims: 8}\n", "unknown key 'model.slot_dims'"),
    "wrong type": ("train: {lr: fast}\n", "config train.lr: expected float"),
    "list for a section": ("loss: [1, 2]\n", "config loss: expected a mapping"),
    "zero epochs": ("train: {epochs: 0}\n", "train.epochs: 0 is out of range"),
    "negative batch size": ("train: {batch_size: -4}\n", "train.batch_size"),
    "zero learning rate": ("train: {lr: 0}\n", "train.lr"),
    "learning rate typo": ("train: {lr: 1e3}\n", "train.lr: 1000.0 is out of range (must be in (0, 10])"),
    "nan learning rate": ("train: {lr: .nan}\n", "train.lr: expected a finite number"),
    "negative checkpoint_every": ("train: {checkpoint_every: -1}\n", "train.checkpoint_every"),
    "momentum 1": ("train: {optimizer: sgd, momentum: 1.0}\n", "train.momentum"),
    "zero temperature": ("loss: {temperature: 0}\n", "loss.temperature"),
    "negative lambda": ("method: {lam: -1}\n", "method.lam"),
    "alpha above 1": ("method: {alpha: 1.5}\n", "method.alpha"),
    "zero tasks": ("split: {tasks: 0}\n", "split.tasks"),
    "negative split seed": ("split: {seed: -1}\n", "split.seed"),
    "test fraction 1": ("split: {test_fraction: 1.0}\n", "split.test_fraction"),
    "zero importance samples": ("method: {max_importance_samples: 0}\n", "method.max_importance_samples"),
    "zero eval batch": ("eval: {batch_size: 0}\n", "eval.batch_size"),
    "unknown method": ("method: {name: magic}\n", "method.name 'magic'"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping at the top level"),
    "not UTF-8": (b"train: {lr: \xff}\n", "not valid YAML"),
}


@pytest.mark.parametrize("text, fragment", CONFIGS.values(), ids=CONFIGS.keys())
def test_bad_config(case, text, fragment):
    path = case / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_refused(case, ["train", "--data", case / "data", "--config", path, "--out", case / "out"], fragment)


OPTIONS = {
    "--epochs 0": (["train", "--epochs", "0"], "--epochs"),
    "--epochs -1": (["train", "--epochs", "-1"], "--epochs"),
    "--tasks 0": (["train", "--tasks", "0"], "--tasks"),
    "--lam -1": (["train", "--lam", "-1"], "--lam"),
    "--lam nan": (["train", "--lam", "nan"], "--lam"),
    "--seed -1": (["train", "--seed", "-1"], "--seed"),
    "--tasks-file with --tasks": (["train", "--tasks-file", "{case}/t.json", "--tasks", "2"], "--tasks-file"),
    "split --tasks 0": (["split", "{data}", "--tasks", "0", "--out", "{case}/t.json"], "--tasks"),
    "split --seed -1": (["split", "{data}", "--seed", "-1", "--out", "{case}/t.json"], "--seed"),
    "query --top-k 0": (["query", "{case}", "{data}/images", "--top-k", "0"], "--top-k"),
    "import --workers 0": (["data", "import", "manifest", "{data}", "{case}/out", "--workers", "0"], "--workers"),
    "vg --min-count 0": (["data", "import", "vg", "{data}", "{case}/out", "--min-count", "0"], "--min-count"),
}


@pytest.mark.parametrize("args, fragment", OPTIONS.values(), ids=OPTIONS.keys())
def test_bad_option(case, args, fragment):
    if args[0] == "train":
        args = ["train", "--data", "{data}", "--out", "{case}/out", *args[1:]]
    fill = {"case": case, "data": case / "data"}
    assert_refused(case, [a.format(**fill) for a in args], fragment)


# ---- run directories: mismatched, from another version, not a run -------------------------------

def _version(field: str) -> Callable[[Path], str]:
    def edit(run: Path) -> str:
        if field == "run.json":
            info = json.loads((run / "run.json").read_text())
            (run / "run.json").write_text(json.dumps({**info, "factlearn_version": "99.0.0"}))
            return "written by factlearn 99.0.0"
        path = run / "checkpoints" / "B2" / "model.safetensors"
        save_file(load_file(str(path)), str(path), metadata={"factlearn_version": "99.1.0"})
        return "model.safetensors was written by factlearn 99.1.0"

    return edit


def _other_config(run: Path) -> str:
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("slot_dim: 16", "slot_dim: 12"))
    return "does not match the model config"


def _corrupt(name: str, fragment: str, content: bytes = b'{"factlearn_version": ') -> Callable[[Path], str]:
    def edit(run: Path) -> str:
        (run / name).write_bytes(content)
        return fragment

    return edit


ALL = ("evaluate", "query", "importance")  # importance --summary reads run.json, split.json and the method state
MODEL = ("evaluate", "query")  # the commands that build the model
RUNS = {
    "run.json of another major version": (_version("run.json"), ALL),
    "weights of another major version": (_version("safetensors"), MODEL),
    "checkpoint of another config": (_other_config, MODEL),
    "corrupt run.json": (_corrupt("run.json", "run.json is corrupt"), ALL),
    "corrupt split.json": (_corrupt("split.json", "split.json is malformed"), ALL),
    "config.yaml not UTF-8": (_corrupt("config.yaml", "config.yaml:1:19: not valid YAML: not UTF-8",
                                      b"model: {slot_dim: \xff}\n"), MODEL),
    "vocab.json not a list": (_corrupt("vocab.json", "vocab.json is malformed", b"5\n"), MODEL),
    "corrupt method state": (_corrupt("checkpoints/B2/method.safetensors", "method.safetensors is corrupt",
                                      b"\x00" * 12), ("importance",)),
}


@pytest.mark.parametrize("edit, commands", RUNS.values(), ids=RUNS.keys())
def test_bad_run_directory(case, trained, edit, commands):
    run = case / "run"
    shutil.copytree(trained, run)
    fragment = edit(run)
    image = case / "data" / rows_of(case / "data")[0]["image"]
    every = {
        "evaluate": ["evaluate", run, "--device", "cpu"],
        "query": ["query", run, image, "--device", "cpu"],
        "importance": ["importance", run, "--summary"],
    }
    for command in commands:
        assert_refused(case, every[command], fragment)
    if fragment == "written by factlearn 99.0.0":
        assert_refused(case, ["compare", run, run], fragment)
        assert_refused(case, ["train", "--data", case / "data", "--out", run, "--resume"], fragment)


def test_not_a_run_directory(case):
    (case / "empty").mkdir()
    (case / "file.txt").write_text("hello")
    for target, fragment in ((case / "empty", "not a factlearn run directory"),
                             (case / "file.txt", "not a factlearn run directory"),
                             (case / "nowhere", "run directory not found")):
        for args in (["evaluate", target], ["query", target, case / "data" / "images"],
                     ["importance", target, "--summary"], ["compare", target]):
            assert_refused(case, args, fragment)
    assert_refused(case, ["train", "--data", case / "data", "--out", case / "file.txt"], "not a directory")
