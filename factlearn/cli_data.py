"""``factlearn synth``, ``factlearn data import ...`` and ``factlearn split``: the commands that
make and cut data (registered on the ``factlearn`` group by :mod:`factlearn.cli`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_options import SEED
from .errors import UserError


@click.command(short_help="Render the built-in world of fact images.")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["small", "6ds", "base", "lsc"]), default="small", show_default=True,
              help="World preset: small (demo), 6ds (reference scale), base (a world to pretrain on; see --exclude), "
                   "lsc (the large world: LSC scale, 200,000 facts x 4 images at 32 px, a far larger vocabulary).")
@click.option("--seed", type=SEED, default=None, help="Seed (default: the preset's; 0, base 1000).")
@click.option("--facts", type=int, default=None,
              help="Number of facts (default: the preset's; with lsc, a smaller large world for benchmarks).")
@click.option("--images-per-fact", type=int, default=None, help="Images per fact (default: the preset's).")
@click.option("--size", type=int, default=None, help="Image side in pixels (default: the preset's).")
@click.option("--style", default="clean", show_default=True,
              help="Rendering style: clean, dark, dusk, dim, blur, noise or background (same facts and splits, "
                   "other pixels).")
@click.option("--topic", is_flag=True,
              help="Make about 10% of the facts a visually distinctive group, 'topic' (not with lsc).")
@click.option("--exclude", type=click.Path(path_type=Path), multiple=True,
              help="A data directory none of whose facts the world may show (repeatable; e.g. for --preset base).")
@click.option("--workers", type=int, default=None,
              help="Processes (default: all cores); the output is the same for any number.")
def synth(out_dir: Path, preset: str, seed, facts, images_per_fact, size, style, topic, exclude, workers) -> None:
    """Render the built-in world of fact images into OUT_DIR (same seed, same bytes; see data/README.md)."""
    from .data.synth import generate_world
    from .progress import progress_bar

    # delay: a bar that never showed progress prints nothing, so an error stays one line
    with progress_bar(desc="render", unit="img", delay=0.1) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = generate_world(out_dir, seed=seed, facts=facts, images_per_fact=images_per_fact, size=size,
                                 preset=preset, style=style, topic=topic, exclude=exclude, workers=workers,
                                 progress=progress)
    click.echo(f"wrote {out_dir}: {json.dumps(summary)}")


@click.group(short_help="Import fact data sets (manifest, Sherlock, Visual Genome).")
def data() -> None:
    """Bring fact data sets into factlearn's manifest format (see data/README.md)."""


@data.group(name="import", short_help="Import a data set into a new data directory.")
def import_() -> None:
    """Import a data set into a new data directory: manifest.jsonl, images/, import.json.

    Every row is validated and every image decoded. The first bad row is an error naming its
    file and line; with --skip-bad, bad rows are skipped and counted per reason. The output is
    built next to OUT_DIR and renamed at the end; a non-empty OUT_DIR is refused.
    """


SKIP_BAD = click.option("--skip-bad", is_flag=True, help="Skip bad rows (reported per reason) instead of failing.")
WORKERS = click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads that decode images.")
LINK = click.option("--link", is_flag=True, help="Hard-link images instead of copying them (same file system).")


@import_.command(name="manifest", short_help="A generic manifest (JSONL or CSV) and its images.")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@SKIP_BAD
@LINK
@WORKERS
def import_manifest_cmd(src, out_dir, skip_bad, link, workers) -> None:
    """Validate a generic manifest (SRC: data directory or manifest.jsonl / .csv) and copy it with its
    images into OUT_DIR (images keep their paths, under images/)."""
    from .data.importers import import_manifest

    _echo_import(import_manifest(src, out_dir, skip_bad=skip_bad, link=link, workers=workers))


@import_.command(name="sherlock", short_help="The Sherlock / lifelong fact learning CSVs and splits.")
@click.argument("src", metavar="CSV_OR_SPLITS_DIR", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--images-root", type=click.Path(path_type=Path), default=None,
              help="Folder image_links are relative to. Default: the data set root (the folder holding splits/, "
                   "else the folder of CSV_OR_SPLITS_DIR), and for an image not there its images/ folder (the "
                   "reference code reads ROOT/images/<image_links>).")
@SKIP_BAD
@LINK
@WORKERS
def import_sherlock_cmd(src, out_dir, images_root, skip_bad, link, workers) -> None:
    """Import the Sherlock / lifelong fact learning CSV format (image_links, NLP_links, SPO, id, w_s, w_p, w_o):
    one CSV, or a split tree (splits/4tasks_random/B1_train.csv ...), which also gives
    OUT_DIR/tasks/<layout>.json for `train --tasks-file`. train_SPO_df.csv and test_SPO_df.csv beside
    splits/ are the data set: every row is checked and imported, and the split files must agree with them."""
    from .data.sherlock import import_sherlock

    _echo_import(import_sherlock(src, out_dir, images_root=images_root, skip_bad=skip_bad, link=link,
                                 workers=workers))


@import_.command(name="vg", short_help="Visual Genome: one crop per fact occurrence.")
@click.argument("vg_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--min-count", type=click.IntRange(min=1), default=10, show_default=True,
              help="Drop facts with fewer occurrences.")
@click.option("--synonyms", type=click.Path(path_type=Path), default=None,
              help="Name synonyms, one 'alias<TAB>canonical' per line.")
@click.option("--min-box", type=click.IntRange(min=1), default=8, show_default=True,
              help="Drop boxes smaller than this many pixels on a side.")
@click.option("--max-per-fact", type=click.IntRange(min=1), default=None,
              help="Keep at most N crops per fact (seeded).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="For --max-per-fact.")
@SKIP_BAD
@WORKERS
def import_vg_cmd(vg_dir, out_dir, min_count, synonyms, min_box, max_per_fact, seed, skip_bad, workers) -> None:
    """Import Visual Genome (objects.json, attributes.json, relationships.json + images/): one crop per
    fact occurrence, <S> from objects, <S,P> from attributes, <S,P,O> from relationships."""
    from .data.vg import import_vg

    _echo_import(import_vg(vg_dir, out_dir, min_count=min_count, synonyms=synonyms, min_box=min_box,
                           max_per_fact=max_per_fact, seed=seed, skip_bad=skip_bad, workers=workers))


def _echo_import(report) -> None:
    click.echo(f"wrote {report.out_dir}: {report.images} images of {report.facts} facts")
    for order, n in report.notes.get("by_order", {}).items():
        split = f" ({n['train']} train, {n['test']} test)" if n["train"] or n["test"] else ""
        click.echo(f"  {order:<8} {n['facts']:>6} facts {n['images']:>8} images{split}")
    by_task = report.notes.get("by_task", {})
    for name in report.notes.get("tasks_files", []):
        click.echo(f"  task file {report.out_dir / name}")
        tasks = by_task.get(Path(name).stem, {})
        if tasks:
            click.echo("    " + ", ".join(f"{task} {n['facts']} facts {n['images']} images" for task, n in tasks.items()))
    if report.skipped:
        click.echo(f"skipped {sum(report.skipped.values())} bad rows:")
        for reason, n in report.skipped.items():
            click.echo(f"  {reason}: {n}")
        click.echo("first ones:")
        for line in report.examples:
            click.echo(f"  {line}")


@click.command(short_help="Cut a data set's facts into a task file.")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["random", "semantic"]), default="random", show_default=True)
@click.option("--tasks", type=click.IntRange(min=1), default=2, show_default=True, help="Number of tasks.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the fact split and the train/test draw (use the same as split.seed when training).")
@click.option("--out", "out_file", required=True, type=click.Path(path_type=Path), help="Task file to write (JSON).")
@click.option("--adaptation", is_flag=True,
              help="Cut each task's FACTS into two halves (B11, B12 ...) and hold out --held-out of their training "
                   "images from training: unlabeled images of each half for importance (MAS paper, Table 4).")
@click.option("--adaptation-by", type=click.Choice(["random", "group"]), default="random", show_default=True,
              help="With --adaptation: cut the facts at random, or into whole semantic groups (the manifest's group "
                   "column), so that the halves differ in content.")
@click.option("--adaptation-images", is_flag=True,
              help="Instead cut each task's training images into two halves of the same facts (B11, B12 ...).")
@click.option("--held-out", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of each fact's training images kept out of training, as unlabeled images for importance "
                   "(method.importance_images: held_out). Default: 0.2 with --adaptation, none without.")
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="With --adaptation or --held-out: test share for rows without a split (use split.test_fraction).")
@click.option("--monitor", "groups", multiple=True, help="A group of facts to record as monitored (repeatable).")
def split(data_dir, kind, tasks, seed, out_file, adaptation, adaptation_by, adaptation_images, held_out,
          test_fraction, groups) -> None:
    """Cut DATA_DIR's facts into a task sequence and write it as a task file for `train --tasks-file`."""
    from .data.manifest import load_dataset
    from .data.splits import TaskFile, adaptation_halves, adaptation_names, fact_halves, group_halves, \
        held_out_images, image_splits, make_split, monitored_facts, save_tasks_file

    import numpy as np

    if adaptation and adaptation_images:
        raise UserError("--adaptation (halves of the facts) and --adaptation-images (halves of the images): choose one")
    if adaptation_by != "random" and not adaptation:
        raise UserError("--adaptation-by: only with --adaptation (halves of the facts)")
    dataset = load_dataset(data_dir)
    task_list = make_split(dataset, kind, tasks, seed)
    info = {"kind": kind, "seed": seed}
    out = TaskFile(task_list, info, monitored={g: monitored_facts(dataset, g) for g in groups})
    if adaptation and held_out is None:
        held_out = 0.2
    if adaptation or adaptation_images or held_out:
        is_test = image_splits(dataset, test_fraction, seed)
        info["image_split"] = {"test_fraction": test_fraction, "seed": seed}
    if adaptation_images:
        for task in task_list:
            out.adaptation.update((n, h.tolist()) for n, h in
                                  zip(adaptation_names(task), adaptation_halves(dataset, task, is_test, seed)))
    if adaptation_by == "group":
        info["adaptation_by"] = "group"
        group = dataset.groups()
        group_of = {i: group.get(fact) for i, fact in enumerate(dataset.facts.facts)}
    if held_out:
        info["held_out"] = held_out
        for task in task_list:
            held = held_out_images(dataset, task.facts, is_test, held_out, seed)
            out.held_out.extend(held.tolist())
            if not adaptation:
                continue
            fact_of = np.array(dataset.fact_ids())[held]
            halves = group_halves(task, group_of, seed) if adaptation_by == "group" else fact_halves(task, seed)
            for name, facts in zip(adaptation_names(task), halves):
                out.adaptation_facts[name] = facts
                out.adaptation[name] = held[np.isin(fact_of, facts)].tolist()
    save_tasks_file(out_file, out, dataset)
    click.echo(f"wrote {out_file}: " + ", ".join(f"{t.name} {len(t.facts)} facts" for t in task_list))
    for name, facts in out.adaptation_facts.items():
        names = sorted({group_of[f] or "no group" for f in facts}) if adaptation_by == "group" else []
        groups = f" ({', '.join(names)})" if names else ""
        click.echo(f"  {name}: {len(facts)} facts{groups}, {len(out.adaptation[name])} held-out images")
