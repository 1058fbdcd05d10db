"""The decoded-image store: a data set's images as one memory-mapped ``.npy`` file.

A data set of 814,000 images at 64 px is about 10 GB of uint8 pixels: too much to decode into the
memory of every process (every DDP rank, every run of a sweep). The store holds them once on disk,
as a plain ``.npy`` array (N, 3, S, S) uint8, and every process maps it read-only
(``np.load(..., mmap_mode="r")``): a batch reads only its own images, and the pages the kernel
keeps are shared by all the processes that map the file and can be evicted under memory pressure,
so a process's private memory does not grow with the data set.

The file is written once, by :func:`build_store`, chunk by chunk straight into a memory map of a
temporary file next to it (:func:`factlearn.io.atomic_path`: the whole array is never in memory, and
a reader sees the finished file or none). Processes that open a missing store at the same time wait
for one another (a lock file next to the store, ``NAME.lock``), so the first builds it and the
others map its result. A store that cannot be read (corrupt, truncated, of another shape) is built
again. The file name is the caller's key (:func:`factlearn.data.images.open_images` hashes every
image's path, size and modification time): nothing here knows how images are decoded.

:class:`ImageStore` is what callers index: ``store[idx]`` is a (b, 3, S, S) uint8 tensor of its own
memory, whether the array behind it is mapped or an in-memory one (no store configured, or a
folder that cannot be written).
"""

from __future__ import annotations

import errno
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import torch

from ..io import atomic_path, remove_stale_temporaries

logger = logging.getLogger(__name__)

DATA_CACHE_DIR = ".factlearn-cache"  # the default store folder, inside the data directory
BUILD_CHUNK = 4096  # images decoded between two flushes of the map (50 MB at 64 px)

# fill(out, start): decode images start .. start + len(out) - 1 into out (n, 3, S, S) uint8.
Fill = Callable[[np.ndarray, int], None]
Index = Union[int, slice, np.ndarray, torch.Tensor, list]


class ImageStore:
    """N images (N, 3, S, S) uint8, indexed like a tensor one batch at a time.

    ``store[idx]`` (an int, a slice, an int or bool array or tensor) is a uint8 tensor (b, 3, S, S)
    equal to indexing the whole decoded tensor, in memory the caller owns: a read-only map never
    reaches torch (``torch.from_numpy`` of it would warn, and writing to it would fault).

    Args:
        array: (N, 3, S, S) uint8: a read-only ``np.memmap`` (:func:`open_store`) or an in-memory
            array.
        rows: when given, the store is these rows of ``array`` (:meth:`take`), in this order.
        path: the store file the array maps, None for one in memory.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None, path: Path | None = None):
        if array.ndim != 4 or array.shape[1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (N, 3, S, S), got {array.dtype} {array.shape}")
        self.array, self.rows, self.path = array, rows, path

    @property
    def mapped(self) -> bool:
        """Whether the images are memory-mapped from a store file (else held in memory)."""
        return isinstance(self.array, np.memmap)

    def __len__(self) -> int:
        return len(self.array) if self.rows is None else len(self.rows)

    def __getitem__(self, index: Index) -> torch.Tensor:
        key = _numpy_index(index)
        batch = self.array[key if self.rows is None else self.rows[key]]
        # A slice or an int is a view of the array (of the read-only map): copy it. Fancy indexing
        # has already copied, and is not copied twice.
        if np.may_share_memory(batch, self.array):
            batch = batch.copy()
        return torch.from_numpy(np.ascontiguousarray(batch))

    def take(self, rows: Index) -> ImageStore:
        """These rows (positions, or a bool mask) of the store as a store of their own: a view,
        nothing is read until it is indexed (the test images of a session, for evaluation)."""
        key = _numpy_index(rows)
        if isinstance(key, np.ndarray) and key.dtype == bool:
            key = np.flatnonzero(key)
        base = np.arange(len(self.array)) if self.rows is None else self.rows
        return ImageStore(self.array, np.asarray(base[key], dtype=np.int64).reshape(-1), self.path)

    def tensor(self) -> torch.Tensor:
        """All the images as one in-memory tensor (N, 3, S, S): a copy of a mapped store, the array
        itself of an in-memory one (for :func:`factlearn.data.images.load_images`)."""
        if self.rows is None and not self.mapped:
            return torch.from_numpy(self.array)
        return self[:]


def _numpy_index(index: Index) -> int | slice | np.ndarray:
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    if isinstance(index, (list, tuple)):
        index = np.asarray(index)
    return index


def open_store(path: str | Path, shape: tuple[int, ...]) -> ImageStore:
    """Map the store file ``path`` read-only.

    Raises:
        FileNotFoundError: there is none.
        ValueError: it is not a uint8 ``.npy`` array of ``shape`` (corrupt, truncated, another
            data set's), with the reason.
    """
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # (N, 3, S, S) np.memmap
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # not an .npy file, or shorter than its header says
        raise ValueError(str(exc) or type(exc).__name__) from None
    if not isinstance(array, np.memmap) or array.shape != tuple(shape) or array.dtype != np.uint8:
        raise ValueError(f"it holds {array.dtype} {array.shape}, not uint8 {tuple(shape)}")
    return ImageStore(array, path=path)


def build_store(path: str | Path, shape: tuple[int, ...], fill: Fill, chunk: int = BUILD_CHUNK) -> None:
    """Write the store file ``path`` (uint8 ``shape``) atomically, ``chunk`` images at a time.

    ``fill(out, start)`` decodes images ``start ..`` into ``out``, a slice of a memory map of the
    temporary file, so no more than a chunk's pages wait to be written at a time. The disk space is
    reserved first: a full disk is an OSError here, not a SIGBUS while writing through the map.
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
        _reserve(tmp)
        for start in range(0, shape[0], chunk):
            fill(out[start : start + chunk], start)
            out.flush()  # msync: these pages reach the file before the next chunk's are written
        del out  # unmap before atomic_path fsyncs and renames


def _reserve(path: Path) -> None:
    """Allocate the file's blocks (a sparse file would fault when written through a map on a
    full disk); a file system that cannot reserve space is left as it is."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


@contextmanager
def build_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of the store ``path`` (``NAME.lock`` next to it, created if missing): the
    processes that find the store missing build it one at a time (DDP ranks, runs of a sweep).
    Where there are no file locks (Windows) each builds its own and the last rename wins.

    Raises:
        OSError: the folder cannot be written (read-only, a file in its place).
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    new_lock = not lock.exists()
    try:
        with open(lock, "ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            yield
    except BaseException:
        # A build that failed (a bad image: a UserError) leaves the data directory as it found it:
        # nothing of a failed command stays behind (the lock file and the folder, if this call made them).
        if new_lock:
            lock.unlink(missing_ok=True)
        if created:
            try:
                path.parent.rmdir()
            except OSError:  # not empty: another process's files
                pass
        raise


def open_or_build(path: str | Path, shape: tuple[int, ...], fill: Fill) -> ImageStore | None:
    """The store ``path`` mapped, built first (:func:`build_store`) when it is missing or cannot
    be read (with a warning).

    Returns:
        The store, or None when it cannot be built here (the folder is read-only, the disk full):
        a warning says so, and the caller holds the images in memory instead.
    """
    path = Path(path)
    store, problem = _try_open(path, shape)
    if store is not None:  # the common case: no lock needed, and a read-only folder works
        return store
    try:
        with build_lock(path):
            store, problem = _try_open(path, shape)  # built by another process while this one waited?
            if store is not None:
                return store
            if problem is not None:
                logger.warning("image cache %s is unreadable (%s): decoding again", path, problem)
                problem = None  # told
            remove_stale_temporaries(path.parent, name=path.name)  # a killed build's temporary file
            build_store(path, shape, fill)
            logger.info("decoded %d images into the image cache %s", shape[0], path)
        return open_store(path, shape)
    except OSError as exc:
        if problem is not None:
            logger.warning("image cache %s is unreadable (%s)", path, problem)
        logger.warning("cannot write the image cache %s: %s; holding the images in memory instead", path, exc)
        return None


def _try_open(path: Path, shape: tuple[int, ...]) -> tuple[ImageStore | None, str | None]:
    # (the mapped store, None), or (None, why it cannot be used; None when it is missing)
    try:
        return open_store(path, shape), None
    except FileNotFoundError:
        return None, None
    except ValueError as exc:
        return None, str(exc)
