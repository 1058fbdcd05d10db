"""Safe image decoding, and where a data set's decoded images live.

Images are decoded once, converted to RGB (grayscale, RGBA, palette and 16-bit images all work),
resized to the model's input size and kept as uint8 (N, 3, S, S): decoding PNGs every epoch would
starve the model on two cores.

Where the decoded array lives (:func:`open_images`, which returns a
:class:`~factlearn.data.store.ImageStore` that training and evaluation index batch by batch):

- A store file in a cache folder (:mod:`factlearn.data.store`), memory-mapped read-only, so a
  process's own memory does not grow with the data set and every process and DDP rank of one
  data set shares one copy. The folder is ``cache_dir`` if given, else the environment variable
  ``FACTLEARN_IMAGE_CACHE`` (the experiment code sets it to ``OUT/cache``), else the data
  directory's own ``.factlearn-cache/`` when the caller names the data directory (training and
  evaluation do). That default is what a user expects of a large data set: ``factlearn train`` on
  800,000 images works in bounded memory without a setting, and later runs skip the decoding. It
  lives next to the data it copies (deleted or moved with it; seen at the same path by every
  machine of a multi-machine run, which needs the data there), not in a home folder that may be
  small or per machine.
- Memory, as one array per process: with ``FACTLEARN_IMAGE_CACHE=off``, for callers that name no
  data directory and no cache folder (a handful of query images, unlabeled importance data), and
  when the store cannot be written (a read-only data directory, a full disk: a warning says so).

The store's key covers each file's resolved path, size in bytes and modification time, and the
size, so a changed or replaced image is decoded again into a new store; a store file that cannot be
read is decoded again and rewritten. Old stores are not removed: the folder holds only copies, and
deleting it (or any file in it) is always safe when no run is using it.
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
from .store import DATA_CACHE_DIR, ImageStore, open_or_build

logger = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # refuse decompression bombs (PIL warns at ~89M, errors at 2x that)
MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)
CACHE_ENV = "FACTLEARN_IMAGE_CACHE"
CACHE_OFF = "off"  # FACTLEARN_IMAGE_CACHE=off: no store, the images are decoded into memory
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


def open_images(
    paths: Sequence[str | Path],
    size: int,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
) -> ImageStore:
    """The images decoded once, as a store indexed batch by batch: ``store[idx]`` is a uint8
    tensor (b, 3, size, size), the same pixels wherever they live (see the module docstring).

    Args:
        paths: image files; a missing or unreadable one is a UserError naming it.
        size: side of the square output.
        workers: decoding threads (PIL releases the GIL).
        progress: called with the number of images done, as they are done (all at once when the
            store already exists).
        cache_dir: the store folder; default ``FACTLEARN_IMAGE_CACHE`` (``off``: none).
        data_dir: the data directory of ``paths``, whose ``.factlearn-cache/`` is the store folder
            when neither of the above names one; None: memory then.
        rows: only these positions of ``paths`` are wanted (the test images): the store of all of
            ``paths`` is opened and viewed, so every user of a data set shares one file, while in
            memory only these are decoded.
    Returns:
        An :class:`~factlearn.data.store.ImageStore` of ``len(paths)`` images, or of ``len(rows)``.
    """
    folder = store_folder(cache_dir, data_dir)
    if folder is not None and len(paths):
        shape = (len(paths), 3, size, size)
        decoded = []

        def fill(out: np.ndarray, start: int) -> None:
            decoded.append(len(out))
            _decode_into(out, paths[start : start + len(out)], size, workers, progress)

        store = open_or_build(_cache_file(folder, paths, size), shape, fill)
        if store is not None:
            if not decoded and progress is not None:
                progress(len(paths))
            return store if rows is None else store.take(rows)
    wanted = paths if rows is None else [paths[i] for i in np.asarray(rows, dtype=np.int64).reshape(-1)]
    out = np.empty((len(wanted), 3, size, size), dtype=np.uint8)
    _decode_into(out, wanted, size, workers, progress)
    return ImageStore(out)


def load_images(
    paths: Sequence[str | Path],
    size: int,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """The images as one in-memory tensor (N, 3, size, size) uint8, read from the store when a
    cache folder is set (``cache_dir`` or ``FACTLEARN_IMAGE_CACHE``), else decoded; for image sets
    that fit in memory (unlabeled importance data). Data sets go through :func:`open_images`.
    Arguments as there."""
    return open_images(paths, size, workers, progress, cache_dir).tensor()


def store_folder(cache_dir: str | Path | None = None, data_dir: str | Path | None = None) -> Path | None:
    """The folder of the image stores: ``cache_dir``, else ``FACTLEARN_IMAGE_CACHE`` (``off``: none),
    else ``data_dir/.factlearn-cache``; None: the images are held in memory."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or None
    if chosen is not None:
        return None if str(chosen) == CACHE_OFF else Path(chosen)
    return Path(data_dir) / DATA_CACHE_DIR if data_dir is not None else None


def _decode_into(out: np.ndarray, paths: Sequence[str | Path], size: int, workers: int,
                 progress: Callable[[int], None] | None) -> None:
    """Decode ``paths`` into ``out`` (n, 3, size, size) uint8 (an array, or a slice of a store's map)
    in threads, each image into its own row."""

    def work(i: int) -> None:
        out[i] = load_image(paths[i], size).transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(work, range(len(paths))))


def _cache_file(folder: Path, paths: Sequence[str | Path], size: int) -> Path:
    """The store file of these images at this size: a hash of every file's resolved path, size
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
