"""Importers (generic manifest, Sherlock CSV splits, Visual Genome) on tiny hand-made inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from factlearn.cli import main
from factlearn.data.importers import import_manifest
from factlearn.data.manifest import ManifestRow, load_dataset, write_manifest
from factlearn.data.sherlock import import_sherlock, parse_spo
from factlearn.data.splits import load_tasks_file
from factlearn.data.vg import import_vg, load_synonyms
from factlearn.errors import UserError
from factlearn.facts import Fact


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def png(path: Path, shade: int, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, (shade * 7) % 256)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def no_leftovers(parent: Path) -> bool:
    return not any(p.name.startswith(".") and "importing" in p.name for p in parent.iterdir())


# ---- generic manifest -------------------------------------------------------------------------

GOOD = [
    {"image": "img/a.png", "subject": "Dog"},
    {"image": "img/b.png", "subject": "dog", "split": "test"},
    {"image": "img/c.png", "subject": "man", "predicate": "Riding ", "object": "horse", "group": "people"},
    {"image": "img/d.png", "subject": "man", "predicate": "riding", "object": "horse", "group": "people"},
]


def manifest_dir(tmp_path: Path, extra: list = (), name: str = "src") -> Path:
    src = tmp_path / name
    for i, stem in enumerate("abcd"):
        png(src / "img" / f"{stem}.png", 40 * i)
    lines = [json.dumps(r) for r in GOOD] + [r if isinstance(r, str) else json.dumps(r) for r in extra]
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return src


def test_manifest_import_copies_and_normalises(tmp_path):
    src = manifest_dir(tmp_path)
    report = import_manifest(src, tmp_path / "out")
    out = tmp_path / "out"
    assert (report.images, report.facts, report.skipped) == (4, 2, {})
    rows = rows_of(out)
    assert [r["image"] for r in rows] == [f"images/img/{s}.png" for s in "abcd"]
    assert rows[0]["subject"] == "dog" and rows[2]["predicate"] == "riding" and rows[1]["split"] == "test"
    assert (out / "images/img/c.png").read_bytes() == (src / "img/c.png").read_bytes()
    assert json.loads((out / "import.json").read_text())["importer"] == "manifest"
    assert len(load_dataset(out).records) == 4


BAD_ROWS = [
    ("{not json", "not valid JSON"),
    ({"image": "img/a.png", "subject": "cat", "colour": "red"}, "unknown key 'colour'"),
    ({"image": "img/a2.png", "subject": "  "}, "missing or empty 'subject'"),
    ({"image": "img/a2.png", "subject": "cat", "object": "mat"}, "object 'mat' but no predicate"),
    ({"image": "img/missing.png", "subject": "cat"}, "image file not found"),
    ({"image": "../outside.png", "subject": "cat"}, "escapes the data directory"),
    ({"image": "img/a.png", "subject": "cat"}, "duplicate row for image 'img/a.png'"),
    ({"image": "img/broken.png", "subject": "cat"}, "cannot read image"),
    ({"image": "img/e.png", "subject": "man", "predicate": "riding", "object": "horse", "group": "animals"},
     "has group 'animals' here but 'people'"),
]


@pytest.mark.parametrize("row, fragment", BAD_ROWS)
def test_manifest_bad_row_is_one_error_naming_file_and_line(tmp_path, row, fragment):
    src = manifest_dir(tmp_path, [row])
    png(tmp_path / "outside.png", 3)
    png(src / "img/a2.png", 5)
    png(src / "img/e.png", 6)
    (src / "img/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UserError, match=rf"manifest.jsonl:5: .*{fragment}.*--skip-bad"):
        import_manifest(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_manifest_skip_bad_counts_reasons(tmp_path):
    src = manifest_dir(tmp_path, [row for row, _ in BAD_ROWS])
    png(tmp_path / "outside.png", 3)
    png(src / "img/a2.png", 5)
    png(src / "img/e.png", 6)
    (src / "img/broken.png").write_bytes(b"garbage")
    report = import_manifest(src, tmp_path / "out", skip_bad=True)
    assert report.images == 4
    assert report.skipped == {"conflicting rows": 1, "duplicate row": 1, "invalid value": 2, "malformed row": 1,
                              "missing image": 1, "path escapes the data directory": 1, "undecodable image": 1,
                              "unknown column": 1}
    assert len(report.examples) == 5 and report.examples[0].endswith("manifest.jsonl:5: not valid JSON (Expecting "
                                                                      "property name enclosed in double quotes)")
    r = invoke("data", "import", "manifest", src, tmp_path / "again", "--skip-bad")
    assert r.exit_code == 0, r.output
    assert "skipped 9 bad rows" in r.output and "missing image: 1" in r.output and "manifest.jsonl:9:" in r.output


def test_manifest_csv_and_file_level_errors(tmp_path):
    src = tmp_path / "src"
    png(src / "a.png", 1)
    png(src / "b.png", 2)
    write_csv(src / "manifest.csv", ["image", "subject", "predicate"],
              [["a.png", "star", ""], ["b.png", "star", "red", "x"]])
    with pytest.raises(UserError, match=r"manifest.csv:3: more cells than columns"):
        import_manifest(src, tmp_path / "out")
    report = import_manifest(src / "manifest.csv", tmp_path / "out", skip_bad=True)
    assert report.images == 1 and report.skipped == {"malformed row": 1}
    write_csv(src / "manifest.csv", ["image", "subject", "colour"], [["a.png", "star", "red"]])
    with pytest.raises(UserError, match=r"manifest.csv:1: unknown column 'colour'"):
        import_manifest(src, tmp_path / "out2", skip_bad=True)  # a header problem is never skipped
    (src / "manifest.csv").write_bytes(b"image,subject\na.png,\xff\n")
    with pytest.raises(UserError, match=r"manifest.csv:2: not valid UTF-8"):
        import_manifest(src, tmp_path / "out2")


@pytest.mark.parametrize("header, rows, fragment", [
    (["", "image", "subject"], [[0, "a.png", "star"], [1, "b.png", "moon"]], None),  # a pandas index column
    (["image", "subject", "predicate"], [["a.png", "star", "red"], ["b.png", "moon"]], "manifest.csv:3: fewer cells"),
    (["image", "subject", "subject"], [["a.png", "star", "moon"]], "manifest.csv:1: column 'subject' appears twice"),
])
def test_manifest_loader_and_importer_read_csv_alike(tmp_path, header, rows, fragment):
    src = tmp_path / "src"
    png(src / "a.png", 1)
    png(src / "b.png", 2)
    write_csv(src / "manifest.csv", header, rows)
    if fragment is None:
        assert [str(r.fact) for r in load_dataset(src).records] == ["<star>", "<moon>"]
        assert import_manifest(src, tmp_path / "out").images == 2
        return
    with pytest.raises(UserError, match=fragment):
        load_dataset(src)
    with pytest.raises(UserError, match=fragment):
        import_manifest(src, tmp_path / "out")


# Found by the property tests (tests/test_properties.py): each was a traceback or a misread file.
@pytest.mark.parametrize("line, fragment", [
    ('{"image": "img/a.png\\u0000", "subject": "cat"}', r"image path 'img/a.png\\x00' cannot name a file \(embedded"),
    ('{"image": "\\ud800.png", "subject": "cat"}', r"image path .* cannot name a file \(a character the file system"),
    ('{"image": "' + "x" * 300 + '", "subject": "cat"}', r"image path .* cannot name a file \(File name too long\)"),
    ("[" * 5000, r"not valid JSON \(nested too deeply\)"),
    ('{"image": "img/a.png", "subject": ' + "1" * 5000 + "}", r"not valid JSON \(a number with too many digits\)"),
])
def test_manifest_rows_the_property_tests_found(tmp_path, line, fragment):
    with pytest.raises(UserError, match=rf"manifest.jsonl:5: {fragment}"):
        load_dataset(manifest_dir(tmp_path, [line]))


def test_manifest_lines_end_at_newline_only(tmp_path):
    src = manifest_dir(tmp_path)
    row = {"image": "img/a.png", "subject": "cat\u2028dog", "predicate": "x\x85y"}  # JSON may hold them unescaped
    (src / "manifest.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert [r.fact for r in load_dataset(src).records] == [Fact("cat dog", "x y")]


def test_write_manifest_round_trips(tmp_path):
    data = tmp_path / "data"
    png(data / "images" / "a.png", 1)
    png(data / "images" / "b.png", 2)
    rows = [ManifestRow("images/a.png", Fact("dog")),
            ManifestRow("images/b.png", Fact("man", "riding", "horse"), "people", "test")]
    path = write_manifest(data, rows)
    assert path == data / "manifest.jsonl"
    assert path.read_text().splitlines()[0] == ('{"image": "images/a.png", "subject": "dog", "predicate": null, '
                                                '"object": null, "group": null, "split": null}')
    got = [(r.image, r.fact, r.group, r.split) for r in load_dataset(data).records]
    assert got == [(data.resolve() / row.image, row.fact, row.group, row.split) for row in rows]
    with pytest.raises(ValueError, match="split"):
        write_manifest(tmp_path / "other", [ManifestRow("images/a.png", Fact("dog"), split="validation")])
    assert not (tmp_path / "other" / "manifest.jsonl").exists()


def test_non_empty_out_dir_is_refused_and_left_alone(tmp_path):
    src = manifest_dir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = invoke("data", "import", "manifest", src, out)
    assert r.exit_code == 2 and "not empty" in r.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert import_manifest(src, tmp_path / "empty", link=True).images == 4  # an empty one is fine
    assert (tmp_path / "empty/images/img/a.png").stat().st_ino == (src / "img/a.png").stat().st_ino  # hard link


# ---- Sherlock ---------------------------------------------------------------------------------

IMAGE_HEADER = ["image_links", "NLP_links", "SPO", "id", "w_s", "w_p", "w_o"]
FACTS = {1: ("dog", "", ""), 2: ("man", "smiling", ""), 3: ("man", "riding", "horse"), 4: ("cat", "", "")}
LAYOUTS = {"4tasks_random": [[1, 3], [2, 4]], "4tasks_semantic": [[1, 4], [2, 3]]}


SPLIT_IMAGES = (("train", (0, 1)), ("test", (2,)))  # per fact: images 0, 1 train, 2 test


def sherlock_tree(root: Path, reference: bool = False) -> Path:
    """Two layouts of two tasks over four facts, three images per fact (two train, one test).

    ``reference=True`` lays it out as the reference data set does: image_links relative to
    ``ROOT/images`` (the reference code reads ``ROOT/images/<image_links>``) and the whole data
    set in ``ROOT/train_SPO_df.csv`` and ``ROOT/test_SPO_df.csv`` beside ``splits/``.
    """
    prefix = "" if reference else "images/"
    for fid in FACTS:
        for j in range(3):
            png(root / "images" / f"f{fid}_{j}.png", 30 * fid + 5 * j)
    for layout, tasks in LAYOUTS.items():
        for k, fids in enumerate(tasks, start=1):
            folder = root / "splits" / layout
            write_csv(folder / f"B{k}_facts.csv", ["id", "type", "S", "P", "O"],
                      [[fid, sum(bool(w) for w in FACTS[fid]), *FACTS[fid]] for fid in fids])
            for split, js in SPLIT_IMAGES:
                write_csv(folder / f"B{k}_{split}.csv", IMAGE_HEADER,
                          [image_row(fid, j, prefix) for fid in fids for j in js])
    if reference:
        for split, js in SPLIT_IMAGES:
            write_csv(root / f"{split}_SPO_df.csv", ["", *IMAGE_HEADER],
                      [[i, *image_row(fid, j, prefix, SPO=spo_text(fid, "_"))]
                       for i, (fid, j) in enumerate((fid, j) for fid in FACTS for j in js)])
    return root


def spo_text(fid: int, sep: str = ", ") -> str:
    """The words of fact ``fid`` joined by ``sep`` (the reference files' SPO with ``sep="_"``)."""
    return sep.join(w for w in FACTS[fid] if w)


def image_row(fid: int, j: int, prefix: str = "images/", **change) -> list:
    s, p, o = FACTS[fid]
    row = {"image_links": f"{prefix}f{fid}_{j}.png", "NLP_links": f"NLP_feat/{fid}.txt",
           "SPO": f"<{spo_text(fid)}>", "id": fid, "w_s": 1, "w_p": int(bool(p)), "w_o": int(bool(o)), **change}
    return [row[c] for c in IMAGE_HEADER]


def test_sherlock_tree_gives_manifest_and_task_files(tmp_path):
    root = sherlock_tree(tmp_path / "mid_scale")
    report = import_sherlock(root, tmp_path / "out")
    out = tmp_path / "out"
    assert (report.images, report.facts) == (12, 4)
    assert report.notes["tasks_files"] == ["tasks/4tasks_random.json", "tasks/4tasks_semantic.json"]
    dataset = load_dataset(out)
    by_name = {r.image.name: r for r in dataset.records}
    assert by_name["f3_0.png"].fact == Fact("man", "riding", "horse") and by_name["f3_0.png"].split == "train"
    assert by_name["f3_2.png"].split == "test"
    assert by_name["f4_1.png"].group == "4tasks_semantic/B1"  # the semantic layout's tasks are the groups
    doc = json.loads((out / "tasks/4tasks_random.json").read_text())
    assert doc["kind"] == "random" and doc["layout"] == "4tasks_random"
    assert doc["tasks"][0] == {"name": "B1", "facts": [["dog", None, None], ["man", "riding", "horse"]]}
    for layout, tasks in LAYOUTS.items():
        got = load_tasks_file(out / "tasks" / f"{layout}.json", dataset).tasks
        want = [sorted(dataset.facts.id(Fact(*(w or None for w in FACTS[f]))) for f in fids) for fids in tasks]
        assert [t.facts for t in got] == want
    # the same tree from the splits folder or one layout folder, with an explicit images root
    assert import_sherlock(root / "splits", tmp_path / "o2").images == 12
    one = import_sherlock(root / "splits" / "4tasks_semantic", tmp_path / "o3", images_root=root)
    assert one.notes["tasks_files"] == ["tasks/4tasks_semantic.json"]


def test_train_uses_a_sherlock_task_file(tmp_path, tiny_config):
    root = sherlock_tree(tmp_path / "mid_scale")
    r = invoke("data", "import", "sherlock", root, tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert "12 images of 4 facts" in r.output and "4tasks_semantic.json" in r.output
    tasks_file = tmp_path / "data" / "tasks" / "4tasks_semantic.json"
    r = invoke("train", "--data", tmp_path / "data", "--config", tiny_config, "--tasks-file", tasks_file,
               "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 0, r.output
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    wanted = load_tasks_file(tasks_file, load_dataset(tmp_path / "data")).tasks
    assert [t["facts"] for t in split["tasks"]] == [t.facts for t in wanted]
    r = invoke("train", "--data", tmp_path / "data", "--tasks-file", tasks_file, "--tasks", 3, "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "leave out --tasks" in r.output


def test_sherlock_single_csv_reads_facts_from_spo(tmp_path):
    sherlock_tree(tmp_path / "d")
    csv_path = write_csv(tmp_path / "d" / "train_SPO_df.csv", ["", *IMAGE_HEADER],  # a pandas index column
                         [[i, *image_row(fid, 0)] for i, fid in enumerate(FACTS)])
    report = import_sherlock(csv_path, tmp_path / "out")
    assert (report.images, report.facts, report.notes["tasks_files"]) == (4, 4, [])
    assert {r.split for r in load_dataset(tmp_path / "out").records} == {"train"}  # from the file name
    assert not (tmp_path / "out" / "tasks").exists()


@pytest.mark.parametrize("change, fragment", [
    ({"w_p": 1}, r"flags \(w_s, w_p, w_o\) = \(1, 1, 0\) do not fit fact <dog>"),
    ({"w_o": "yes"}, "w_o must be 0 or 1"),
    ({"id": 9}, "fact id 9 is in no facts file"),
    ({"id": ""}, "empty id"),
    ({"image_links": "images/nope.png"}, "image file not found"),
    ({"image_links": "../../etc/passwd"}, "escapes the images root"),
    ({"image_links": "images/f1_0.png"}, r"is listed again \(first at .*B1_train.csv:2\)"),
    ({"image_links": "images/broken.png"}, "cannot read image"),
    ({"image_links": "images/f1_2.png\x00"}, r"image_links 'images/f1_2.png\\x00' cannot name a file"),
    ({"image_links": "x" * 300}, r"cannot name a file \(File name too long\)"),
])
def test_sherlock_bad_rows(tmp_path, change, fragment):
    root = sherlock_tree(tmp_path / "d")
    (root / "images" / "broken.png").write_bytes(b"nope")
    train = root / "splits" / "4tasks_random" / "B1_train.csv"
    with open(train, "a", newline="") as f:
        csv.writer(f).writerow(image_row(1, 2, **change) if "id" not in change else image_row(1, 1, **change))
    line = 6  # header + four rows
    with pytest.raises(UserError, match=rf"B1_train.csv:{line}: .*{fragment}"):
        import_sherlock(root, tmp_path / "out")
    report = import_sherlock(root, tmp_path / "out", skip_bad=True)
    assert sum(report.skipped.values()) == 1 and report.images == 12


def test_sherlock_messages_stay_on_one_line(tmp_path):
    root = sherlock_tree(tmp_path / "d")
    append_row(root / "splits" / "4tasks_random" / "B1_train.csv", image_row(1, 2, id="9\n9"))
    with pytest.raises(UserError) as caught:
        import_sherlock(root, tmp_path / "out")
    message = str(caught.value)
    assert message.splitlines() == [message] and "fact id '9\\n9' is in no facts file" in message


def test_sherlock_conflicts_between_layouts_and_files(tmp_path):
    root = sherlock_tree(tmp_path / "d")
    # the semantic layout lists a random-layout TEST image as training data
    sem = root / "splits" / "4tasks_semantic" / "B1_train.csv"
    with open(sem, "a", newline="") as f:
        csv.writer(f).writerow(image_row(3, 2))  # fact 3 is in semantic B2, the image is a test image
    with pytest.raises(UserError, match=r"4tasks_semantic/B1_train.csv:6: image 'images/f3_2.png' is <man, riding, "
                                        r"horse> \(train\) here but .* \(test\) at .*4tasks_random/B1_test.csv:3"):
        import_sherlock(root, tmp_path / "out")
    write_csv(root / "splits" / "4tasks_semantic" / "B1_facts.csv", ["id", "S", "P", "O"], [[1, "puppy", "", ""]])
    with pytest.raises(UserError, match=r"fact id 1 is <puppy> here but <dog> at .*4tasks_random/B1_facts.csv:2"):
        import_sherlock(root, tmp_path / "out")
    write_csv(root / "splits" / "4tasks_semantic" / "B1_facts.csv", ["id", "S", "P", "O", "extra"], [])
    with pytest.raises(UserError, match=r"B1_facts.csv:1: unknown column 'extra'"):
        import_sherlock(root, tmp_path / "out", skip_bad=True)
    (root / "splits" / "4tasks_semantic" / "B2_train.csv").unlink()
    with pytest.raises(UserError, match="B2_train.csv is missing"):
        import_sherlock(root, tmp_path / "out")
    with pytest.raises(UserError, match="no Sherlock split files"):
        import_sherlock(root / "images", tmp_path / "out")


def test_sherlock_reference_layout_needs_no_images_root(tmp_path):
    root = sherlock_tree(tmp_path / "mid_scale", reference=True)  # links relative to ROOT/images
    r = invoke("data", "import", "sherlock", root, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "12 images of 4 facts" in r.output
    dataset = load_dataset(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        f"f{fid}_{j}.png" for fid in FACTS for j in range(3))  # images/<image_links>, not images/images/...
    doc = json.loads((tmp_path / "out" / "import.json").read_text())
    assert [Path(f).name for f in doc["data_files"]] == ["train_SPO_df.csv", "test_SPO_df.csv"]
    assert len(load_tasks_file(tmp_path / "out" / "tasks" / "4tasks_random.json", dataset).tasks) == 2
    # an explicit --images-root is taken as it is: no second place to look
    with pytest.raises(UserError, match=r"train_SPO_df.csv:2: image file not found: 'f1_0.png' under "
                                        r"\S*mid_scale \(set --images-root"):
        import_sherlock(root, tmp_path / "o2", images_root=root)


def test_sherlock_missing_images_name_images_root(tmp_path):
    root = sherlock_tree(tmp_path / "mid_scale", reference=True)
    (root / "images").rename(root / "pictures")
    r = invoke("data", "import", "sherlock", root, tmp_path / "out")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "train_SPO_df.csv:2: image file not found: 'f1_0.png' under" in r.output and "--images-root" in r.output
    r = invoke("data", "import", "sherlock", root, tmp_path / "out", "--skip-bad")  # used to say "nothing to import"
    assert r.exit_code == 2 and "no image found: 36 rows name images that are not under" in r.output
    assert "--images-root" in r.output
    r = invoke("data", "import", "sherlock", root, tmp_path / "out", "--images-root", root / "pictures")
    assert r.exit_code == 0, r.output
    (root / "pictures").rename(root / "images")
    (root / "images" / "f4_2.png").unlink()  # some found, one not: the error says where it looked
    with pytest.raises(UserError, match=r"test_SPO_df.csv:5: image file not found: 'f4_2.png' under \S*mid_scale or "
                                        r"\S*mid_scale/images \(set --images-root"):
        import_sherlock(root, tmp_path / "o2")


def append_row(path: Path, row: list) -> int:
    """Append a CSV row; returns its line number."""
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(row)
    return len(path.read_text().splitlines())


@pytest.mark.parametrize("defect, fragment", [
    ("missing column", r"train_SPO_df.csv:1: missing column 'w_o'"),
    ("not UTF-8", r"train_SPO_df.csv:10: not valid UTF-8"),
    ("escaping path", r"train_SPO_df.csv:10: image path '../../outside.png' escapes the images root"),
    ("contradicting flags", r"train_SPO_df.csv:10: flags \(w_s, w_p, w_o\) = \(1, 1, 1\) do not fit fact <dog>"),
])
def test_sherlock_top_level_files_are_read_and_checked(tmp_path, defect, fragment):
    root = sherlock_tree(tmp_path / "d", reference=True)
    top = root / "train_SPO_df.csv"
    png(tmp_path / "outside.png", 9)
    if defect == "missing column":
        write_csv(top, IMAGE_HEADER[:-1], [image_row(1, 0, "")[:-1]])
    elif defect == "not UTF-8":
        top.write_bytes(top.read_bytes() + b"f9.png,,caf\xe9,1,1,0,0\n")
    elif defect == "escaping path":
        append_row(top, [9, *image_row(1, 0, "../../outside", image_links="../../outside.png")])
    else:
        append_row(top, [9, *image_row(1, 0, "", w_p=1, w_o=1)])
    with pytest.raises(UserError, match=fragment):
        import_sherlock(root, tmp_path / "out")
    if defect in ("escaping path", "contradicting flags"):  # a bad row: skipped and counted with --skip-bad
        report = import_sherlock(root, tmp_path / "out", skip_bad=True)
        assert report.images == 12 and sum(report.skipped.values()) == 1


def test_sherlock_split_rows_must_agree_with_the_top_level_files(tmp_path):
    root = sherlock_tree(tmp_path / "d", reference=True)
    top = root / "train_SPO_df.csv"
    lines = top.read_text().splitlines()
    top.write_text("\n".join(line for line in lines if ",f3_1.png," not in line) + "\n")
    with pytest.raises(UserError, match=r"4tasks_random/B1_train.csv:5: image 'f3_1.png' is left out: it is not in "
                                        r"train_SPO_df.csv / test_SPO_df.csv \(--skip-bad"):
        import_sherlock(root, tmp_path / "out")
    report = import_sherlock(root, tmp_path / "out", skip_bad=True)
    assert report.skipped == {"not in the top-level files": 2}  # listed by both layouts
    assert report.images == 11
    # the same image with another fact in the top-level file
    write_csv(top, ["", *IMAGE_HEADER], [[0, *image_row(2, 0, "", image_links="f1_0.png")]])
    with pytest.raises(UserError, match=r"4tasks_random/B1_train.csv:2: image 'f1_0.png' is <dog> \(train\) here but "
                                        r"<man, smiling> \(train\) at .*train_SPO_df.csv:2"):
        import_sherlock(root, tmp_path / "o2")
    # an image of the data set in no task is imported all the same: the top-level files are the data set
    sherlock_tree(root, reference=True)
    png(root / "images" / "extra.png", 200)
    append_row(top, [99, *image_row(4, 0, "", image_links="extra.png")])
    assert import_sherlock(root, tmp_path / "o3").images == 13


@pytest.mark.parametrize("spo, fact", [
    ("one_left of_seven", Fact("one", "left of", "seven")),
    ("<one_left of_seven>", Fact("one", "left of", "seven")),
    ("one, left of, seven", Fact("one", "left of", "seven")),
    ("<man, smiling>", Fact("man", "smiling")),
    ("man_smiling", Fact("man", "smiling")),
    (" dog ", Fact("dog")),
    ("<teddy_bear, on, table>", Fact("teddy_bear", "on", "table")),  # with commas, an underscore is text
])
def test_parse_spo_reads_the_reference_forms(spo, fact):
    assert parse_spo(spo) == fact


@pytest.mark.parametrize("spo", ["", "<>", "_dog", "man__horse", "a_b_c_d", "a, b, c, d", "<, left of, seven>"])
def test_parse_spo_refuses_what_is_not_a_fact(spo):
    with pytest.raises(ValueError, match="not a fact"):
        parse_spo(spo)


def test_sherlock_single_csv_with_underscore_spo(tmp_path):
    folder = tmp_path / "d"
    for j in range(3):
        png(folder / "images" / f"{j}.png", 50 * j)
    write_csv(folder / "train_SPO_df.csv", IMAGE_HEADER, [
        ["0.png", "", "one_left of_seven", 7, 1, 1, 1],
        ["1.png", "", "one_left of_seven", 7.0, 1, 1, 1],
        ["2.png", "", "man_smiling", 3, 1, 1, 0]])
    report = import_sherlock(folder / "train_SPO_df.csv", tmp_path / "out")  # images under d/images: found
    assert (report.images, report.facts) == (3, 2)
    facts = {r.image.name: r.fact for r in load_dataset(tmp_path / "out").records}
    assert facts == {"0.png": Fact("one", "left of", "seven"), "1.png": Fact("one", "left of", "seven"),
                     "2.png": Fact("man", "smiling")}


@pytest.mark.parametrize("name", ["splits/4tasks_random/B2_train.csv", "splits/4tasks_semantic/B1_test.csv",
                                  "splits/4tasks_random/B1_facts.csv", "test_SPO_df.csv"])
def test_sherlock_header_only_file_is_refused_at_import(tmp_path, name):
    root = sherlock_tree(tmp_path / "d", reference=True)
    path = root / name
    path.write_text(path.read_text().splitlines()[0] + "\n")
    r = invoke("data", "import", "sherlock", root, tmp_path / "out", "--skip-bad")  # a file's problem: not skipped
    assert r.exit_code == 2 and r.output.strip() == f"Error: {path}: a header and no rows"
    assert not (tmp_path / "out").exists()


# ---- Visual Genome ----------------------------------------------------------------------------

def box(name, x, y, w, h, key="names", **extra):
    return {key: [name] if key == "names" else name, "x": x, "y": y, "w": w, "h": h, **extra}


def vg_tree(root: Path, objects_extra: list = ()) -> Path:
    png(root / "images" / "1.png", 10, (64, 48))
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "images" / "2.jpg")
    objects = [
        {"image_id": 1, "objects": [box("Man", 2, 2, 20, 30), box("horse", 20, 10, 40, 30), box("men ", 2, 2, 20, 30),
                                    box("man", 30, 0, 10, 20), *objects_extra]},
        {"image_id": 2, "objects": [box("man", 0, 0, 30, 60), box("dog", 30, 30, 20, 20), box("dot", 1, 1, 3, 3)]},
    ]
    attributes = [{"image_id": 1, "attributes": [box("man", 2, 2, 20, 30, attributes=["Tall", " smiling."])]},
                  {"image_id": 2, "attributes": [box("man", 0, 0, 30, 60, attributes=["tall"]),
                                                 box("dog", 30, 30, 20, 20)]}]
    relationships = [
        {"image_id": 1, "relationships": [{"predicate": "RIDING", "subject": box("man", 2, 2, 20, 30, key="name"),
                                           "object": box("horse", 20, 10, 40, 30, key="name")}]},
        {"image_id": 2, "relationships": [{"predicate": "walking", "subject": box("guy", 0, 0, 30, 60, key="name"),
                                           "object": box("dog", 30, 30, 20, 20, key="name")}]},
    ]
    for name, doc in (("objects", objects), ("attributes", attributes), ("relationships", relationships)):
        (root / f"{name}.json").write_text(json.dumps(doc))
    return root


def test_vg_crops_one_image_per_fact_occurrence(tmp_path):
    vg = vg_tree(tmp_path / "vg")
    (tmp_path / "syn.txt").write_text("# people\nguy\tman\n\n")
    report = import_vg(vg, tmp_path / "out", min_count=1, synonyms=tmp_path / "syn.txt")
    dataset = load_dataset(tmp_path / "out")
    counts = {}
    for r in dataset.records:
        counts[str(r.fact)] = counts.get(str(r.fact), 0) + 1
    assert counts == {"<man>": 3, "<horse>": 1, "<dog>": 1, "<man, tall>": 2, "<man, smiling>": 1,
                      "<man, riding, horse>": 1, "<man, walking, dog>": 1}
    assert report.notes["duplicates_merged"] == 1  # "men " is "man" with the same box
    assert report.notes["small_boxes_dropped"] == 1  # the 3x3 "dot"
    sizes = {str(r.fact): Image.open(r.image).size for r in dataset.records}
    assert sizes["<horse>"] == (40, 30)
    assert sizes["<man, riding, horse>"] == (58, 38)  # the union box (2..60, 2..40)
    assert sizes["<man, walking, dog>"] == (50, 60)
    assert all(r.split is None for r in dataset.records)
    again = import_vg(vg, tmp_path / "again", min_count=1, synonyms=tmp_path / "syn.txt")
    assert [p.read_bytes() for p in sorted((tmp_path / "out/images").iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "again/images").iterdir())] and again.images == report.images


def test_vg_min_count_and_max_per_fact(tmp_path):
    vg = vg_tree(tmp_path / "vg")
    r = invoke("data", "import", "vg", vg, tmp_path / "out", "--min-count", 2, "--max-per-fact", 2)
    assert r.exit_code == 0, r.output
    facts = {str(rec.fact) for rec in load_dataset(tmp_path / "out").records}
    assert facts == {"<man>", "<man, tall>"}
    assert len(load_dataset(tmp_path / "out").records) == 4  # <man> capped at 2
    doc = json.loads((tmp_path / "out" / "import.json").read_text())
    assert doc["rare_facts_dropped"] == 5
    with pytest.raises(UserError, match="no fact has 50 or more"):
        import_vg(vg, tmp_path / "none", min_count=50)


@pytest.mark.parametrize("extra, reason, fragment", [
    (box("", 1, 1, 10, 10), "bad fact", r"objects.json: entry 0 \(image_id 1\), object 4: empty or missing name"),
    ({"names": ["cup"], "x": "a", "y": 0, "w": 10, "h": 10}, "malformed row", "box needs numbers"),
    (box("cup", 1, 1, 0, 10), "bad box", "width 0"),
    (box("cup", 100, 100, 10, 10), "bad box", r"lies outside the 64x48 image"),
])
def test_vg_bad_entries(tmp_path, extra, reason, fragment):
    vg = vg_tree(tmp_path / "vg", [extra])
    with pytest.raises(UserError, match=fragment):
        import_vg(vg, tmp_path / "out", min_count=1)
    report = import_vg(vg, tmp_path / "out", min_count=1, skip_bad=True)
    assert report.skipped == {reason: 1}


def test_vg_missing_and_broken_images_and_synonym_errors(tmp_path):
    vg = vg_tree(tmp_path / "vg")
    (vg / "images" / "2.jpg").unlink()
    with pytest.raises(UserError, match=r"image_id 2\).*no image file 2.jpg"):
        import_vg(vg, tmp_path / "out", min_count=1)
    (vg / "images" / "2.jpg").write_bytes(b"\xff\xd8 broken")
    report = import_vg(vg, tmp_path / "out", min_count=1, skip_bad=True)
    assert report.skipped == {"undecodable image": 5}  # man, dog, <man, tall>, <man, walking, dog>, ... of image 2
    (tmp_path / "syn.txt").write_text("guy man\n")
    with pytest.raises(UserError, match=r"syn.txt:1: expected 'alias<TAB>canonical'"):
        load_synonyms(tmp_path / "syn.txt")
    (vg / "objects.json").write_text("[{")
    with pytest.raises(UserError, match=r"objects.json:1:3: not valid JSON"):
        import_vg(vg, tmp_path / "o2", min_count=1)
