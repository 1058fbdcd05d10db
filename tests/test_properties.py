"""Property-based tests (Hypothesis) of the parsers of user files: the manifest, the Sherlock CSV
reader, the config loader and the task-file loader.

The property: whatever the input, a parser gives a valid result or one :class:`UserError` whose
message is one line, never another exception. An input is a valid document with, most of the
time, a defect or a few (a value, a key, a whole line or the file's bytes), or a valid document with
one value replaced by anything, so that the parser gets past its first checks and reaches the
corners: NUL bytes, lone surrogates, line breaks of every kind, huge numbers, deep nesting, paths
that escape, names too long for the file system.

Runs are deterministic (``derandomize=True``: the same examples on every machine, no example
database) and small (``max_examples``); ``--hypothesis-show-statistics`` shows how often each
test's inputs were accepted and refused.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from factlearn.config import Config, load_config
from factlearn.data.manifest import COLUMNS, SPLITS, Dataset, Record, load_dataset
from factlearn.data.sherlock import IMAGE_COLUMNS, import_sherlock
from factlearn.data.splits import TaskFile, load_tasks_file
from factlearn.data.textfiles import read_csv
from factlearn.errors import UserError
from factlearn.facts import Fact, FactTable

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=80,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(parse, *args, **kwargs):
    """``parse(*args, **kwargs)``, or None after checking that it raised one UserError of one line."""
    try:
        result = parse(*args, **kwargs)
    except UserError as exc:
        message = str(exc)
        assert message.strip() and len(message.splitlines()) == 1, f"not one line: {message!r}"
        event("refused")  # --hypothesis-show-statistics: how often each outcome was reached
        return None
    event("accepted")
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for the module; each example makes its own folder in it."""
    return tmp_path_factory.mktemp("properties")


IMAGES = [f"i{k}.png" for k in range(4)]  # in every example's folder


def image_folder(workdir: Path, decodable: bool = False) -> Path:
    """A new folder for one example (function-scoped fixtures are not reset between examples)."""
    folder = Path(tempfile.mkdtemp(dir=workdir))
    (folder / "sub").mkdir()
    for k, name in enumerate(IMAGES):
        if decodable:
            Image.new("RGB", (4, 4), (60 * k, 0, 0)).save(folder / name)
        else:
            (folder / name).write_bytes(b"")  # the manifest reader checks existence only
    return folder


# ---- generated values -------------------------------------------------------------------------

WORDS = st.sampled_from(["dog", "man", "riding", "horse", "Left  Of", "seven", " one "])
LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"]  # str.splitlines() cuts at each
# Text with the characters that break parsers: line breaks of every kind, NUL, quotes, commas,
# underscores, angle brackets, a lone surrogate, non-ASCII letters; and a word, a line break, a word.
WILD = st.one_of(
    st.text(st.one_of(st.sampled_from([*",;_<>'\"\\/.\t\x00 ", *LINE_BREAKS, "\ud800", "é", "ß"]), st.characters()),
            max_size=12),
    st.builds(lambda a, br, b: a + br + b, WORDS, st.sampled_from(LINE_BREAKS), WORDS))
# Numbers at the edges: beyond a float, beyond 64 bits, and any in between.
HUGE = st.one_of(st.sampled_from([10 ** 309, -(10 ** 400), 2 ** 63, 2 ** 64]),
                 st.integers(min_value=-(10 ** 400), max_value=10 ** 400))
NUMBERS = st.one_of(HUGE, st.integers(), st.floats(), st.sampled_from(["1e-3", "nan", "-inf", "1e999", "0x10", "1_0"]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WILD, WORDS)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(WILD | WORDS, inner, max_size=3), max_leaves=8)
# Long runs of one fragment: deep nesting, long numbers, long names.
REPEATS = st.builds(lambda fragment, n: fragment * n, st.sampled_from(["[", '{"a": ', "9", "- ", "a: {", "x", "é"]),
                    st.integers(0, 3000))
LINKS = st.one_of(st.sampled_from([*IMAGES, "./i0.png", "sub/../i1.png", "'i2.png'", "images/i0.png"]),
                  st.sampled_from(["missing.png", "../i0.png", "/etc/passwd", "sub", ""]),
                  st.just("i0.png\x00"), st.just("\ud800.png"), st.just("x" * 300), WILD)
KEYS = st.one_of(WILD, st.integers(), st.booleans(), st.none(), st.floats())


def _paths(doc, path=()):
    """Every node's path in ``doc`` (nested dicts and lists), the root's () first."""
    yield path
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, (*path, i))


def _replace(doc, path, make):
    """``doc`` with the node at ``path`` replaced by ``make(node)`` (copies along the path, the rest shared)."""
    if not path:
        return make(doc)
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (_replace(v, rest, make) if k == head else v) for k, v in doc.items()}
    return [(_replace(v, rest, make) if i == head else v) for i, v in enumerate(doc)]


@st.composite
def spoiled(draw, doc, values=JSON_VALUES):
    """``doc`` (nested dicts and lists) as it is, or with up to three defects: a node (mostly a
    leaf) replaced by a drawn value, a mapping's key renamed or dropped, or a list item dropped.
    ``values`` is a strategy, or a function of the node's path that gives one."""
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        paths = list(_paths(doc))
        leaves = [p for p in paths if not isinstance(_node(doc, p), (dict, list))]
        path = draw(st.sampled_from(leaves if leaves and draw(st.integers(0, 3)) else paths))
        kind = draw(st.sampled_from(["value", "value", "value", "key", "drop"]))
        if kind == "value" or not path:
            strategy = values(path) if callable(values) else values
            doc = _replace(doc, path, lambda _: draw(strategy))
            continue
        parent, last = path[:-1], path[-1]

        def change(node, kind=kind, last=last):
            if isinstance(node, dict):
                new_key = draw(KEYS) if kind == "key" else None
                return {(new_key if k == last else k): v for k, v in node.items() if kind == "key" or k != last}
            return [v for i, v in enumerate(node) if i != last]
        doc = _replace(doc, parent, change)
    return doc


def _node(doc, path):
    for step in path:
        doc = doc[step]
    return doc


@st.composite
def file_bytes(draw, text: str) -> bytes:
    """``text`` as UTF-8 (a lone surrogate stays as bytes that are not UTF-8), sometimes with bytes
    that are not UTF-8 put in, or replaced by random bytes."""
    data = text.encode("utf-8", "surrogatepass")
    kind = draw(st.sampled_from(["text", "text", "text", "text", "bad byte", "random"]))
    if kind == "bad byte":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + data[at:]
    return draw(st.binary(max_size=60)) if kind == "random" else data


def csv_text(table) -> str:
    """``table`` (rows of cells, after :func:`spoiled`: a row or the table may be a lone value) as CSV."""
    rows = table if isinstance(table, list) else [table]
    out = io.StringIO()
    csv.writer(out).writerows(row if isinstance(row, list) else [row] for row in rows)
    return out.getvalue()


# ---- the manifest -----------------------------------------------------------------------------

@st.composite
def manifest_rows(draw) -> list[dict]:
    rows = []
    for image in IMAGES[: draw(st.integers(1, len(IMAGES)))]:
        row = {"image": image, "subject": draw(WORDS)}
        order = draw(st.integers(1, 3))
        if order >= 2:
            row["predicate"] = draw(WORDS)
        if order == 3:
            row["object"] = draw(WORDS)
        for key, values in (("group", WORDS), ("split", st.sampled_from(SPLITS))):
            if draw(st.booleans()):
                row[key] = draw(values)
        rows.append(row)
    return rows


CELLS = st.one_of(LINKS, WORDS, WILD, st.sampled_from(SPLITS), SCALARS, REPEATS)


def check_dataset(dataset: Dataset, folder: Path) -> None:
    """What a dataset read from ``folder`` must be: distinct existing images inside it, known facts."""
    assert dataset.records and len({r.image for r in dataset.records}) == len(dataset.records)
    for record in dataset.records:
        assert record.image.is_file() and record.image.is_relative_to(folder.resolve())
        assert record.split in (None, *SPLITS) and record.fact in dataset.facts


@PROPERTY
@given(data=st.data(), ascii_only=st.booleans())
def test_jsonl_manifest_gives_a_dataset_or_one_user_error(workdir, data, ascii_only):
    rows = data.draw(spoiled(data.draw(manifest_rows()), lambda path: LINKS if path[-1:] == ("image",) else CELLS))
    lines = [json.dumps(row, ensure_ascii=ascii_only) for row in (rows if isinstance(rows, list) else [rows])]
    if data.draw(st.booleans()):  # a line that is not a row
        at = data.draw(st.integers(0, len(lines)))
        lines.insert(at, data.draw(WILD | REPEATS | JSON_VALUES.map(json.dumps)))
    folder = image_folder(workdir)
    (folder / "manifest.jsonl").write_bytes(data.draw(file_bytes("\n".join(lines) + "\n")))
    dataset = outcome(load_dataset, folder)
    if dataset is not None:
        check_dataset(dataset, folder)


@PROPERTY
@given(data=st.data())
def test_csv_manifest_gives_a_dataset_or_one_user_error(workdir, data):
    rows = data.draw(manifest_rows())
    header = ["image", "subject", "predicate", "object", "group", "split"]
    if data.draw(st.booleans()):
        header = ["Unnamed: 0", *data.draw(st.permutations(header))]
    table = [header, *([row.get(c, "") if c in row else (i if c == "Unnamed: 0" else "") for c in header]
                       for i, row in enumerate(rows))]
    table = data.draw(spoiled(table, lambda path: (LINKS if len(path) == 2 and header[path[1]:path[1] + 1] == ["image"]
                                                   else CELLS if len(path) == 2 else st.lists(CELLS, max_size=8))))
    folder = image_folder(workdir)
    (folder / "manifest.csv").write_bytes(data.draw(file_bytes(csv_text(table))))
    dataset = outcome(load_dataset, folder)
    if dataset is not None:
        check_dataset(dataset, folder)


@PROPERTY
@given(key=st.sampled_from([*COLUMNS, "colour"]), value=st.one_of(LINKS, CELLS, JSON_VALUES),
       csv_format=st.booleans())
def test_any_manifest_value_gives_a_dataset_or_one_user_error(workdir, key, value, csv_format):
    """A valid manifest row with one value replaced by anything."""
    row = {"image": IMAGES[0], "subject": "man", "predicate": "riding", "object": "horse", "group": "people",
           "split": "train", key: value}
    folder = image_folder(workdir)
    if csv_format:
        text = csv_text([list(row), list(row.values())])
        (folder / "manifest.csv").write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        (folder / "manifest.jsonl").write_bytes(json.dumps(row).encode("utf-8"))
    dataset = outcome(load_dataset, folder)
    if dataset is not None:
        check_dataset(dataset, folder)


@PROPERTY
@given(facts=st.lists(st.tuples(WILD, WILD | st.none(), WILD | st.none()), min_size=1, max_size=4),
       ascii_only=st.booleans())
def test_manifest_reads_back_the_facts_written(workdir, facts, ascii_only):
    """A JSON Lines manifest of any slot text is read as the facts it names, or refused as a whole:
    never misread. Text may hold any character; a line ends only at a newline."""
    folder = image_folder(workdir)
    lines = [json.dumps({"image": n, "subject": s, "predicate": p, "object": o}, ensure_ascii=ascii_only)
             for n, (s, p, o) in zip(IMAGES, facts)]
    text = "\n".join(lines) + "\n"
    (folder / "manifest.jsonl").write_bytes(text.encode("utf-8", "surrogatepass"))
    dataset = outcome(load_dataset, folder)
    try:
        text.encode("utf-8")
        if any(v and not v.strip() for _, p, o in facts for v in (p, o)):
            raise ValueError("a whitespace-only predicate or object")
        wanted = [Fact(*(v if v and v.strip() else None for v in slots)) for slots in facts]
    except ValueError:  # UnicodeEncodeError included
        return  # text that is not UTF-8, a blank slot or not a fact: refused is right
    assert dataset is not None, "a valid manifest was refused"
    assert [r.fact for r in dataset.records] == wanted


# ---- the Sherlock CSV reader ------------------------------------------------------------------

SHERLOCK_FACTS = [("dog",), ("man", "smiling"), ("one", "left of", "seven"), ("man", "riding", "horse")]


@st.composite
def sherlock_table(draw) -> list[list]:
    """A header (maybe with a pandas index column) and rows whose id, SPO and flags agree."""
    header = list(draw(st.permutations(IMAGE_COLUMNS)))
    index = draw(st.booleans())
    rows = []
    for k, image in enumerate(IMAGES[: draw(st.integers(1, len(IMAGES)))]):
        fid = draw(st.integers(0, len(SHERLOCK_FACTS) - 1))
        words = SHERLOCK_FACTS[fid]
        spo = draw(st.sampled_from(["_".join(words), ", ".join(words), "<" + ", ".join(words) + ">"]))
        cells = {"image_links": image, "NLP_links": f"NLP/{fid}.txt", "SPO": spo,
                 "id": draw(st.sampled_from([str(fid), f"{fid}.0"])),
                 **{c: str(int(i < len(words))) for i, c in enumerate(("w_s", "w_p", "w_o"))}}
        rows.append([k] * index + [cells[c] for c in header])
    return [[""] * index + header, *rows]


SHERLOCK_CELLS = {
    "image_links": LINKS,
    "SPO": st.one_of(st.lists(WORDS | st.just(""), min_size=1, max_size=4).flatmap(
        lambda w: st.sampled_from(["_".join(w), ", ".join(w), "<" + ", ".join(w) + ">", "<" + "_".join(w) + ">"])),
        WILD, REPEATS),
    "id": st.one_of(st.sampled_from(["0", "1.0", "", "nan", "inf", "1e400", "-1", "1_0"]), WILD, REPEATS),
    "w_s": st.sampled_from(["0", "1", "1.0", "", "yes", "2", "nan"]) | WILD,
}
SHERLOCK_CELLS["w_p"] = SHERLOCK_CELLS["w_o"] = SHERLOCK_CELLS["w_s"]
ANY_CELL = st.one_of(*SHERLOCK_CELLS.values())


def sherlock_cells(header: list):
    """The values to spoil a cell of ``header``'s column with (any cell's for a row or the table)."""
    def values(path):
        if len(path) == 2 and path[1] < len(header):
            return SHERLOCK_CELLS.get(header[path[1]], ANY_CELL)
        return ANY_CELL | st.lists(ANY_CELL, max_size=8)
    return values


@PROPERTY
@given(data=st.data(), name=st.sampled_from(["train_SPO_df.csv", "B1_test.csv", "x.csv"]), with_facts=st.booleans(),
       skip_bad=st.booleans())
def test_sherlock_csv_imports_or_gives_one_user_error(workdir, data, name, with_facts, skip_bad):
    table = data.draw(sherlock_table())
    table = data.draw(spoiled(table, sherlock_cells(table[0])))
    folder = image_folder(workdir, decodable=True)
    (folder / name).write_bytes(data.draw(file_bytes(csv_text(table))))
    if with_facts:
        facts = [["id", "S", "P", "O"], *([fid, *words, "", ""][:4] for fid, words in enumerate(SHERLOCK_FACTS))]
        facts = data.draw(spoiled(facts, sherlock_cells(["id", "S", "P", "O"])))
        (folder / "B1_facts.csv").write_bytes(data.draw(file_bytes(csv_text(facts))))
    report = outcome(import_sherlock, folder / name, folder / "out", skip_bad=skip_bad, workers=1)
    if report is not None:
        dataset = load_dataset(folder / "out")
        assert (report.images, report.facts) == (len(dataset.records), len(dataset.facts))
        assert report.images + sum(report.skipped.values()) <= len(table)


@PROPERTY
@given(data=st.data(), column=st.sampled_from(IMAGE_COLUMNS), with_facts=st.booleans(), skip_bad=st.booleans())
def test_any_sherlock_cell_imports_or_gives_one_user_error(workdir, data, column, with_facts, skip_bad):
    """A valid two-row CSV with one cell replaced by anything."""
    value = data.draw(st.one_of(SHERLOCK_CELLS.get(column, WILD), WILD))
    rows = [{"image_links": IMAGES[0], "NLP_links": "", "SPO": "one_left of_seven", "id": "2", "w_s": "1",
             "w_p": "1", "w_o": "1", column: value},
            {"image_links": IMAGES[1], "NLP_links": "", "SPO": "<dog>", "id": "0", "w_s": "1", "w_p": "0", "w_o": "0"}]
    folder = image_folder(workdir, decodable=True)
    text = csv_text([list(IMAGE_COLUMNS), *([r[c] for c in IMAGE_COLUMNS] for r in rows)])
    (folder / "B1_train.csv").write_bytes(text.encode("utf-8", "surrogatepass"))
    if with_facts:
        facts = [["id", "S", "P", "O"], *([fid, *words, "", ""][:4] for fid, words in enumerate(SHERLOCK_FACTS))]
        (folder / "B1_facts.csv").write_text(csv_text(facts), encoding="utf-8")
    report = outcome(import_sherlock, folder / "B1_train.csv", folder / "out", skip_bad=skip_bad, workers=1)
    if report is not None:
        assert report.images + sum(report.skipped.values()) == 2 and report.images >= 1


@PROPERTY
@given(data=st.data(), need_rows=st.booleans())
def test_csv_reader_gives_rows_or_one_user_error(workdir, data, need_rows):
    table = data.draw(spoiled([["a", "b", "c"], ["1", "2", "3"]], WILD | st.lists(WILD, max_size=4)))
    path = image_folder(workdir) / "t.csv"
    path.write_bytes(data.draw(file_bytes(csv_text(table))))
    rows = outcome(lambda: list(read_csv(path, ("a", "b", "c"), ("a",), need_rows=need_rows)))
    for line, row in rows or []:
        assert line >= 2 and set(row) <= {"a", "b", "c"} and "a" in row


# ---- the config loader ------------------------------------------------------------------------

CONFIG_VALUES = st.one_of(SCALARS, JSON_VALUES, st.sampled_from(["1e-3", "nan", "inf", "random", "sgd", "mas"]))


@st.composite
def config_docs(draw) -> dict:
    """A few keys of the default config, with their default values."""
    defaults = Config().to_dict()
    doc = {}
    for section in draw(st.lists(st.sampled_from(sorted(defaults)), max_size=3, unique=True)):
        keys = draw(st.lists(st.sampled_from(sorted(defaults[section])), max_size=3, unique=True))
        doc[section] = {k: defaults[section][k] for k in keys}
    return doc


@PROPERTY
@given(data=st.data())
def test_config_loads_or_gives_one_user_error(workdir, data):
    doc = data.draw(spoiled(data.draw(config_docs()), CONFIG_VALUES))
    text = data.draw(st.one_of(st.just(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)), WILD,
                               REPEATS.filter(lambda t: len(t) < 400)))  # deeper: see the next test
    path = image_folder(workdir) / "config.yaml"
    path.write_bytes(data.draw(file_bytes(text)))
    config = outcome(load_config, path)
    if config is not None:
        assert isinstance(config, Config) and isinstance(config.train.lr, float)


CONFIG_KEYS = [(section, key) for section, keys in Config().to_dict().items() for key in keys]


def _values_like(default) -> st.SearchStrategy:
    """Values to put where the config holds ``default``: of every type, those near its own the most."""
    near = {bool: st.booleans(), int: NUMBERS, float: NUMBERS, str: WILD | WORDS}.get(type(default), JSON_VALUES)
    return st.one_of(near, SCALARS, JSON_VALUES)


@PROPERTY
@given(data=st.data(), target=st.sampled_from(CONFIG_KEYS), extra=st.dictionaries(KEYS, SCALARS, max_size=3),
       extra_at=st.sampled_from(["nowhere", "top", "section"]))
def test_any_config_value_loads_or_gives_one_user_error(workdir, data, target, extra, extra_at):
    """A config setting one key to anything, maybe with extra keys of any type (YAML keys may be
    numbers, booleans or null) at the top or in the key's section."""
    section, key = target
    value = data.draw(_values_like(Config().to_dict()[section][key]))
    doc = {section: {key: value, **(extra if extra_at == "section" else {})}, **(extra if extra_at == "top" else {})}
    path = image_folder(workdir) / "config.yaml"
    path.write_bytes(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass"))
    config = outcome(load_config, path)
    if config is not None:
        assert getattr(getattr(config, section), key) is not None or value is None


@pytest.mark.parametrize("text", ["a: " + "[" * 1500, "train: {epochs: " + "9" * 5000 + "}"])
def test_config_too_deep_or_too_long_is_one_user_error(tmp_path, text):
    """Found by the config property with longer REPEATS: deep nesting (RecursionError) and an
    integer past Python's digit limit (ValueError) are one UserError naming the file."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="config.yaml"):
        load_config(path)


# ---- the task-file loader ---------------------------------------------------------------------

TASK_FACTS = [Fact("dog"), Fact("man", "smiling"), Fact("man", "riding", "horse"), Fact("cat")]


@pytest.fixture(scope="module")
def task_data(workdir) -> Dataset:
    """Four facts, one image each."""
    folder = image_folder(workdir).resolve()
    records = [Record(folder / name, fact, None, "train") for name, fact in zip(IMAGES, TASK_FACTS)]
    return Dataset(folder, records, FactTable.from_facts(TASK_FACTS))


@st.composite
def task_docs(draw) -> dict:
    """Facts cut into tasks B1.. (as [S, P, O] or text), some images held out, a monitored group."""
    order = draw(st.permutations(range(len(TASK_FACTS))))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1), max_size=2)))
    tasks = []
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(order)]), start=1):
        facts = [TASK_FACTS[i] for i in order[a:b]]
        entry = {"name": f"B{k}", "facts": [draw(st.sampled_from([list(f.slots), str(f)])) for f in facts]}
        if draw(st.booleans()):
            entry["held_out"] = [IMAGES[order[a]]]
            entry["adaptation"] = {f"B{k}1": [IMAGES[order[a]]]}
            entry["adaptation_facts"] = {f"B{k}1": [list(facts[0].slots)]}
        tasks.append(entry)
    return {"kind": "random", "tasks": tasks, "monitored": {"animals": [["dog", None, None]]}}


@PROPERTY
@given(data=st.data())
def test_task_file_loads_or_gives_one_user_error(workdir, task_data, data):
    doc = data.draw(spoiled(data.draw(task_docs()), JSON_VALUES | LINKS))
    text = data.draw(st.one_of(st.just(json.dumps(doc)), WILD, REPEATS))
    path = image_folder(workdir) / "tasks.json"
    path.write_bytes(data.draw(file_bytes(text)))
    task_file = outcome(load_tasks_file, path, task_data)
    if task_file is not None:
        assert isinstance(task_file, TaskFile) and task_file.tasks
        ids = [f for t in task_file.tasks for f in t.facts]
        assert len(ids) == len(set(ids)) and all(0 <= f < len(task_data.facts) for f in ids)
        assert all(0 <= i < len(task_data.records) for i in task_file.held_out)


# ---- the bugs these properties found, as plain regression tests -------------------------------

@pytest.mark.parametrize("text, fragment", [
    ("[" * 5000, r"tasks.json:1: not valid JSON \(nested too deeply\)"),
    ('{"tasks": [\n' + "1" * 5000 + "]}", r"tasks.json:2: not valid JSON \(a number with too many digits\)"),
    (json.dumps({"tasks": [{"name": "B1", "facts": [["dog", None, None]]}], "monitored": {"a\nb": [["cow"]]}}),
     r"monitored 'a\\nb', fact 1: <cow> is not a fact of the data"),
    (json.dumps({"tasks": [{"name": "B1", "facts": [["dog"]], "adaptation": {"\u2028": 1}}]}),
     r"task B1, adaptation '\\u2028': expected a list of images"),
])
def test_task_file_found_bugs(tmp_path, task_data, text, fragment):
    path = tmp_path / "tasks.json"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment) as caught:
        load_tasks_file(path, task_data)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("doc, fragment", [
    ({1: 2, "colour": 3}, r"config: unknown key 1 "),  # keys of two types: sorting them failed
    ({"train": {"lr": 10 ** 400}}, "config train.lr: expected a finite number"),  # float() overflowed
])
def test_config_found_bugs(tmp_path, doc, fragment):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(UserError, match=fragment):
        load_config(path)
