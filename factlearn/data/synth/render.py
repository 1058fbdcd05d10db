"""One image of the shape world: a fact's shapes laid out, distractors, textures, occlusion, noise.

Difficulty knobs, each in [0, 1]: ``clutter`` (how many small distractor shapes, kept away from
the fact's shapes), ``noise`` (background tint, background texture and pixel noise, slight colour
shifts), ``jitter`` (position, scale and rotation spread), ``occlusion`` (probability of a bar
partly covering the subject).

Image ``i`` draws its randomness from ``default_rng([seed, 1, i])`` alone (and a rendering style
other than ``clean`` from ``default_rng([seed, 2, i])``, see :mod:`.styles`), so any process can
render any image.

The large world's words (preset ``lsc``) are drawn by the same code: its compound subjects through
:mod:`.shapes`, its attributes from the ``LSC_*`` tables (a superset of the shape world's, same
colours), its new textures and relations in branches the shape world never takes, so that the
shape world's images keep their bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ...facts import Fact
from .shapes import draw_mask, hollow, radius, rotation, vertical_extent
from .styles import restyle_background, restyle_image
from .vocabulary import COLOURS, LSC_COLOURS, LSC_SIZES, LSC_TEXTURES, MEDIUM, NEUTRALS, SHAPES, TEXTURES, converse

KNOBS = ("clutter", "noise", "jitter", "occlusion")  # the difficulty knobs (module docstring)

_SUPERSAMPLE = 3  # draw at 3x and downsample: anti-aliased edges without a drawing library
_ANY = [0] + [255] * 255  # lookup table: any non-zero mask value becomes fully set
# Relations drawn as their converse's picture (<a around b> is <b inside a>).
_AS_CONVERSE = frozenset({"around", "behind", "under", "below right of", "below left of"})
# Diagonal relations: where S sits relative to O, as (dx, dy) signs.
_DIAGONALS = {"above left of": (-1, -1), "above right of": (1, -1)}


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
        return self.half * radius(self.shape)


def render_image(fact: Fact, seed: int, index: int, size: int, knobs: dict[str, float],
                 style: str = "clean") -> Image.Image:
    """Render image ``index`` of ``fact``: a ``size`` x ``size`` RGB image.

    The randomness comes only from ``default_rng([seed, 1, index])`` (and, for the style,
    ``default_rng([seed, 2, index])``), so any process can render any image. ``knobs`` maps
    each of ``KNOBS`` to a value in [0, 1]; ``style`` is one of :data:`.styles.STYLES`.
    """
    rng = np.random.default_rng([seed, 1, index])
    style_rng = np.random.default_rng([seed, 2, index])  # a style leaves the scene's draws alone
    side = size * _SUPERSAMPLE
    img = Image.fromarray(restyle_background(style, _background(rng, side, knobs["noise"]), style_rng), "RGB")
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
    return restyle_image(style, img, style_rng)


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
    if fact.order == 2:  # the LSC_* tables hold the shape world's words with the same values
        p = fact.predicate
        if p in LSC_COLOURS:
            return [alone(scale(MEDIUM), tint(LSC_COLOURS[p]), None)]
        if p in LSC_TEXTURES:
            return [alone(scale(MEDIUM), neutral(), p)]
        return [alone(scale(LSC_SIZES[p]), neutral(), None)]
    if fact.predicate in _AS_CONVERSE:
        return _layout(rng, converse(fact), knobs)  # type: ignore[arg-type]

    # Two shapes in contrasting colours, so the eye (and the model) can tell them apart.
    c_s = any_colour()
    c_o = any_colour()
    while np.linalg.norm(np.subtract(c_s, c_o)) < 100:
        c_o = any_colour()
    rel = fact.predicate
    if rel == "inside":
        o = _Item(fact.object, 0.5 + shift(0.05), 0.5 + shift(0.05), scale(0.40), angle(), c_o)
        hx, hy, hr = hollow(fact.object)
        dx, dy = rotation(o.angle) @ np.array([hx, hy]) * o.half
        # Well within the hollow, and at most half of O's size so that O stays recognisable.
        s_half = min(0.7 * hr, 0.5) * o.half / radius(fact.subject)
        return [o, _Item(fact.subject, o.x + dx, o.y + dy, s_half, angle(), c_s)]
    if rel == "in front of":  # O drawn first, S overlaps it from a random diagonal
        sx, sy = rng.choice([-1.0, 1.0], 2) * 0.13
        o = _Item(fact.object, 0.5 - sx + shift(0.03), 0.5 - sy + shift(0.03), scale(0.24), angle(), c_o)
        return [o, _Item(fact.subject, 0.5 + sx + shift(0.03), 0.5 + sy + shift(0.03), scale(0.24), angle(), c_s)]
    if rel == "on top of":  # S rests on O: S's lowest point a pixel into O's highest, no gap
        o = _Item(fact.object, 0.5 + shift(0.05), 0.0, scale(0.2), angle(), c_o)
        s = _Item(fact.subject, 0.5 + shift(0.05), 0.0, scale(0.16), angle(), c_s)
        contact = 0.45 + shift(0.03)
        o.y = contact - o.half * vertical_extent(o.shape, o.angle)[0]
        s.y = contact + 0.01 - s.half * vertical_extent(s.shape, s.angle)[1]
        return [o, s]
    if rel in _DIAGONALS:  # apart along a diagonal, a clear gap as for the side-by-side relations
        dx, dy = _DIAGONALS[rel]
        return [_Item(fact.subject, 0.5 + dx * 0.2 + shift(0.03), 0.5 + dy * 0.2 + shift(0.03), scale(0.15), angle(),
                      c_s),
                _Item(fact.object, 0.5 - dx * 0.2 + shift(0.03), 0.5 - dy * 0.2 + shift(0.03), scale(0.15), angle(),
                      c_o)]
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
    mask = draw_mask(item.shape, item.x * side - x0, item.y * side - y0, item.half * side, item.angle, n)
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
    elif item.texture == "dotted":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        ink = du ** 2 + dv ** 2 < (period * 0.25) ** 2
    else:  # the large world's textures
        ink = _lsc_ink(rng, item.texture, u, v, period)
    out = np.empty((n, n, 3), np.uint8)
    out[:] = item.colour
    out[ink] = (20, 20, 20) if dark_ink else (240, 240, 240)
    return out


def _lsc_ink(rng: np.random.Generator, texture: str | None, u: np.ndarray, v: np.ndarray,
             period: float) -> np.ndarray:
    """Where the large world's ``texture`` puts ink, on the (n, n) coordinates ``u``, ``v`` (pixels
    along and across the shape's axes, from its centre)."""
    if texture == "wavy":  # stripes bent by a sine across them
        return np.floor((u + period * 0.3 * np.sin(2 * np.pi * v / period)) / (period / 2)) % 2 == 0
    if texture == "banded":  # stripes twice as wide as striped's: half as many across a shape
        return np.floor(u / period) % 2 == 0
    if texture == "ringed":  # concentric rings about the shape's centre
        return np.floor(np.hypot(u, v) / (period / 2)) % 2 == 0
    if texture == "grid":  # thin lines along both axes (checked fills whole squares)
        return (u % period < period * 0.25) | (v % period < period * 0.25)
    if texture == "crosshatched":  # thin lines along both diagonals
        a, b = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)
        return (a % (period * 0.7) < period * 0.2) | (b % (period * 0.7) < period * 0.2)
    if texture == "speckled":  # random specks, about a quarter of the cells of a fine grid
        cell = period / 3
        iu, iv = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
        iu, iv = iu - iu.min(), iv - iv.min()
        return rng.random((int(iu.max()) + 1, int(iv.max()) + 1))[iu, iv] < 0.25
    if texture == "two-tone":  # one half inked, split along the shape's axis
        return u > 0
    raise ValueError(f"unknown texture {texture!r}")


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

