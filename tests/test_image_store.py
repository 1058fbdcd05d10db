"""The memory-mapped image store (factlearn.data.store, factlearn.data.images.open_images): the same
pixels as decoding, training bit-identical to the in-memory path, rebuilt when an image changes or
the file is corrupt, memory in a read-only data directory, and memory that does not grow with epochs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from factlearn.config import load_config
from factlearn.data import images as images_mod
from factlearn.data import store as store_mod
from factlearn.data.images import CACHE_ENV, load_image, load_images, open_images, to_model_input
from factlearn.data.manifest import load_dataset
from factlearn.data.store import DATA_CACHE_DIR, ImageStore, build_store, open_store
from factlearn.training import train

SIZE = 32  # tiny.yaml's image_size


@pytest.fixture
def world(tmp_path, tiny_world) -> Path:
    """A copy of the tiny world (whose store this test may change), without a store yet."""
    out = tmp_path / "world"
    shutil.copytree(tiny_world, out, ignore=shutil.ignore_patterns(DATA_CACHE_DIR))
    return out


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)  # a developer's own setting must not choose the folder


def paths_of(world: Path) -> list[Path]:
    return [r.image for r in load_dataset(world).records]


def decode_count(monkeypatch) -> list[int]:
    """Count the images decoded from now on (one entry per image)."""
    calls, real = [], images_mod.load_image

    def counting(path, size):
        calls.append(1)
        return real(path, size)

    monkeypatch.setattr(images_mod, "load_image", counting)
    return calls


def test_store_holds_the_decoded_pixels_memory_mapped(world, monkeypatch):
    paths = paths_of(world)
    store = open_images(paths, SIZE, data_dir=world)
    (file,) = (world / DATA_CACHE_DIR).glob("*.npy")
    assert store.mapped and isinstance(store.array, np.memmap) and store.path == file
    assert not store.array.flags.writeable  # opened read-only
    monkeypatch.setenv(CACHE_ENV, "off")
    memory = open_images(paths, SIZE, data_dir=world)  # today's path: decoded into memory
    assert not memory.mapped and len(memory) == len(store) == len(paths)
    everything = store[np.arange(len(paths))]
    assert everything.dtype == torch.uint8 and everything.shape == (len(paths), 3, SIZE, SIZE)
    assert torch.equal(everything, memory.tensor()) and torch.equal(store.tensor(), everything)
    for i, p in enumerate(paths):  # every image, against decoding it alone
        assert torch.equal(store[i], torch.from_numpy(load_image(p, SIZE)).permute(2, 0, 1))
    # every kind of index a caller uses, as on the decoded tensor; the batches are the caller's
    idx = np.array([5, 0, 17, 5])
    mask = np.arange(len(paths)) % 5 == 0
    for key in (idx, torch.from_numpy(idx), list(idx), slice(3, 11), slice(2, None, 7), mask, torch.from_numpy(mask)):
        batch = store[key]
        assert torch.equal(batch, everything[key]) and batch.is_contiguous()
        batch += 1  # writable, and not the store's (nor the map's) memory
    assert torch.equal(store[np.arange(len(paths))], everything)
    view = store.take(np.arange(len(paths))[::3]).take([4, 1])  # views of views: the test images
    assert len(view) == 2 and torch.equal(view[:], everything[[12, 3]])
    assert torch.equal(store.take(np.arange(len(paths)) % 2 == 1)[0:2], everything[[1, 3]])  # a bool mask


def test_second_open_maps_the_store_without_decoding(world, monkeypatch, tmp_path):
    paths = paths_of(world)
    first = open_images(paths, SIZE, data_dir=world)
    calls = decode_count(monkeypatch)
    done = []
    again = open_images(paths, SIZE, data_dir=world, progress=done.append)
    assert calls == [] and sum(done) == len(paths) and again.mapped
    assert torch.equal(again[:], first[:])
    # load_images, the in-memory API, reads the same file when the cache folder is set
    assert torch.equal(load_images(paths, SIZE, cache_dir=world / DATA_CACHE_DIR), first[:]) and calls == []
    # FACTLEARN_IMAGE_CACHE chooses the folder over the data directory's
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    elsewhere = open_images(paths, SIZE, data_dir=world)
    assert elsewhere.path.parent == tmp_path / "elsewhere" and len(calls) == len(paths)
    # and without a data directory, no cache folder and the default left: memory
    monkeypatch.delenv(CACHE_ENV)
    assert not open_images(paths, SIZE).mapped


def test_rows_view_the_whole_store_or_decode_only_them(world, monkeypatch):
    paths, rows = paths_of(world), np.array([9, 2, 30])
    want = open_images(paths, SIZE)[rows]
    viewed = open_images(paths, SIZE, data_dir=world, rows=rows)
    assert viewed.mapped and len(viewed) == 3 and torch.equal(viewed[:], want)
    assert viewed.array.shape[0] == len(paths)  # the data set's one store, shared with training
    monkeypatch.setenv(CACHE_ENV, "off")
    calls = decode_count(monkeypatch)
    in_memory = open_images(paths, SIZE, data_dir=world, rows=rows)
    assert torch.equal(in_memory[:], want) and len(calls) == 3


def test_a_changed_image_rebuilds_the_store(world):
    paths = paths_of(world)
    before = open_images(paths, SIZE, data_dir=world)
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(paths[4])
    st = paths[4].stat()
    os.utime(paths[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = open_images(paths, SIZE, data_dir=world)
    assert after.path != before.path and len(list((world / DATA_CACHE_DIR).glob("*.npy"))) == 2
    assert int(after[4].max()) == 0 and torch.equal(after[[0, 5]], before[[0, 5]])
    assert int(before[4].max()) > 0  # the old file is left whole for whoever still maps it


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other shape"])
def test_a_corrupt_store_is_rebuilt_with_a_warning(world, caplog, damage):
    paths = paths_of(world)
    want = open_images(paths, SIZE, data_dir=world)[:]
    (file,) = (world / DATA_CACHE_DIR).glob("*.npy")
    if damage == "garbage":
        file.write_bytes(b"not an array")
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:
        np.save(file, np.zeros((3, 3, SIZE, SIZE), dtype=np.uint8))
    got = open_images(paths, SIZE, data_dir=world)
    assert got.mapped and torch.equal(got[:], want)
    assert "unreadable" in caplog.text and "decoding again" in caplog.text
    assert torch.equal(torch.from_numpy(np.load(file)), want)  # rewritten whole
    assert open_store(file, want.shape).mapped


def test_a_read_only_data_directory_holds_the_images_in_memory(world, caplog, monkeypatch):
    paths = paths_of(world)
    want = open_images(paths, SIZE)[:]
    (world / DATA_CACHE_DIR).write_text("a file where the folder would go")  # root writes anywhere
    got = open_images(paths, SIZE, data_dir=world)
    assert not got.mapped and torch.equal(got[:], want)
    assert "cannot write the image cache" in caplog.text and "in memory" in caplog.text
    (world / DATA_CACHE_DIR).unlink()
    if os.geteuid() != 0:
        world.chmod(0o555)
        try:
            caplog.clear()
            got = open_images(paths, SIZE, data_dir=world)
            assert not got.mapped and torch.equal(got[:], want) and "cannot write the image cache" in caplog.text
        finally:
            world.chmod(0o755)
    # A store built earlier is still mapped from a folder that cannot be written (no lock needed).
    built = open_images(paths, SIZE, data_dir=world)

    def no_lock(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store_mod, "build_lock", no_lock)
    again = open_images(paths, SIZE, data_dir=world)
    assert again.mapped and again.path == built.path


def test_a_full_disk_is_a_warning_and_leaves_no_file(world, caplog, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    paths = paths_of(world)
    got = open_images(paths, SIZE, data_dir=world)
    assert not got.mapped and torch.equal(got[:], open_images(paths, SIZE)[:])
    assert "No space left" in caplog.text
    assert not (world / DATA_CACHE_DIR).exists()  # the folder this call made is gone again


def test_a_bad_image_leaves_no_store_and_no_temporary(world):
    from factlearn.errors import UserError

    paths = paths_of(world)
    paths[7].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match=paths[7].name):
        open_images(paths, SIZE, data_dir=world)
    assert not (world / DATA_CACHE_DIR).exists()  # the folder this call made is gone again


def test_processes_opening_a_missing_store_build_it_once(world, monkeypatch):
    paths, real = paths_of(world), images_mod.load_image
    calls = []

    def slow(path, size):  # the first opener is still decoding when the second arrives
        calls.append(1)
        time.sleep(0.005)
        return real(path, size)

    monkeypatch.setattr(images_mod, "load_image", slow)
    got: list[ImageStore] = []
    threads = [threading.Thread(target=lambda: got.append(open_images(paths, SIZE, workers=1, data_dir=world)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == len(paths)  # one build; the other waited on the lock and mapped it
    assert len(got) == 2 and all(s.mapped for s in got) and torch.equal(got[0][:], got[1][:])


def test_training_with_the_store_is_bit_identical_to_memory(world, tmp_path, tiny_config, monkeypatch):
    cfg = load_config(tiny_config, {"method.name": "mas"})  # two tasks, B1 and B2
    monkeypatch.setenv(CACHE_ENV, "off")
    train(world, cfg, tmp_path / "memory", device="cpu")
    assert not (world / DATA_CACHE_DIR).exists()
    monkeypatch.delenv(CACHE_ENV)
    train(world, cfg, tmp_path / "store", device="cpu")
    assert len(list((world / DATA_CACHE_DIR).glob("*.npy"))) == 1  # the data directory's store
    a, b = tmp_path / "memory", tmp_path / "store"
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    for task in ("B1", "B2"):
        for name in ("model.safetensors", "method.safetensors"):
            ta = load_file(str(a / "checkpoints" / task / name))
            tb = load_file(str(b / "checkpoints" / task / name))
            assert ta.keys() == tb.keys() and ta
            for key in ta:
                assert torch.equal(ta[key], tb[key]), f"{task}/{name}: {key} differs"


def _memory_kb() -> tuple[int, int]:
    """(resident, private) memory of this process in KB, from /proc/self/statm: resident counts the
    store's mapped pages (shared, evictable file pages), private = resident - shared does not."""
    fields = Path("/proc/self/statm").read_text().split()
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    resident, shared = int(fields[1]) * page_kb, int(fields[2]) * page_kb
    return resident, resident - shared


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_memory_does_not_grow_with_epochs(tmp_path):
    # A 74 MB store read as training reads it, half of it (a task's rows) per epoch. Holding the
    # images read would add 37 MB of private memory; the slack covers the allocator's warm-up
    # (a few MB of batch buffers).
    n, size, batch, slack_kb = 24000, 32, 64, 16 * 1024
    shape = (n, 3, size, size)

    def fill(out, start):  # pixels as a function of the position, without PNGs to decode
        pos = np.arange(start, start + len(out), dtype=np.uint32)[:, None, None, None]
        out[:] = ((pos * 2654435761 + np.arange(3 * size * size, dtype=np.uint32).reshape(1, 3, size, size))
                  >> 7).astype(np.uint8)

    build_store(tmp_path / "s.npy", shape, fill, chunk=4096)
    store = open_store(tmp_path / "s.npy", shape)
    assert isinstance(store.array, np.memmap) and not store.array.flags.writeable
    rows = np.arange(0, n, 2)  # a task's rows, as the session indexes them

    def epoch(seed: int) -> int:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        total = 0
        for lo in range(0, len(rows), batch):
            pixels = store[rows[order[lo : lo + batch].numpy()]]  # task.py's indexing
            to_model_input(pixels)
            total += int(pixels.sum())
        return total

    to_model_input(store[rows[:batch]])  # one batch: torch's first-call set-up is not the store's
    _, private0 = _memory_kb()
    sums = [epoch(0)]
    resident1, _ = _memory_kb()  # the first epoch mapped the pages it read: shared, evictable
    sums += [epoch(s) for s in range(1, 4)]
    resident2, private2 = _memory_kb()
    assert private2 - private0 < slack_kb, (private0, private2)  # no image is held in private memory
    assert resident2 - resident1 < slack_kb, (resident1, resident2)  # and repeated epochs add nothing
    assert len(set(sums)) == 1  # the same images every epoch, in another order
    # the measure would have seen the images held in memory
    whole = store.tensor()
    assert _memory_kb()[1] - private2 > store.array.nbytes // 1024 * 3 // 4
    assert torch.equal(whole[rows[:5]], store[rows[:5]])
