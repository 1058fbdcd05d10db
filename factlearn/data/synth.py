"""The built-in "shape world": a deterministic renderer of fact images.

The world stands in for real fact data sets (6DS, Sherlock) so that everything runs offline.
Every image shows one fact:

* <S> (about 25% of the facts): one shape, the largest thing in the image, with a random
  colour and, sometimes, a texture. There are only 16 shapes, so big worlds have fewer <S>
  facts than 25% and give the rest to the other orders in proportion.
* <S,P> (about 40%): an attribute of the subject. Colours ("red", "dark blue", "light green"),
  textures ("striped", "dotted", "checked") or sizes ("large", "small"). The other two
  attributes then take their unmarked value (a neutral grey/black/white, solid, medium size),
  so the image does not also show a second <S,P> fact.
* <S,P,O> (about 35%): two shapes in a spatial relation: "left of", "right of", "above",
  "below" (with a clear gap), "inside" (S small, drawn within a large O) and "in front of"
  (S overlaps and hides part of O). A fact and its converse (<a, left of, b> and
  <b, right of, a>) show the same picture, so at most one of the two is ever sampled.
  "next to" is left out for the same reason: every "left of" picture would also show it.

Semantic groups (the ``group`` column of the manifest), for semantic task splits:

* <S>: "round shapes" (circle, ring, oval, half circle, crescent, heart, teardrop, cloud) or
  "angular shapes" (square, triangle, diamond, pentagon, hexagon, star, cross, arrow);
* <S,P>: the attribute family: "colour", "texture" or "size";
* <S,P,O>: "relation".

Difficulty knobs, each in [0, 1]: ``clutter`` (how many small distractor shapes, kept away from
the fact's shapes), ``noise`` (background tint, background texture and pixel noise, slight colour
shifts), ``jitter`` (position, scale and rotation spread), ``occlusion`` (probability of a bar
partly covering the subject).

Determinism: the fact list comes from ``default_rng([seed, 0])`` and image ``i`` from
``default_rng([seed, 1, i])``, so the output does not depend on the number of worker processes;
the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserError
from ..facts import Fact, FactTable
from ..io import atomic_dir

logger = logging.getLogger(__name__)
T = TypeVar("T")

PRESETS: dict[str, dict] = {
    # The CPU demo: 3,840 images, generated in seconds; 80 per fact keep the test split large
    # enough (~1,150 images) that a few points of accuracy are signal, not noise.
    "small": dict(facts=48, images_per_fact=80, size=64, test_fraction=0.3,
                  clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2),
    # The scale of 6DS: 186 facts, ~28,000 images, half of them for testing.
    "6ds": dict(facts=186, images_per_fact=150, size=64, test_fraction=0.5,
                clutter=0.3, noise=0.3, jitter=0.5, occlusion=0.2),
}
KNOBS = ("clutter", "noise", "jitter", "occlusion")

ROUND_SHAPES = ("circle", "ring", "oval", "half circle", "crescent", "heart", "teardrop", "cloud")
ANGULAR_SHAPES = ("square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "arrow")
SHAPES = ROUND_SHAPES + ANGULAR_SHAPES

COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 215, 40),
    "green": (40, 150, 60), "light green": (150, 230, 120), "blue": (50, 110, 235),
    "dark blue": (20, 30, 120), "purple": (140, 50, 180), "pink": (245, 140, 200),
    "brown": (125, 75, 35),
}
# Unmarked colours: used where the colour must not state a fact; never a predicate.
NEUTRALS = {"grey": (125, 125, 125), "black": (30, 30, 30), "white": (245, 245, 245)}
TEXTURES = ("striped", "dotted", "checked")
SIZES = {"large": 0.40, "small": 0.14}  # half-extent as a fraction of the image side
MEDIUM = 0.26
RELATIONS = ("left of", "right of", "above", "below", "inside", "in front of")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Shapes with room inside for a small subject (stars, crosses, crescents and arrows have none).
CONTAINERS = ("circle", "ring", "oval", "half circle", "heart", "teardrop", "cloud",
              "square", "triangle", "diamond", "pentagon", "hexagon")

ORDER_WEIGHTS = (0.25, 0.40, 0.35)  # <S>, <S,P>, <S,P,O>, roughly as in real fact data
FAMILY_WEIGHTS = {"colour": 0.45, "texture": 0.35, "size": 0.20}
FAMILIES = {"colour": tuple(COLOURS), "texture": TEXTURES, "size": tuple(SIZES)}

_SUPERSAMPLE = 3  # draw at 3x and downsample: anti-aliased edges without a drawing library
_ANY = [0] + [255] * 255  # lookup table: any non-zero mask value becomes fully set


# ---------------------------------------------------------------------------- the facts

def fact_group(fact: Fact) -> str:
    """The semantic group of a shape-world fact (see the module docstring)."""
    if fact.order == 1:
        return "round shapes" if fact.subject in ROUND_SHAPES else "angular shapes"
    if fact.order == 2:
        return next(fam for fam, preds in FAMILIES.items() if fact.predicate in preds)
    return "relation"


def _relation_pools() -> dict[str, list[Fact]]:
    """Every <S,P,O> fact per relation; S and O differ so that the picture says which is which."""
    return {rel: [Fact(s, rel, o) for s in SHAPES for o in (CONTAINERS if rel == "inside" else SHAPES) if s != o]
            for rel in RELATIONS}


def _capacity() -> tuple[int, int, int]:
    """How many distinct facts of each order the world can show (a fact and its converse
    show the same picture, so a converse pair counts once)."""
    # Count one relation of each converse pair ("left of", not also "right of").
    n_rel = sum(len(p) for r, p in _relation_pools().items() if r not in CONVERSE or r < CONVERSE[r])
    return len(SHAPES), len(SHAPES) * sum(len(p) for p in FAMILIES.values()), n_rel


def max_facts() -> int:
    """The most facts :func:`sample_facts` can return."""
    return sum(_capacity())


def sample_facts(n_facts: int, seed: int = 0) -> list[tuple[Fact, str]]:
    """Sample ``n_facts`` distinct facts of all three orders, deterministically from ``seed``.

    Args:
        n_facts: number of facts, at least 3 so that every order is present.
        seed: non-negative integer.

    Returns:
        ``(fact, group)`` pairs in :meth:`FactTable.from_facts` order.

    Raises:
        UserError: if the world cannot show that many distinct facts.
    """
    if n_facts < 3:
        raise ValueError(f"need at least 3 facts to cover the three orders, got {n_facts}")
    limit = max_facts()
    if n_facts > limit:
        raise UserError(f"--facts must be at most {limit}: the shape world has no more distinct facts")
    rng = np.random.default_rng([seed, 0])
    n1, n2, n3 = _allocate(n_facts, ORDER_WEIGHTS, _capacity(), minimum=1)

    facts = [Fact(s) for s in _shuffled(rng, SHAPES)[:n1]]
    fam_counts = _allocate(n2, tuple(FAMILY_WEIGHTS.values()),
                           tuple(len(SHAPES) * len(FAMILIES[f]) for f in FAMILY_WEIGHTS), minimum=0)
    for family, k in zip(FAMILY_WEIGHTS, fam_counts):
        pools = {p: [Fact(s, p) for s in _shuffled(rng, SHAPES)] for p in FAMILIES[family]}
        facts += _round_robin(rng, pools, k)
    pools = {r: _shuffled(rng, pool) for r, pool in _relation_pools().items()}
    facts += _round_robin(rng, pools, n3)
    table = FactTable.from_facts(facts)
    return [(f, fact_group(f)) for f in table.facts]


def _shuffled(rng: np.random.Generator, items: Sequence[T]) -> list[T]:
    return [items[i] for i in rng.permutation(len(items))]


def _allocate(total: int, weights: tuple[float, ...], caps: tuple[int, ...], minimum: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` within ``caps``; what a capped part cannot
    take goes to the others in proportion (largest remainders for the rounding)."""
    counts = [0] * len(weights)
    free = list(range(len(weights)))
    left = total
    while True:  # fix the parts whose share exceeds their cap, then share out the rest again
        weight = sum(weights[i] for i in free)
        capped = [i for i in free if left * weights[i] / weight >= caps[i]]
        if not capped:
            break
        for i in capped:
            counts[i] = caps[i]
            left -= caps[i]
            free.remove(i)
    weight = sum(weights[i] for i in free)
    ideal = {i: left * weights[i] / weight for i in free}
    for i in free:
        counts[i] = math.floor(ideal[i])
    for i in sorted(free, key=lambda i: (counts[i] - ideal[i], i))[: left - sum(counts[i] for i in free)]:
        counts[i] += 1
    for i in range(len(counts)):  # every part gets its minimum, taken from the largest
        while counts[i] < min(minimum, caps[i]):
            counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
            counts[i] += 1
    return counts


def _round_robin(rng: np.random.Generator, pools: dict[str, list[Fact]], k: int) -> list[Fact]:
    """Take ``k`` facts, one predicate after another so that every predicate gets used; skip a
    fact whose converse is already taken (it would show the same picture)."""
    names = _shuffled(rng, tuple(pools))
    queues = {p: list(pools[p]) for p in names}
    taken: list[Fact] = []
    seen: set[Fact] = set()
    while len(taken) < k:
        progressed = False
        for p in names:
            while queues[p]:
                fact = queues[p].pop(0)
                if fact.object is not None and fact.predicate in CONVERSE:
                    if Fact(fact.object, CONVERSE[fact.predicate], fact.subject) in seen:
                        continue
                taken.append(fact)
                seen.add(fact)
                progressed = True
                break
            if len(taken) == k:
                break
        if not progressed:
            raise RuntimeError(f"fact pools exhausted after {len(taken)} of {k} facts")
    return taken


# ---------------------------------------------------------------------------- the shapes

def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
         n: int = 64) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=abs(a1 - a0) < 2 * math.pi)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # (n, 2), y points down


def _regular(n: int, radius: float = 1.0) -> np.ndarray:
    t = -math.pi / 2 + np.arange(n) * 2 * math.pi / n  # first vertex on top
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42)
    inner = inner @ _rotation(math.pi / 5).T
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _teardrop() -> np.ndarray:
    centre, r, apex = np.array([0.0, 0.35]), 0.65, np.array([0.0, -1.0])
    alpha = math.acos(r / float(np.linalg.norm(centre - apex)))  # angle of the tangent points
    arc = _arc(centre[0], centre[1], r, r, -math.pi / 2 + alpha, 3 * math.pi / 2 - alpha)
    return np.vstack([apex[None], arc])


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _raw_shapes() -> dict[str, list[tuple[bool, np.ndarray]]]:
    """Each shape as polygons drawn in order: (True, points) fills, (False, points) cuts."""
    a = 0.33  # half-width of the cross's arms
    return {
        "circle": [(True, _arc(0, 0, 1, 1))],
        "ring": [(True, _arc(0, 0, 1, 1)), (False, _arc(0, 0, 0.58, 0.58))],
        "oval": [(True, _arc(0, 0, 1, 0.55))],
        "half circle": [(True, _arc(0, 0, 1, 1, math.pi, 2 * math.pi, 48))],
        "crescent": [(True, _arc(0, 0, 1, 1)), (False, _arc(0.45, -0.2, 0.85, 0.85))],
        "heart": [(True, _heart())],
        "teardrop": [(True, _teardrop())],
        "cloud": [(True, _arc(-0.55, 0.15, 0.42, 0.42)), (True, _arc(0.0, -0.15, 0.55, 0.55)),
                  (True, _arc(0.55, 0.12, 0.45, 0.45)), (True, _arc(0.0, 0.28, 0.9, 0.3))],
        "square": [(True, np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float))],
        "triangle": [(True, np.array([[0, -1], [1, 0.73], [-1, 0.73]], float))],
        "diamond": [(True, np.array([[0, -1], [0.7, 0], [0, 1], [-0.7, 0]], float))],
        "pentagon": [(True, _regular(5))],
        "hexagon": [(True, _regular(6))],
        "star": [(True, _star())],
        "cross": [(True, np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                                   [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], float))],
        "arrow": [(True, np.array([[-1, -0.22], [0.1, -0.22], [0.1, -0.65], [1, 0], [0.1, 0.65],
                                   [0.1, 0.22], [-1, 0.22]], float))],
    }


@lru_cache(maxsize=None)
def _shapes() -> dict[str, list[tuple[bool, np.ndarray]]]:
    """The shapes centred on their bounding box and scaled to a half-extent of 1."""
    out = {}
    for name, polys in _raw_shapes().items():
        pts = np.vstack([p for fill, p in polys if fill])
        lo, hi = pts.min(0), pts.max(0)
        centre, half = (lo + hi) / 2, (hi - lo).max() / 2
        out[name] = [(fill, (p - centre) / half) for fill, p in polys]
    return out


@lru_cache(maxsize=None)
def _radius(name: str) -> float:
    """Bounding radius of a shape (its farthest point from the centre), in half-extents."""
    return float(max(np.linalg.norm(p, axis=1).max() for fill, p in _shapes()[name] if fill))


@lru_cache(maxsize=None)
def _hollow(name: str) -> tuple[float, float, float]:
    """The centre (x, y) and radius of the largest circle inside a shape, in half-extents:
    where a subject drawn "inside" it goes. Brute force on a coarse grid, once per shape."""
    if name == "ring":  # its contents go in the hole, not in the band
        return 0.0, 0.0, 0.58
    n, half = 61, 27.0  # a margin of background all round, so every shape has outside pixels
    mask = np.asarray(_mask(name, n / 2, n / 2, half, 0.0, n), bool)
    ys, xs = np.nonzero(mask)
    oy, ox = np.nonzero(~mask)
    d2 = (xs[:, None] - ox[None]) ** 2 + (ys[:, None] - oy[None]) ** 2  # (inside, outside)
    best = int(d2.min(1).argmax())
    return (float(xs[best] - n / 2) / half, float(ys[best] - n / 2) / half,
            math.sqrt(d2[best].min()) / half)


def _mask(name: str, cx: float, cy: float, half: float, angle: float, side: int) -> Image.Image:
    """The shape as an L mask of ``side`` pixels: centre (cx, cy) and half-extent in pixels."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    rot = _rotation(angle)
    for fill, pts in _shapes()[name]:
        xy = pts @ rot.T * half + (cx, cy)
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255 if fill else 0)
    return mask


# ---------------------------------------------------------------------------- one image

@dataclass
class _Item:
    """A shape to draw; position and half-extent are fractions of the image side."""

    shape: str
    x: float
    y: float
    half: float
    angle: float  # radians
    colour: tuple[int, int, int]
    texture: str | None = None

    @property
    def reach(self) -> float:
        return self.half * _radius(self.shape)


def render_image(fact: Fact, seed: int, index: int, size: int, knobs: dict[str, float]) -> Image.Image:
    """Render image ``index`` of ``fact``: a ``size`` x ``size`` RGB image.

    The randomness comes only from ``default_rng([seed, 1, index])``, so any process can render
    any image. ``knobs`` maps each of ``KNOBS`` to a value in [0, 1].
    """
    rng = np.random.default_rng([seed, 1, index])
    side = size * _SUPERSAMPLE
    img = Image.fromarray(_background(rng, side, knobs["noise"]), "RGB")
    items = _layout(rng, fact, knobs)
    distractors = _distractors(rng, items, knobs["clutter"])
    for item in distractors + items:
        _paint(img, rng, item, side)
    if rng.random() < knobs["occlusion"]:
        _occlude(img, rng, next(it for it in items if it.shape == fact.subject), side)
    img = img.resize((size, size), Image.Resampling.BOX)
    sigma = 25.0 * knobs["noise"]
    if sigma > 0:
        pixels = np.asarray(img, np.float32) + rng.normal(0.0, sigma, (size, size, 3))
        img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


def _background(rng: np.random.Generator, side: int, noise: float) -> np.ndarray:
    light = rng.uniform(235 - 100 * noise, 240)
    base = light + rng.uniform(-1, 1, 3) * 70 * noise  # a random tint, stronger with noise
    bg = np.broadcast_to(base, (side, side, 3)).astype(np.float32)
    if rng.random() < noise:  # a background texture, so the background is not one flat colour
        kind = rng.integers(3)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
        if kind == 0:  # a linear gradient
            angle = rng.uniform(0, 2 * math.pi)
            ramp = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)
            bg = bg + (ramp * 120 * noise)[..., None]
        elif kind == 1:  # soft wide stripes
            angle, period = rng.uniform(0, math.pi), rng.uniform(0.1, 0.3)
            u = xx * math.cos(angle) + yy * math.sin(angle)
            bg = bg + (np.sin(2 * math.pi * u / period) * 30 * noise)[..., None]
        else:  # blotches: coarse colour noise, smoothly upsampled
            coarse = rng.uniform(-1, 1, (4, 4, 3)) * 60 * noise
            layers = [np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), "F")
                                 .resize((side, side), Image.Resampling.BILINEAR)) for c in range(3)]
            bg = bg + np.stack(layers, axis=-1)
    return np.clip(bg + 0.5, 0, 255).astype(np.uint8)


def _layout(rng: np.random.Generator, fact: Fact, knobs: dict[str, float]) -> list[_Item]:
    """The fact's shapes in drawing order (S and O are never the same shape)."""
    jitter, noise = knobs["jitter"], knobs["noise"]

    def scale(base: float) -> float:
        return base * (1 + rng.uniform(-0.2, 0.2) * jitter)

    def angle() -> float:
        return math.radians(rng.uniform(-25, 25) * jitter)

    def shift(spread: float) -> float:
        return rng.uniform(-spread, spread) * jitter

    def tint(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        shifted = np.clip(np.array(rgb) + rng.normal(0, 12 * noise, 3), 0, 255)
        return tuple(int(v) for v in shifted.round())  # type: ignore[return-value]

    def any_colour() -> tuple[int, int, int]:
        names = list(COLOURS) + list(NEUTRALS)
        return tint({**COLOURS, **NEUTRALS}[names[rng.integers(len(names))]])

    def neutral() -> tuple[int, int, int]:
        return tint(list(NEUTRALS.values())[rng.integers(len(NEUTRALS))])

    def alone(half: float, colour: tuple[int, int, int], texture: str | None) -> _Item:
        x, y = (min(max(0.5 + shift(0.15), half), 1 - half) for _ in range(2))
        return _Item(fact.subject, x, y, half, angle(), colour, texture)

    if fact.order == 1:
        texture = TEXTURES[rng.integers(len(TEXTURES))] if rng.random() < 0.4 else None
        return [alone(scale(MEDIUM), any_colour(), texture)]
    if fact.order == 2:
        p = fact.predicate
        if p in COLOURS:
            return [alone(scale(MEDIUM), tint(COLOURS[p]), None)]
        if p in TEXTURES:
            return [alone(scale(MEDIUM), neutral(), p)]
        return [alone(scale(SIZES[p]), neutral(), None)]

    # Two shapes in contrasting colours, so the eye (and the model) can tell them apart.
    c_s = any_colour()
    c_o = any_colour()
    while np.linalg.norm(np.subtract(c_s, c_o)) < 100:
        c_o = any_colour()
    rel = fact.predicate
    if rel == "inside":
        o = _Item(fact.object, 0.5 + shift(0.05), 0.5 + shift(0.05), scale(0.40), angle(), c_o)
        hx, hy, hr = _hollow(fact.object)
        dx, dy = _rotation(o.angle) @ np.array([hx, hy]) * o.half
        # Well within the hollow, and at most half of O's size so that O stays recognisable.
        s_half = min(0.7 * hr, 0.5) * o.half / _radius(fact.subject)
        return [o, _Item(fact.subject, o.x + dx, o.y + dy, s_half, angle(), c_s)]
    if rel == "in front of":  # O drawn first, S overlaps it from a random diagonal
        sx, sy = rng.choice([-1.0, 1.0], 2) * 0.13
        o = _Item(fact.object, 0.5 - sx + shift(0.03), 0.5 - sy + shift(0.03), scale(0.24), angle(), c_o)
        return [o, _Item(fact.subject, 0.5 + sx + shift(0.03), 0.5 + sy + shift(0.03), scale(0.24), angle(), c_s)]
    # Side by side: centres about 0.48 apart along the relation's axis, which leaves a clear
    # gap between shapes of half-extent 0.16 unless jitter is extreme.
    along = {"left of": -1, "right of": 1, "above": -1, "below": 1}[rel]
    a_s, a_o = 0.5 + along * 0.24 + shift(0.03), 0.5 - along * 0.24 + shift(0.03)
    b_s, b_o = 0.5 + shift(0.08), 0.5 + shift(0.08)
    if rel in ("left of", "right of"):
        pos_s, pos_o = (a_s, b_s), (a_o, b_o)
    else:
        pos_s, pos_o = (b_s, a_s), (b_o, a_o)
    return [_Item(fact.subject, *pos_s, scale(0.16), angle(), c_s),
            _Item(fact.object, *pos_o, scale(0.16), angle(), c_o)]


def _distractors(rng: np.random.Generator, items: list[_Item], clutter: float) -> list[_Item]:
    """Small shapes away from the fact's shapes (smaller than any subject, so the subject of
    an <S> image stays the largest shape)."""
    placed = list(items)
    out = []
    for _ in range(rng.binomial(5, clutter)):
        shape = SHAPES[rng.integers(len(SHAPES))]
        half = rng.uniform(0.055, 0.075)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        angle = rng.uniform(0, 2 * math.pi)
        for _try in range(20):
            x, y = rng.uniform(half, 1 - half, 2)
            item = _Item(shape, float(x), float(y), half, angle, colour)  # type: ignore[arg-type]
            if all(math.hypot(p.x - x, p.y - y) > p.reach + item.reach + 0.03 for p in placed):
                placed.append(item)
                out.append(item)
                break
    return out


def _paint(img: Image.Image, rng: np.random.Generator, item: _Item, side: int) -> None:
    # Work in a square box around the shape only: filters and pastes cost per pixel.
    r = item.reach * side + 2 * _SUPERSAMPLE
    x0, y0 = int(item.x * side - r), int(item.y * side - r)
    n = int(2 * r) + 2
    mask = _mask(item.shape, item.x * side - x0, item.y * side - y0, item.half * side, item.angle, n)
    # A thin outline keeps a shape visible on a background of similar colour.
    rgb = np.array(item.colour, float)
    dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 90
    outline = tuple(int(v) for v in (rgb * 0.45 if dark else rgb + (255 - rgb) * 0.5))
    # Dilation by (2 * _SUPERSAMPLE - 1) pixels: a box blur marks every pixel near the shape
    # non-zero, exactly as a max filter would, at a tenth of its cost.
    near = mask.filter(ImageFilter.BoxBlur(_SUPERSAMPLE - 1)).point(_ANY)
    img.paste(outline, (x0, y0, x0 + n, y0 + n), mask=near)
    if item.texture is None:
        img.paste(item.colour, (x0, y0, x0 + n, y0 + n), mask=mask)
    else:
        img.paste(Image.fromarray(_texture(rng, item, side, dark, x0, y0, n), "RGB"), (x0, y0), mask=mask)


def _texture(rng: np.random.Generator, item: _Item, side: int, dark_ink: bool,
             x0: int, y0: int, n: int) -> np.ndarray:
    """The item's colour with a pattern in black or white, for the n x n box at (x0, y0);
    the pattern turns with the shape."""
    period = max(item.half * side * 0.45, 5 * _SUPERSAMPLE)  # at least 5 output pixels
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    xx, yy = xx + (x0 - item.x * side), yy + (y0 - item.y * side)  # relative to the shape's centre
    theta = item.angle + (rng.uniform(0, math.pi) if item.texture == "striped" else 0.0)
    c, s = math.cos(theta), math.sin(theta)
    u = xx * c + yy * s
    v = -xx * s + yy * c
    if item.texture == "striped":
        ink = np.floor(u / (period / 2)) % 2 == 0
    elif item.texture == "checked":
        ink = (np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2 == 0
    else:  # dotted
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        ink = du ** 2 + dv ** 2 < (period * 0.25) ** 2
    out = np.empty((n, n, 3), np.uint8)
    out[:] = item.colour
    out[ink] = (20, 20, 20) if dark_ink else (240, 240, 240)
    return out


def _occlude(img: Image.Image, rng: np.random.Generator, subject: _Item, side: int) -> None:
    """A bar across part of the subject, off its centre so the subject stays recognisable."""
    r = subject.reach * side
    off = rng.uniform(0.3, 0.6) * r
    phi = rng.uniform(0, 2 * math.pi)
    centre = np.array([subject.x * side + off * math.cos(phi), subject.y * side + off * math.sin(phi)])
    length, width = 1.2 * r, 0.3 * r
    direction = phi + math.pi / 2 + rng.uniform(-0.4, 0.4)  # roughly tangent: cuts off an edge
    along = np.array([math.cos(direction), math.sin(direction)])
    across = np.array([-along[1], along[0]])
    corners = [centre + sa * length * along + sb * width / 2 * across for sa, sb in
               ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    ImageDraw.Draw(img).polygon([tuple(p) for p in np.array(corners).tolist()], fill=colour)


# ---------------------------------------------------------------------------- the world

def generate_world(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    facts: int | None = None,
    images_per_fact: int | None = None,
    size: int | None = None,
    test_fraction: float | None = None,
    preset: str = "small",
    clutter: float | None = None,
    noise: float | None = None,
    jitter: float | None = None,
    occlusion: float | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render a shape world into ``out_dir``: ``images/``, ``manifest.jsonl`` and ``world.json``.

    Args:
        out_dir: a new or empty directory; an existing non-empty one is never overwritten.
        seed: non-negative integer; the same seed and arguments give byte-identical files.
        facts, images_per_fact, size, test_fraction, clutter, noise, jitter, occlusion:
            override the preset's values (None keeps the preset's).
        preset: a key of :data:`PRESETS`.
        workers: processes that render images (default ``os.cpu_count()``); does not change
            the output.
        progress: called as ``progress(n_done, n_total)`` as images are written.

    Returns:
        A summary: ``out_dir``, ``facts``, ``facts_per_order`` ({"<S>", "<S,P>", "<S,P,O>"}),
        ``groups`` (facts per group), ``images``, ``train``, ``test``.

    Raises:
        UserError: for a bad option or an ``out_dir`` that is not empty.
    """
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    given = dict(facts=facts, images_per_fact=images_per_fact, size=size, test_fraction=test_fraction,
                 clutter=clutter, noise=noise, jitter=jitter, occlusion=occlusion)
    opts = {k: (PRESETS[preset][k] if v is None else v) for k, v in given.items()}
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_options(seed, opts, workers)
    seed = int(seed)  # numpy integers pass the checks but not json.dumps
    opts.update({k: int(opts[k]) for k in ("facts", "images_per_fact", "size")})
    opts.update({k: float(opts[k]) for k in ("test_fraction", *KNOBS)})
    out = Path(out_dir)
    _check_out_dir(out)

    world_facts = sample_facts(opts["facts"], seed)
    n_img, n_total = opts["images_per_fact"], opts["images_per_fact"] * len(world_facts)
    n_test = min(max(int(opts["test_fraction"] * n_img + 0.5), 1), n_img - 1)
    width = max(6, len(str(n_total - 1)))
    knobs = {k: opts[k] for k in KNOBS}
    logger.info("rendering %d images of %d facts into %s", n_total, len(world_facts), out)

    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        jobs = [(i * n_img + j, f.slots) for i, (f, _) in enumerate(world_facts) for j in range(n_img)]
        _render_all(tmp / "images", seed, opts["size"], knobs, jobs, width, workers, progress)
        rows = []
        for i, (f, group) in enumerate(world_facts):
            for j in range(n_img):
                rows.append({"image": f"images/{i * n_img + j:0{width}d}.png", "subject": f.subject,
                             "predicate": f.predicate, "object": f.object, "group": group,
                             "split": "test" if j >= n_img - n_test else "train"})
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        counts = _counts(world_facts, n_total, n_test * len(world_facts))
        world = {"generator": "factlearn.data.synth", "version": 1, "seed": seed, "preset": preset,
                 **{k: opts[k] for k in ("images_per_fact", "size", "test_fraction")},
                 "knobs": knobs, "counts": counts,  # counts["facts"]: the number of facts
                 "facts": [{"subject": f.subject, "predicate": f.predicate, "object": f.object,
                            "group": g} for f, g in world_facts]}
        (tmp / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d images (%d train, %d test) to %s", n_total, counts["train"], counts["test"], out)
    return {"out_dir": str(out), **counts}


def _check_options(seed: int, opts: dict, workers: int) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

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


def _render_all(images: Path, seed: int, size: int, knobs: dict[str, float],
                jobs: list[tuple[int, tuple]], width: int, workers: int,
                progress: Callable[[int, int], None] | None) -> None:
    total = len(jobs)
    chunk = max(16, math.ceil(total / (workers * 8)))  # several chunks per worker: balance + progress
    chunks = [jobs[i:i + chunk] for i in range(0, total, chunk)]
    done = 0
    if workers == 1 or len(chunks) == 1:
        for part in chunks:
            done += _render_chunk(str(images), seed, size, knobs, part, width)
            if progress:
                progress(done, total)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        futures = [pool.submit(_render_chunk, str(images), seed, size, knobs, part, width) for part in chunks]
        for fut in as_completed(futures):
            done += fut.result()
            if progress:
                progress(done, total)


def _render_chunk(images: str, seed: int, size: int, knobs: dict[str, float],
                  jobs: list[tuple[int, tuple]], width: int) -> int:
    for index, slots in jobs:
        img = render_image(Fact(*slots), seed, index, size, knobs)
        # No metadata and no optimiser pass: the PNG bytes depend on the pixels only.
        img.save(os.path.join(images, f"{index:0{width}d}.png"), format="PNG", optimize=False)
    return len(jobs)
