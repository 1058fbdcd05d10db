"""Safe image decoding and an in-memory image store.

Images are decoded once, converted to RGB (grayscale, RGBA, palette and 16-bit images all work),
resized to the model's input size and kept as uint8 tensors: the fact worlds are small enough to
fit in memory, and decoding PNGs every epoch would starve the model on two cores.

Decoding a world still takes a while in every process that loads it (docs/performance.md has
the figures), which adds up over many runs of one data set (a lambda
sweep, a reproduction). With a cache folder (``load_images(cache_dir=...)`` or the environment
variable ``FACTLEARN_IMAGE_CACHE``) the decoded array is written there once as ``.npy`` and read
back by later calls with the same files and size. The key covers each file's resolved path, size in
bytes and modification time, so a changed or replaced image is decoded again; a cache file that
cannot be read is decoded again and rewritten, and one that cannot be written is only a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..io import atomic_path

logger = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # refuse decompression bombs (PIL warns at ~89M, errors at 2x that)
MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)
CACHE_ENV = "FACTLEARN_IMAGE_CACHE"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what a folder of images holds
_CACHE_FORMAT = 1  # part of the key: bump when decoding changes what it returns


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one image to a (size, size, 3) uint8 array, or raise UserError naming the file."""
    path = Path(path)
    try:
        return decode_image(path, size, f"image {path}")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None


def decode_image(source: str | Path | BinaryIO, size: int, where: str) -> np.ndarray:
    """Decode an image file or binary stream (an upload) to a (size, size, 3) uint8 array.

    The pixel cap is checked on the header, before any pixel is decoded (decompression bombs);
    an unreadable image is a UserError naming ``where``. A missing file raises FileNotFoundError
    for the caller to name.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:  # reads the header only
                return pil_to_array(img, size, where)
    except (UserError, FileNotFoundError):
        raise
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {where}: not an image (no format PIL reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read {where}: {exc}") from None


def pil_to_array(img: Image.Image, size: int, where: str = "image") -> np.ndarray:
    """A decoded PIL image -> (size, size, 3) uint8: the conversion :func:`load_image` applies to a
    file (pixel cap, alpha composited on white, 16-bit rescaled), so a PIL image and the same file
    embed identically."""
    if img.width * img.height > MAX_PIXELS:
        raise UserError(f"{where} has {img.width}x{img.height} pixels, over the limit of {MAX_PIXELS}")
    img = to_rgb(img).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()


def read_images(paths: Sequence[str | Path], size: int) -> torch.Tensor:
    """Image files -> (N, 3, size, size) uint8, decoded in order; an unreadable one is a UserError
    naming it (for a handful of query images; data sets go through :func:`load_images`)."""
    if not paths:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.stack([torch.from_numpy(load_image(p, size)).permute(2, 0, 1) for p in paths])


def expand_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted by name)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images in folder {p}")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"image not found: {p}")
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit grayscale rescaled by its own range, transparency composited
    on white."""
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
    paths: Sequence[str | Path],
    size: int,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Decode many images in threads (PIL releases the GIL); returns (N, 3, size, size) uint8.

    Args:
        paths: image files; a missing or unreadable one is a UserError naming it.
        size: side of the square output.
        workers: decoding threads.
        progress: called with the number of images done, as they are done.
        cache_dir: folder of decoded arrays (see the module docstring); default the environment
            variable ``FACTLEARN_IMAGE_CACHE``, and no cache when neither is set.
    """
    cache_dir = cache_dir or os.environ.get(CACHE_ENV) or None
    cached = _cache_file(Path(cache_dir), paths, size) if cache_dir and len(paths) else None
    if cached is not None and cached.is_file():
        try:
            arr = np.load(cached, allow_pickle=False)
            if arr.shape == (len(paths), 3, size, size) and arr.dtype == np.uint8:
                if progress is not None:
                    progress(len(paths))
                return torch.from_numpy(arr)
            logger.warning("image cache %s holds %s %s, not %d images: decoding again", cached, arr.shape, arr.dtype, len(paths))
        except (OSError, ValueError) as exc:
            logger.warning("image cache %s is unreadable (%s): decoding again", cached, exc)
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = torch.from_numpy(load_image(paths[i], size)).permute(2, 0, 1)
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(work, range(len(paths))))
    if cached is not None:
        try:
            with atomic_path(cached) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, out.numpy(), allow_pickle=False)
        except OSError as exc:
            logger.warning("cannot write the image cache %s: %s", cached, exc)
    return out


def _cache_file(folder: Path, paths: Sequence[str | Path], size: int) -> Path:
    """The cache file of these images at this size: a hash of every file's resolved path, size
    in bytes and modification time (a missing file is decoded, and reported, as usual)."""
    h = hashlib.sha256(f"factlearn-images/{_CACHE_FORMAT}/{size}/{len(paths)}".encode())
    for p in paths:
        p = Path(p).resolve()
        try:
            st = p.stat()
            h.update(f"\n{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"\n{p}\0missing".encode())
    return folder / f"images-{size}px-{len(paths)}-{h.hexdigest()[:24]}.npy"


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32, the one preprocessing for train, eval and query.

    The result is channels-last in memory (indexing is (B, 3, H, W) as usual): oneDNN (CPU) and
    cuDNN convolutions run faster on it, and it carries through the ResNet backbone (the speed-up
    measured when this was introduced is in docs/performance.md).
    """
    x = images.float().div_(255.0)
    return ((x - MEAN.to(x.device)) / STD.to(x.device)).contiguous(memory_format=torch.channels_last)
