"""The geometry of the world's shapes: polygons, their bounding radius and hollow, and masks.

A shape is a list of polygons drawn in order (fills and cuts), centred on its bounding box and
scaled to a half-extent of 1 (coordinates in half-extents, y pointing down). The names are the
:data:`factlearn.data.synth.vocabulary.SHAPES` and ``TOPIC_SHAPES``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
         n: int = 64) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=abs(a1 - a0) < 2 * math.pi)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # (n, 2), y points down


def _regular(n: int, radius: float = 1.0) -> np.ndarray:
    t = -math.pi / 2 + np.arange(n) * 2 * math.pi / n  # first vertex on top
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42)
    inner = inner @ rotation(math.pi / 5).T
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
def radius(name: str) -> float:
    """Bounding radius of shape ``name`` (its farthest point from the centre), in half-extents."""
    return float(max(np.linalg.norm(p, axis=1).max() for fill, p in _shapes()[name] if fill))


@lru_cache(maxsize=None)
def hollow(name: str) -> tuple[float, float, float]:
    """The centre (x, y) and radius of the largest circle inside shape ``name``, in half-extents
    of the unrotated shape: where a subject drawn "inside" it goes. Brute force on a coarse grid,
    once per shape."""
    if name == "ring":  # its contents go in the hole, not in the band
        return 0.0, 0.0, 0.58
    n, half = 61, 27.0  # a margin of background all round, so every shape has outside pixels
    mask = np.asarray(draw_mask(name, n / 2, n / 2, half, 0.0, n), bool)
    ys, xs = np.nonzero(mask)
    oy, ox = np.nonzero(~mask)
    d2 = (xs[:, None] - ox[None]) ** 2 + (ys[:, None] - oy[None]) ** 2  # (inside, outside)
    best = int(d2.min(1).argmax())
    return (float(xs[best] - n / 2) / half, float(ys[best] - n / 2) / half,
            math.sqrt(d2[best].min()) / half)


def draw_mask(name: str, cx: float, cy: float, half: float, angle: float, side: int) -> Image.Image:
    """Shape ``name`` as a ``side`` x ``side`` mask (mode L, 255 inside, 0 outside), centred at
    (cx, cy) with half-extent ``half`` (all in pixels) and turned by ``angle`` radians."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    rot = rotation(angle)
    for fill, pts in _shapes()[name]:
        xy = pts @ rot.T * half + (cx, cy)
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255 if fill else 0)
    return mask

