"""Rendering styles: the same scenes under another condition, for test-condition-shift experiments.

A style changes how an image looks, never what it shows: the fact, the layout, the colours of the
shapes, the distractors and the occlusion stay those of ``clean`` (they come from the image's own
``default_rng([seed, 1, i])``, drawn from exactly as in ``clean``); a style draws its randomness
from ``default_rng([seed, 2, i])``. So a restyled world has the same facts, fact ids, manifest rows
and splits as the clean world of the same seed and options, and image ``i`` of each shows the same
scene.

* ``clean``: today's pixels, unchanged;
* ``dark``: a dark background (the clean one at a fifth of its light) and dimmer light overall
  (pixels x 0.8), as a photograph at night;
* ``dusk``: the background at 80% of its light, the shapes as in ``clean``: a milder ``dark``;
* ``dim``: the background at 65% of its light, the shapes as in ``clean``: between the two;
* ``blur``: a Gaussian blur of about one pixel at 64 px (scaled with the image side), as an
  out-of-focus camera;
* ``noise``: strong sensor noise (Gaussian, sigma 30) and 2% of the pixels dead or hot;
* ``background``: another background texture, a mosaic of pastel tiles, which the clean world
  (plain, gradient, stripes, blotches) never shows.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from ...errors import UserError

STYLES = ("clean", "dark", "dusk", "dim", "blur", "noise", "background")
DIMMED = {"dark": (0.2, 0.8), "dusk": (0.8, 1.0), "dim": (0.65, 1.0)}  # style -> (the background's light, all pixels' light)


def check_style(name: object) -> str:
    """``name`` if it is one of :data:`STYLES`.

    Raises:
        UserError: naming the unknown style and the known ones.
    """
    if name not in STYLES:
        raise UserError(f"unknown --style {name!r}: use one of {', '.join(STYLES)}")
    return name  # type: ignore[return-value]


def restyle_background(style: str, bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The background (``(side, side, 3)`` uint8) as ``style`` paints it, before any shape."""
    if style in DIMMED:
        return (bg.astype(np.float32) * DIMMED[style][0] + 0.5).astype(np.uint8)
    if style == "background":
        side = bg.shape[0]
        tiles = int(rng.integers(5, 10))  # tiles per side
        light = bg.reshape(-1, 3).mean(0)  # keep the clean background's light, so shapes stand out as much
        mosaic = np.clip(light + rng.uniform(-45, 45, (tiles, tiles, 3)), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(mosaic, "RGB").resize((side, side), Image.Resampling.NEAREST))
    return bg


def restyle_image(style: str, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The finished image (RGB, its final size) as ``style`` shows it."""
    if style in DIMMED:
        return Image.fromarray((np.asarray(img, np.float32) * DIMMED[style][1] + 0.5).astype(np.uint8), "RGB")
    if style == "blur":
        return img.filter(ImageFilter.GaussianBlur(img.width / 64))
    if style == "noise":
        pixels = np.asarray(img, np.float32) + rng.normal(0.0, 30.0, (img.height, img.width, 3))
        dead = rng.random((img.height, img.width)) < 0.02
        pixels[dead] = rng.choice([0.0, 255.0], int(dead.sum()))[:, None]
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img
