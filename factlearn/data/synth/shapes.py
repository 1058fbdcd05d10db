"""The geometry of the world's shapes: polygons, their bounding radius and hollow, and masks.

A shape is a list of polygons drawn in order (fills and cuts), centred on its bounding box and
scaled to a half-extent of 1 (coordinates in half-extents, y pointing down). The names are the
:data:`factlearn.data.synth.vocabulary.SHAPES`, ``TOPIC_SHAPES`` and ``LSC_NEW_SHAPES``, and the
large world's compound subjects ("hollow tall star"): a family stretched by its aspect
(:data:`ASPECT_SCALE`), then decorated (cuts and added bars), then
centred and scaled again (:func:`polygons`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import split_subject

Polygons = list[tuple[bool, np.ndarray]]  # (True, points) fills, (False, points) cuts; points (n, 2)

def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
         n: int = 64) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=abs(a1 - a0) < 2 * math.pi)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # (n, 2), y points down


def _regular(n: int, radius: float = 1.0) -> np.ndarray:
    t = -math.pi / 2 + np.arange(n) * 2 * math.pi / n  # first vertex on top
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner_radius: float = 0.42) -> np.ndarray:
    outer, inner = _regular(points, 1.0), _regular(points, inner_radius)
    inner = inner @ rotation(math.pi / points).T
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


def _gear(teeth: int = 8) -> np.ndarray:
    step = 2 * math.pi / teeth
    pts = []
    for i in range(teeth):  # root, flank up, tooth top, flank down: a tooth over half of each step
        a = i * step
        pts += [(0.72, a), (1.0, a + 0.08 * step), (1.0, a + 0.42 * step), (0.72, a + 0.5 * step)]
    return np.array([(r * math.cos(a), r * math.sin(a)) for r, a in pts])


def _petals(n: int, dist: float, rx: float, ry: float) -> list[np.ndarray]:
    """``n`` ellipses around the centre, each pointing outwards."""
    out = []
    for i in range(n):
        rot = rotation(-math.pi / 2 + i * 2 * math.pi / n)
        out.append(_arc(dist, 0, rx, ry, n=32) @ rot.T)
    return out


def _bars(n: int, length: float, half_width: float, at: float = 0.0) -> list[np.ndarray]:
    """``n`` rectangles across the centre line at distance ``at`` (0: bars through the centre)."""
    bar = np.array([[at - half_width, -length], [at + half_width, -length],
                    [at + half_width, length], [at - half_width, length]])
    return [bar @ rotation(i * math.pi / n).T for i in range(n)]


def _rays(n: int, r0: float, r1: float, half_angle: float) -> list[np.ndarray]:
    out = []
    for i in range(n):
        a = -math.pi / 2 + i * 2 * math.pi / n
        out.append(np.array([[r0 * math.cos(a - half_angle), r0 * math.sin(a - half_angle)],
                             [r1 * math.cos(a), r1 * math.sin(a)],
                             [r0 * math.cos(a + half_angle), r0 * math.sin(a + half_angle)]]))
    return out


def rotation(angle: float) -> np.ndarray:
    """The (2, 2) matrix that turns points (as rows, ``pts @ R.T``) by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _lens() -> np.ndarray:
    """Two arcs of radius 1.25 whose centres are 0.75 above and below the middle: pointed ends at x = +-1."""
    a = math.atan2(0.75, 1.0)  # where the arcs meet, seen from the lower arc's centre
    upper = _arc(0, 0.75, 1.25, 1.25, -math.pi + a, -a, 32)
    return np.vstack([upper, upper[::-1] * (1, -1)])


def _arch() -> np.ndarray:
    """An upside-down U with a round top: outer arc over the top, down a leg, inner arc back."""
    outer = _arc(0, 0, 1, 1, math.pi, 2 * math.pi, 32)
    inner = _arc(0, 0, 0.45, 0.45, 2 * math.pi, math.pi, 24)
    return np.vstack([[[-1, 1]], outer, [[1, 1], [0.45, 1]], inner, [[-0.45, 1]]])


def _lobes(n: int) -> list[np.ndarray]:
    """``n`` overlapping discs around the centre (a trefoil, a quatrefoil)."""
    return [_arc(0.5 * math.cos(a), 0.5 * math.sin(a), 0.52, 0.52, n=48)
            for a in -math.pi / 2 + np.arange(n) * 2 * math.pi / n]


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
        # The topic shapes: ornate, with many points or petals around a centre.
        "gear": [(True, _gear()), (False, _arc(0, 0, 0.28, 0.28))],
        "flower": [(True, p) for p in _petals(6, 0.55, 0.45, 0.26)] + [(True, _arc(0, 0, 0.35, 0.35))],
        "sun": [(True, _arc(0, 0, 0.55, 0.55))] + [(True, r) for r in _rays(10, 0.68, 1.0, 0.16)],
        "snowflake": [(True, b) for b in _bars(3, 1.0, 0.13)] + [(True, _regular(6, 0.3))]
                     + [(True, _bars(1, 0.24, 0.09, at=0.68)[0] @ rotation(math.pi / 6 + i * math.pi / 3).T)
                        for i in range(6)],  # a crossbar on each arm
        # The large world's new families (vocabulary.LSC_NEW_SHAPES).
        "quarter circle": [(True, np.vstack([[[0, 0]], _arc(0, 0, 1, 1, -math.pi / 2, 0, 32)]))],
        "pie": [(True, np.vstack([[[0, 0]], _arc(0, 0, 1, 1, math.pi / 4, 7 * math.pi / 4, 56)]))],
        "lens": [(True, _lens())],
        "arch": [(True, _arch())],
        "trefoil": [(True, p) for p in _lobes(3)],
        "quatrefoil": [(True, p) for p in _lobes(4)],
        "heptagon": [(True, _regular(7))],
        "octagon": [(True, _regular(8))],
        "four-point star": [(True, _star(4, 0.38))],
        "six-point star": [(True, _star(6, 0.55))],
        "eight-point star": [(True, _star(8, 0.62))],
        "trapezoid": [(True, np.array([[-0.55, -0.6], [0.55, -0.6], [1, 0.6], [-1, 0.6]]))],
        "parallelogram": [(True, np.array([[-1, -0.6], [0.55, -0.6], [1, 0.6], [-0.55, 0.6]]))],
        "kite": [(True, np.array([[0, -1], [0.62, -0.35], [0, 1], [-0.62, -0.35]]))],
        "chevron": [(True, np.array([[-1, -0.5], [0, 0.3], [1, -0.5], [1, 0.1], [0, 0.9], [-1, 0.1]]))],
        "lightning bolt": [(True, np.array([[0.1, -1], [-0.55, 0.15], [-0.05, 0.15], [-0.25, 1], [0.55, -0.2],
                                            [0.05, -0.2], [0.35, -1]]))],
        "shield": [(True, np.array([[-1, -1], [1, -1], [1, 0.1], [0.5, 0.7], [0, 1], [-0.5, 0.7], [-1, 0.1]]))],
        "house": [(True, np.array([[0, -1], [0.8, -0.3], [0.8, 1], [-0.8, 1], [-0.8, -0.3]]))],
        "tag": [(True, np.array([[-1, -0.5], [0.4, -0.5], [1, 0], [0.4, 0.5], [-1, 0.5]])),
                (False, _arc(0.45, 0, 0.12, 0.12, n=24))],
        "bowtie": [(True, np.array([[-1, -0.7], [0, -0.1], [1, -0.7], [1, 0.7], [0, 0.1], [-1, 0.7]]))],
        "hourglass": [(True, np.array([[-0.7, -1], [0.7, -1], [0.1, 0], [0.7, 1], [-0.7, 1], [-0.1, 0]]))],
        "t shape": [(True, np.array([[-1, -1], [1, -1], [1, -0.55], [0.22, -0.55], [0.22, 1], [-0.22, 1],
                                     [-0.22, -0.55], [-1, -0.55]]))],
        "l shape": [(True, np.array([[-0.6, -1], [-0.15, -1], [-0.15, 0.55], [0.6, 0.55], [0.6, 1], [-0.6, 1]]))],
        "u shape": [(True, np.array([[-1, -1], [-0.45, -1], [-0.45, 0.45], [0.45, 0.45], [0.45, -1], [1, -1],
                                     [1, 1], [-1, 1]]))],
        "h shape": [(True, np.array([[-1, -1], [-0.5, -1], [-0.5, -0.2], [0.5, -0.2], [0.5, -1], [1, -1], [1, 1],
                                     [0.5, 1], [0.5, 0.2], [-0.5, 0.2], [-0.5, 1], [-1, 1]]))],
        "x shape": [(True, b @ rotation(math.pi / 4).T) for b in _bars(2, 1.0, 0.22)],
        "right triangle": [(True, np.array([[-1, -1], [1, 1], [-1, 1]], float))],
    }


# The large world's modifiers of a family (vocabulary.ASPECTS, DECORATIONS), in the family's
# half-extents: an aspect squeezes the family, a decoration then adds its polygons after the
# family's (_decorate).
ASPECT_SCALE = {"": (1.0, 1.0), "tall": (0.62, 1.0), "wide": (1.0, 0.62)}
_HOLLOW = 0.55  # a hollow family's hole: the family shrunk to this scale
_BAR = np.array([[-2, -0.09], [2, -0.09], [2, 0.09], [-2, 0.09]])  # a slit across the whole shape


def _decorate(polys: Polygons, decoration: str) -> Polygons:
    """``polys`` (a stretched family) with ``decoration``'s cuts or additions drawn after them. The
    notch and the stem go where the shape's top and bottom are, wherever its aspect put them."""
    pts = np.vstack([p for fill, p in polys if fill])
    top, bottom = pts[:, 1].min(), pts[:, 1].max()
    x_top = float(pts[pts[:, 1] <= top + 0.05, 0].mean())  # the middle of the top edge (or the apex)
    added = {
        "": [],
        "hollow": [(False, p * _HOLLOW) for fill, p in polys if fill],
        "pierced": [(False, _arc(0, 0, 0.25, 0.25, n=32))],
        "split": [(False, _BAR)],
        "slashed": [(False, _BAR @ rotation(math.pi / 4).T)],
        "notched": [(False, np.array([[x_top - 0.4, top - 0.1], [x_top + 0.4, top - 0.1], [x_top, top + 0.6]]))],
        "halved": [(False, np.array([[0, -2], [2, -2], [2, 2], [0, 2]], float))],  # the left half stays
        "barred": [(True, np.array([[-1.3, -0.1], [1.3, -0.1], [1.3, 0.1], [-1.3, 0.1]]))],
        "stemmed": [(True, np.array([[-0.1, bottom - 0.3], [0.1, bottom - 0.3], [0.1, bottom + 0.6],
                                     [-0.1, bottom + 0.6]]))],
    }
    return polys + added[decoration]


def _normalised(polys: Polygons) -> tuple[Polygons, np.ndarray, float]:
    """``polys`` centred on the bounding box of their fills and scaled to a half-extent of 1, with
    that centre and half-extent."""
    pts = np.vstack([p for fill, p in polys if fill])
    lo, hi = pts.min(0), pts.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    return [(fill, (p - centre) / half) for fill, p in polys], centre, half


@lru_cache(maxsize=None)
def _shapes() -> dict[str, Polygons]:
    """The shapes centred on their bounding box and scaled to a half-extent of 1."""
    return {name: _normalised(polys)[0] for name, polys in _raw_shapes().items()}


@lru_cache(maxsize=None)
def _compound(name: str) -> tuple[Polygons, np.ndarray, float]:
    """A large-world subject's polygons (normalised), and the centre and half-extent that took
    the stretched and decorated family to them."""
    decoration, aspect, family = split_subject(name)
    scale = np.array(ASPECT_SCALE[aspect])
    return _normalised(_decorate([(fill, p * scale) for fill, p in _shapes()[family]], decoration))


def polygons(name: str) -> Polygons:
    """Shape ``name`` (a shape or a large-world subject) as polygons drawn in order, centred and
    scaled to a half-extent of 1 (module docstring).

    Raises:
        KeyError: for a name that is neither.
    """
    shapes = _shapes()
    return shapes[name] if name in shapes else _compound(name)[0]


@lru_cache(maxsize=None)
def radius(name: str) -> float:
    """Bounding radius of shape ``name`` (its farthest point from the centre), in half-extents."""
    return float(max(np.linalg.norm(p, axis=1).max() for fill, p in polygons(name) if fill))


@lru_cache(maxsize=None)
def hollow(name: str) -> tuple[float, float, float]:
    """The centre (x, y) and radius of the largest circle inside shape ``name``, in half-extents
    of the unrotated shape: where a subject drawn "inside" it goes. Brute force on a coarse grid,
    once per shape; a large-world subject's is its family's, stretched and moved as the family was
    (the circle squeezed by an aspect still holds a circle of the smaller scale)."""
    if name == "ring":  # its contents go in the hole, not in the band
        return 0.0, 0.0, 0.58
    if name not in _shapes():
        _, aspect, family = split_subject(name)
        hx, hy, hr = hollow(family)
        (sx, sy), (_, centre, half) = ASPECT_SCALE[aspect], _compound(name)
        return (sx * hx - centre[0]) / half, (sy * hy - centre[1]) / half, min(sx, sy) * hr / half
    n, half = 61, 27.0  # a margin of background all round, so every shape has outside pixels
    mask = np.asarray(draw_mask(name, n / 2, n / 2, half, 0.0, n), bool)
    ys, xs = np.nonzero(mask)
    oy, ox = np.nonzero(~mask)
    d2 = (xs[:, None] - ox[None]) ** 2 + (ys[:, None] - oy[None]) ** 2  # (inside, outside)
    best = int(d2.min(1).argmax())
    return (float(xs[best] - n / 2) / half, float(ys[best] - n / 2) / half,
            math.sqrt(d2[best].min()) / half)


def vertical_extent(name: str, angle: float) -> tuple[float, float]:
    """The highest and lowest y (negative up) of shape ``name`` turned by ``angle`` radians, in
    half-extents from its centre: where a shape resting on it, or on which it rests, touches."""
    pts = np.vstack([p for fill, p in polygons(name) if fill]) @ rotation(angle).T
    return float(pts[:, 1].min()), float(pts[:, 1].max())


def draw_mask(name: str, cx: float, cy: float, half: float, angle: float, side: int) -> Image.Image:
    """Shape ``name`` as a ``side`` x ``side`` mask (mode L, 255 inside, 0 outside), centred at
    (cx, cy) with half-extent ``half`` (all in pixels) and turned by ``angle`` radians."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    rot = rotation(angle)
    for fill, pts in polygons(name):
        xy = pts @ rot.T * half + (cx, cy)
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255 if fill else 0)
    return mask

