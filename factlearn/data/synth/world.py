"""A whole shape world written as a data directory: ``images/``, ``manifest.jsonl``, ``world.json``.

Determinism: the fact list comes from ``default_rng([seed, 0])`` and image ``i`` from
``default_rng([seed, 1, i])``, so the output does not depend on the number of worker processes;
the same arguments give byte-identical files.

The ``lsc`` preset is the large world (:mod:`.lsc`): the scale of the LSC data set (200,000 facts,
4 images each, 32 px) from a far larger vocabulary, its images in folders of
:data:`IMAGES_PER_FOLDER` (``images/000/000123.png``). Rendering streams: the images go to disk as
the worker processes make them, a few chunks at a time, so memory does not grow with the world.

Opt-in variants, each leaving the default world's bytes as they were: the ``base`` preset with
``exclude`` (a pretraining world sharing no fact with the excluded worlds, :mod:`.disjoint`), a
rendering ``style`` (the same facts and splits under another condition, :mod:`.styles`) and the
``topic`` group (:mod:`.vocabulary`). ``world.json`` records each only when it is used.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ...errors import UserError
from ...facts import Fact
from ...io import atomic_dir, atomic_write_json
from ..manifest import ManifestRow, write_manifest
from .disjoint import excluded_facts
from .lsc import sample_lsc_facts
from .render import KNOBS, render_image
from .styles import check_style
from .vocabulary import TOPIC, TOPIC_SHAPES, sample_facts

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict] = {
    # The CPU demo: 3,840 images, generated in seconds; 80 per fact keep the test split large
    # enough (~1,150 images) that a few points of accuracy are signal, not noise.
    "small": dict(seed=0, facts=48, images_per_fact=80, size=64, test_fraction=0.3,
                  clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2),
    # The scale of 6DS: 186 facts, ~28,000 images, half of them for testing.
    "6ds": dict(seed=0, facts=186, images_per_fact=150, size=64, test_fraction=0.5,
                clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2),
    # A pretraining world, as ImageNet is for the reference's VGG16: the same renderer and
    # vocabulary, more facts (400 of the 970 that remain once a 6ds world is excluded) and
    # images (20,000); its own seed, so that even its images' noise is not a continual world's.
    "base": dict(seed=1000, facts=400, images_per_fact=50, size=64, test_fraction=0.1,
                 clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2),
    # The scale of LSC (~202,000 facts, ~814,000 images): the large world's vocabulary (.lsc),
    # 4 images per fact (3 train, 1 test) at 32 px, for scale benchmarks; --facts makes a
    # smaller world of the same kind.
    "lsc": dict(seed=0, facts=200_000, images_per_fact=4, size=32, test_fraction=0.25,
                clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2),
}
LARGE_PRESETS = ("lsc",)  # presets of the large world, with its vocabulary and image folders
IMAGES_PER_FOLDER = 1000  # a large world's images per folder of images/
_MAX_CHUNK = 1000  # images per rendering task at most: the progress bar moves, little is queued


def generate_world(
    out_dir: str | os.PathLike,
    *,
    seed: int | None = None,
    facts: int | None = None,
    images_per_fact: int | None = None,
    size: int | None = None,
    test_fraction: float | None = None,
    preset: str = "small",
    clutter: float | None = None,
    noise: float | None = None,
    jitter: float | None = None,
    occlusion: float | None = None,
    style: str = "clean",
    topic: bool = False,
    exclude: Sequence[str | os.PathLike] = (),
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render a shape world (or, with ``preset="lsc"``, the large world) into ``out_dir``:
    ``images/``, ``manifest.jsonl`` and ``world.json``.

    Args:
        out_dir: a new or empty directory; an existing non-empty one is never overwritten.
        seed: non-negative integer (None: the preset's, 0 but for ``base``); the same seed and
            arguments give byte-identical files.
        facts, images_per_fact, size, test_fraction, clutter, noise, jitter, occlusion:
            override the preset's values (None keeps the preset's).
        preset: a key of :data:`PRESETS`; ``lsc`` is the large world (module docstring).
        style: a rendering style of :data:`.styles.STYLES`; any style gives the same facts,
            manifest rows and splits as ``clean``, in other pixels.
        topic: make about a tenth of the facts the "topic" group (:data:`.vocabulary.TOPIC_SHAPES`);
            not with ``lsc``.
        exclude: data directories none of whose facts (nor their converses) the world may show.
        workers: processes that render images (default ``os.cpu_count()``); does not change
            the output.
        progress: called as ``progress(n_done, n_total)`` as images are written.

    Returns:
        A summary: ``out_dir``, ``facts``, ``facts_per_order`` ({"<S>", "<S,P>", "<S,P,O>"}),
        ``groups`` (facts per group), ``images``, ``train``, ``test``.

    Raises:
        UserError: for a bad option, an unreadable ``exclude`` world or an ``out_dir`` that is
            not empty.
    """
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    large = preset in LARGE_PRESETS
    if large and topic:
        raise UserError(f"--topic is for the shape world's presets, not --preset {preset}")
    check_style(style)
    given = dict(seed=seed, facts=facts, images_per_fact=images_per_fact, size=size, test_fraction=test_fraction,
                 clutter=clutter, noise=noise, jitter=jitter, occlusion=occlusion)
    opts = {k: (PRESETS[preset][k] if v is None else v) for k, v in given.items()}
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_options(opts, workers)
    seed = int(opts.pop("seed"))  # numpy integers pass the checks but not json.dumps
    opts.update({k: int(opts[k]) for k in ("facts", "images_per_fact", "size")})
    opts.update({k: float(opts[k]) for k in ("test_fraction", *KNOBS)})
    out = Path(out_dir)
    _check_out_dir(out)

    banned, excluded = excluded_facts(exclude)
    if preset == "base" and not exclude:
        logger.warning("the base world excludes no world (--exclude WORLD_DIR): it may share facts with any")
    if large:
        world_facts = sample_lsc_facts(opts["facts"], seed, exclude=banned)
    else:
        world_facts = sample_facts(opts["facts"], seed, exclude=banned, topic=topic)
    n_img, n_total = opts["images_per_fact"], opts["images_per_fact"] * len(world_facts)
    n_test = min(max(int(opts["test_fraction"] * n_img + 0.5), 1), n_img - 1)
    name = _image_names(n_total, IMAGES_PER_FOLDER if large else None)
    knobs = {k: opts[k] for k in KNOBS}
    logger.info("rendering %d images of %d facts into %s", n_total, len(world_facts), out)

    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        if large:  # every folder first, so that the workers only write files
            for first in range(0, n_total, IMAGES_PER_FOLDER):
                (tmp / "images" / os.path.dirname(name(first))).mkdir()
        # Generators, not lists: a large world's 800,000 jobs and rows are made as they are used.
        jobs = ((i * n_img + j, f.slots, name(i * n_img + j)) for i, (f, _) in enumerate(world_facts)
                for j in range(n_img))
        _render_all(tmp / "images", seed, opts["size"], knobs, style, jobs, n_total, workers, progress)
        write_manifest(tmp, (ManifestRow(f"images/{name(i * n_img + j)}", f, group,
                                         "test" if j >= n_img - n_test else "train")
                             for i, (f, group) in enumerate(world_facts) for j in range(n_img)))
        counts = _counts(world_facts, n_total, n_test * len(world_facts))
        world = {"generator": "factlearn.data.synth", "version": 1, "seed": seed, "preset": preset,
                 **{k: opts[k] for k in ("images_per_fact", "size", "test_fraction")},
                 "knobs": knobs, "counts": counts,  # counts["facts"]: the number of facts
                 **_variants(preset, style, topic, counts, excluded),
                 "facts": [{"subject": f.subject, "predicate": f.predicate, "object": f.object,
                            "group": g} for f, g in world_facts]}
        atomic_write_json(tmp / "world.json", world)
    logger.info("wrote %d images (%d train, %d test) to %s", n_total, counts["train"], counts["test"], out)
    return {"out_dir": str(out), **counts}


def _variants(preset: str, style: str, topic: bool, counts: dict, excluded: dict) -> dict:
    """The world.json keys of the opt-in variants, absent when unused (so default worlds keep
    their bytes): absent ``style`` means clean, absent ``topic`` no topic group."""
    out: dict = {}
    if style != "clean":
        out["style"] = style
    if topic:
        out["topic"] = {"group": TOPIC, "shapes": list(TOPIC_SHAPES), "facts": counts["groups"][TOPIC]}
    if preset == "base" or excluded["worlds"]:
        out["exclude"] = excluded
    return out


def _check_options(opts: dict, workers: int) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    seed = opts["seed"]
    if not is_int(seed) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    for name, low in (("facts", 4), ("images_per_fact", 2), ("size", 24)):
        flag = "--" + name.replace("_", "-")
        if not is_int(opts[name]):
            raise UserError(f"{flag} must be an integer, got {opts[name]!r}")
        if opts[name] < low:
            raise UserError(f"{flag} must be at least {low}, got {opts[name]}")
    tf = opts["test_fraction"]
    if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0 < tf < 1:
        raise UserError(f"--test-fraction must be between 0 and 1 (exclusive), got {tf!r}")
    for name in KNOBS:
        v = opts[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            raise UserError(f"--{name} must be between 0 and 1, got {v!r}")
    if not is_int(workers) or workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers!r}")


def _check_out_dir(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output directory {out} exists and is not a directory")
    if (out / "world.json").exists():
        raise UserError(f"output directory {out} already holds a generated world; "
                        "remove it or choose another directory")
    if any(out.iterdir()):
        raise UserError(f"output directory {out} is not empty; choose a new or empty directory")


def _counts(world_facts: list[tuple[Fact, str]], n_images: int, n_test: int) -> dict:
    per_order = {"<S>": 0, "<S,P>": 0, "<S,P,O>": 0}
    groups: dict[str, int] = {}
    for f, g in world_facts:
        per_order[list(per_order)[f.order - 1]] += 1
        groups[g] = groups.get(g, 0) + 1
    return {"facts": len(world_facts), "facts_per_order": per_order, "groups": dict(sorted(groups.items())),
            "images": n_images, "train": n_images - n_test, "test": n_test}


def _image_names(n_total: int, per_folder: int | None) -> Callable[[int], str]:
    """The file name of image ``i`` under ``images/``: ``000123.png`` (at least six digits), or in
    folders of ``per_folder`` (a power of ten) images named by the leading digits, ``000/000123.png``."""
    width = max(6, len(str(n_total - 1)))
    if per_folder is None:
        return lambda i: f"{i:0{width}d}.png"
    folder_width = width - len(str(per_folder - 1))
    return lambda i: f"{i // per_folder:0{folder_width}d}/{i:0{width}d}.png"


Job = tuple[int, tuple, str]  # (image index, fact slots, file name under images/)


def _render_all(images: Path, seed: int, size: int, knobs: dict[str, float], style: str,
                jobs: Iterable[Job], total: int, workers: int,
                progress: Callable[[int, int], None] | None) -> None:
    # Several chunks per worker (balance, progress), and never so large that progress stalls.
    chunk = min(max(16, math.ceil(total / (workers * 8))), _MAX_CHUNK)
    chunks = _batched(jobs, chunk)
    done = 0
    if workers == 1 or total <= chunk:
        for part in chunks:
            done += _render_chunk(str(images), seed, size, knobs, style, part)
            if progress:
                progress(done, total)
        return
    with ProcessPoolExecutor(max_workers=min(workers, math.ceil(total / chunk))) as pool:
        pending: set[Future] = set()

        def collect(keep: int) -> None:
            """Wait until at most ``keep`` chunks are pending, counting the finished ones."""
            nonlocal done, pending
            while len(pending) > keep:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done += fut.result()
                    if progress:
                        progress(done, total)

        try:
            for part in chunks:  # submitted as workers free up: at most two chunks per worker in flight
                pending.add(pool.submit(_render_chunk, str(images), seed, size, knobs, style, part))
                collect(2 * workers - 1)
            collect(0)
        except BaseException:
            for fut in pending:  # what has not started never will; the pool waits for the rest
                fut.cancel()
            raise


def _batched(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    it = iter(jobs)
    while part := list(islice(it, size)):
        yield part


def _render_chunk(images: str, seed: int, size: int, knobs: dict[str, float], style: str, jobs: list[Job]) -> int:
    for index, slots, name in jobs:
        img = render_image(Fact(*slots), seed, index, size, knobs, style)
        # No metadata and no optimiser pass: the PNG bytes depend on the pixels only.
        img.save(os.path.join(images, name), format="PNG", optimize=False)
    return len(jobs)
