"""Task splits, image splits, adaptation halves, monitored groups and task files, on a tiny world."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from factlearn.cli import main
from factlearn.data.manifest import load_dataset
from factlearn.data.splits import (Task, TaskFile, adaptation_halves, adaptation_names, group_halves, image_splits,
                                   load_tasks_file,
                                   make_split, monitored_facts, random_split, save_tasks_file)
from factlearn.errors import UserError


@pytest.fixture(scope="module")
def dataset(tiny_world):
    return load_dataset(tiny_world)


@pytest.mark.parametrize("kind", ["random", "semantic"])
def test_splits_are_seeded_disjoint_and_cover_all_facts(dataset, kind):
    tasks = make_split(dataset, kind, 3, seed=5)
    assert [t.facts for t in tasks] == [t.facts for t in make_split(dataset, kind, 3, seed=5)]
    every = [f for t in tasks for f in t.facts]
    assert sorted(every) == list(range(len(dataset.facts)))  # each fact in exactly one task
    assert [t.name for t in tasks] == ["B1", "B2", "B3"]
    if kind == "semantic":  # whole groups per task
        groups = dataset.groups()
        owner = {}
        for t in tasks:
            for f in t.facts:
                assert owner.setdefault(groups[dataset.facts[f]], t.name) == t.name
    else:
        assert [t.facts for t in tasks] != [t.facts for t in random_split(len(dataset.facts), 3, seed=6)]


def test_images_follow_their_fact_and_never_straddle_train_and_test(dataset):
    fact_ids = np.array(dataset.fact_ids())
    tasks = make_split(dataset, "random", 2, seed=0)
    rows = [set(np.flatnonzero(np.isin(fact_ids, t.facts))) for t in tasks]
    assert not rows[0] & rows[1] and len(rows[0] | rows[1]) == len(dataset.records)
    # drop the manifest's splits so image_splits draws them: seeded, per fact, both sides non-empty
    unsplit = type(dataset)(dataset.root, [type(r)(r.image, r.fact, r.group, None) for r in dataset.records],
                            dataset.facts)
    is_test = image_splits(unsplit, 0.3, seed=1)
    assert np.array_equal(is_test, image_splits(unsplit, 0.3, seed=1))
    for fid in range(len(dataset.facts)):
        mine = is_test[fact_ids == fid]
        assert 0 < mine.sum() < len(mine)
    kept = image_splits(dataset, 0.3, seed=1)  # the manifest's own splits win
    assert np.array_equal(kept, [r.split == "test" for r in dataset.records])


def test_adaptation_halves(dataset):
    fact_ids = np.array(dataset.fact_ids())
    is_test = image_splits(dataset, 0.3, seed=0)
    task = make_split(dataset, "random", 2, seed=0)[0]
    a, b = adaptation_halves(dataset, task, is_test, seed=3)
    train_rows = np.flatnonzero(np.isin(fact_ids, task.facts) & ~is_test)
    assert not set(a) & set(b) and sorted([*a, *b]) == sorted(train_rows)  # disjoint, all training images
    assert not is_test[a].any() and not is_test[b].any()
    assert abs(len(a) - len(b)) <= 1
    for f in task.facts:  # every fact in both halves (each has 2+ training images here)
        assert (fact_ids[a] == f).any() and (fact_ids[b] == f).any()
    again = adaptation_halves(dataset, task, is_test, seed=3)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    assert not np.array_equal(a, adaptation_halves(dataset, task, is_test, seed=4)[0])
    assert adaptation_names(task) == ("B11", "B12")


def test_monitored_facts(dataset):
    groups = dataset.groups()
    group = sorted(g for g in set(groups.values()))[0]
    ids = monitored_facts(dataset, group)
    assert ids and all(groups[dataset.facts[i]] == group for i in ids)
    assert len(ids) == sum(g == group for g in groups.values())
    with pytest.raises(UserError, match="no facts in group 'sports'.*groups:"):
        monitored_facts(dataset, "sports")


def test_task_file_round_trip(dataset, tmp_path):
    tasks = make_split(dataset, "random", 2, seed=0)
    is_test = image_splits(dataset, 0.3, seed=0)
    halves = {}
    for t in tasks:
        halves.update(zip(adaptation_names(t), (h.tolist() for h in adaptation_halves(dataset, t, is_test, 0))))
    group = next(iter(dataset.groups().values()))
    path = tmp_path / "tasks.json"
    save_tasks_file(path, TaskFile(tasks, {"kind": "random", "seed": 0}, halves,
                                   {group: monitored_facts(dataset, group)}), dataset)
    doc = json.loads(path.read_text())
    assert doc["kind"] == "random" and doc["tasks"][0]["name"] == "B1"
    assert all(len(f) == 3 for f in doc["tasks"][0]["facts"])  # facts by slots, not ids
    assert doc["tasks"][0]["adaptation"]["B11"][0].startswith("images/")
    back = load_tasks_file(path, dataset)
    assert [(t.name, t.facts) for t in back.tasks] == [(t.name, t.facts) for t in tasks]
    assert back.adaptation == {k: sorted(v) for k, v in halves.items()}
    assert back.monitored == {group: monitored_facts(dataset, group)}
    assert back.info == {"kind": "random", "seed": 0}


def test_task_file_accepts_text_and_short_facts(dataset, tmp_path):
    facts = dataset.facts.facts
    path = tmp_path / "t.json"
    first = [str(facts[0]), [facts[1].subject, facts[1].predicate, facts[1].object][: facts[1].order]]
    second = [list(facts[2].slots)]
    path.write_text(json.dumps({"tasks": [{"name": "A", "facts": first}, {"name": "B", "facts": second}]}))
    tasks = load_tasks_file(path, dataset).tasks
    assert [(t.name, t.facts) for t in tasks] == [("A", [0, 1]), ("B", [2])]


@pytest.mark.parametrize("doc, fragment", [
    ("{", r"t.json:1: not valid JSON"),
    ({"tasks": []}, "non-empty list 'tasks'"),
    ({"tasks": [{"facts": []}]}, "task 1 needs a non-empty 'name'"),
    ({"tasks": [{"name": "B1", "facts": []}]}, "task B1: no facts"),
    ({"tasks": [{"name": "B1", "facts": [["unicorn", None, None]]}]}, r"task B1, fact 1: <unicorn> is not a fact"),
    ({"tasks": [{"name": "B1", "facts": [[None, "red", None]]}]}, "task B1, fact 1 .*needs a subject"),
    ({"tasks": [{"name": "B1", "facts": "F0"}, {"name": "B2", "facts": "F0"}]}, "is in task B1 and task B2"),
    ({"tasks": [{"name": "B1", "facts": "F0"}, {"name": "B1", "facts": "F1"}]}, "two tasks are named 'B1'"),
    ({"tasks": [{"name": "B1", "facts": "F0", "adaptation": {"B11": ["images/nope.png"]}}]},
     "adaptation B11: 'images/nope.png' is not an image"),
])
def test_bad_task_files_name_the_problem(dataset, tmp_path, doc, fragment):
    path = tmp_path / "t.json"
    text = doc if isinstance(doc, str) else json.dumps(doc)
    for i in range(2):  # "F0"/"F1": fact placeholders filled from the data
        text = text.replace(f'"F{i}"', json.dumps([list(dataset.facts[i].slots)]))
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        load_tasks_file(path, dataset)
    with pytest.raises(UserError, match="tasks file not found"):
        load_tasks_file(tmp_path / "missing.json", dataset)


def test_split_command_writes_a_usable_task_file(tiny_world, tmp_path, dataset):
    out = tmp_path / "split.json"
    group = sorted(set(dataset.groups().values()))[0]
    args = ["split", str(tiny_world), "--kind", "semantic", "--tasks", "2", "--seed", "4", "--out", str(out),
            "--adaptation-images", "--monitor", group]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "B1" in r.output and "B2" in r.output
    back = load_tasks_file(out, dataset)
    assert [t.facts for t in back.tasks] == [t.facts for t in make_split(dataset, "semantic", 2, seed=4)]
    assert set(back.adaptation) == {"B11", "B12", "B21", "B22"}
    assert back.monitored == {group: monitored_facts(dataset, group)}
    r = CliRunner().invoke(main, ["split", str(tiny_world), "--tasks", "99", "--out", str(out)])
    assert r.exit_code == 2 and "cannot split" in r.output


def test_fact_level_adaptation_halves_are_fact_disjoint_with_held_out_images(tiny_world, tmp_path, dataset):
    out = tmp_path / "split.json"
    args = ["split", str(tiny_world), "--tasks", "2", "--seed", "1", "--out", str(out), "--adaptation",
            "--held-out", "0.25"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    back = load_tasks_file(out, dataset)
    is_test = image_splits(dataset, 0.3, 1)
    fact_of = np.array(dataset.fact_ids())
    held = set(back.held_out)
    assert held and not any(is_test[i] for i in held)  # held out of TRAINING images, never test ones
    for task in back.tasks:
        b11, b12 = (back.adaptation_facts[n] for n in adaptation_names(task))
        assert b11 and b12 and not set(b11) & set(b12) and sorted(b11 + b12) == task.facts  # facts cut in two
        for name, facts in zip(adaptation_names(task), (b11, b12)):
            images = back.adaptation[name]
            assert images and set(images) <= held  # importance images: held-out ones
            assert set(fact_of[images]) <= set(facts)  # of the subset's own facts
        for fid in task.facts:  # every fact keeps training images
            train = set(np.flatnonzero((fact_of == fid) & ~is_test))
            assert train - held
    again = tmp_path / "again.json"
    assert CliRunner().invoke(main, args[:-5] + ["--out", str(again), "--adaptation", "--held-out", "0.25"]).exit_code == 0
    assert again.read_text() == out.read_text()  # seeded: the same file


def test_group_halves_keep_groups_whole_and_even():
    task = Task("B1", list(range(10)))
    group_of = {0: "a", 1: "a", 2: "a", 3: "a", 4: "b", 5: "b", 6: "b", 7: "c", 8: "c", 9: None}
    for seed in range(5):
        b11, b12 = group_halves(task, group_of, seed)
        assert sorted(b11 + b12) == task.facts and not set(b11) & set(b12)
        for g in ("a", "b", "c"):  # a group never in both halves
            members = {f for f, x in group_of.items() if x == g}
            assert members <= set(b11) or members <= set(b12)
        # largest first to the emptier half: a (4) | b (3), then c (2) to b's half, the ungrouped fact to a's
        assert sorted([len(b11), len(b12)]) == [5, 5]
        assert group_halves(task, group_of, seed) == (b11, b12)  # seeded
    # ties between equal groups are broken by the seed, not by name alone
    even = {i: "xyzw"[i // 2] for i in range(8)}
    cuts = {tuple(group_halves(Task("B1", list(range(8))), even, seed)[0]) for seed in range(8)}
    assert len(cuts) > 1
    with pytest.raises(UserError, match="all its facts are in one group"):
        group_halves(Task("B1", [0, 1, 2]), {0: "a", 1: "a", 2: "a"}, 0)


def test_adaptation_by_group_cuts_the_split_by_semantic_group(tiny_world, tmp_path, dataset):
    out = tmp_path / "split.json"
    r = CliRunner().invoke(main, ["split", str(tiny_world), "--tasks", "2", "--out", str(out), "--adaptation",
                                  "--adaptation-by", "group"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    back = load_tasks_file(out, dataset)
    group, table = dataset.groups(), dataset.facts.facts
    for task in back.tasks:
        b11, b12 = (back.adaptation_facts[n] for n in adaptation_names(task))
        assert sorted(b11 + b12) == task.facts
        assert not {group[table[f]] for f in b11} & {group[table[f]] for f in b12}
    assert json.loads(out.read_text())["adaptation_by"] == "group"
    b11 = back.adaptation_facts["B11"]
    assert f"  B11: {len(b11)} facts (" in r.output and "held-out images" in r.output
    r = CliRunner().invoke(main, ["split", str(tiny_world), "--out", str(tmp_path / "s.json"), "--adaptation-by", "group"])
    assert r.exit_code == 2 and "--adaptation-by: only with --adaptation" in r.output
    assert not (tmp_path / "s.json").exists()


def test_adaptation_kinds_are_exclusive_and_held_out_must_be_the_tasks(tiny_world, tmp_path, dataset):
    r = CliRunner().invoke(main, ["split", str(tiny_world), "--out", str(tmp_path / "s.json"), "--adaptation",
                                  "--adaptation-images"])
    assert r.exit_code == 2 and "choose one" in r.output and not (tmp_path / "s.json").exists()
    out = tmp_path / "split.json"
    CliRunner().invoke(main, ["split", str(tiny_world), "--tasks", "2", "--out", str(out), "--adaptation"],
                       catch_exceptions=False)
    doc = json.loads(out.read_text())
    doc["tasks"][0]["held_out"] = doc["tasks"][1]["held_out"][:1]  # an image of another task's fact
    out.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="held_out: .* is not an image of the task's facts"):
        load_tasks_file(out, dataset)


def test_held_out_without_adaptation_holds_out_of_every_task(tiny_world, tmp_path, dataset):
    out = tmp_path / "split.json"
    r = CliRunner().invoke(main, ["split", str(tiny_world), "--tasks", "2", "--out", str(out), "--held-out", "0.3",
                                  "--monitor", sorted(set(dataset.groups().values()))[0]], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    back = load_tasks_file(out, dataset)
    fact_of = np.array(dataset.fact_ids())
    assert back.held_out and not back.adaptation and not back.adaptation_facts
    assert all(set(fact_of[back.held_out]) & set(t.facts) for t in back.tasks)  # every task holds some out
