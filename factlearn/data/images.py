"""Safe image decoding and an in-memory image store.

Images are decoded once, converted to RGB (grayscale, RGBA, palette and 16-bit images all work),
resized to the model's input size and kept as uint8 tensors: the fact worlds are small enough to
fit in memory, and decoding PNGs every epoch would starve the model on two cores.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

logger = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # refuse decompression bombs (PIL warns at ~89M, errors at 2x that)
MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one image to a (size, size, 3) uint8 array, or raise UserError naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise UserError(
                        f"image {path} has {img.width}x{img.height} pixels, over the limit of {MAX_PIXELS}"
                    )
                img = _to_rgb(img)
                img = img.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.uint8).copy()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: rescale to 8 bits by the image's own range.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_images(
    paths: Sequence[str | Path], size: int, workers: int = 4, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Decode many images in threads (PIL releases the GIL); returns (N, 3, size, size) uint8."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = torch.from_numpy(load_image(paths[i], size)).permute(2, 0, 1)
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(work, range(len(paths))))
    return out


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32, the one preprocessing for train, eval and query."""
    x = images.float().div_(255.0)
    return (x - MEAN.to(x.device)) / STD.to(x.device)
