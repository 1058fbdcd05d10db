"""The decoded-image cache of factlearn.data.images.load_images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from factlearn.data import images as images_mod
from factlearn.data.images import CACHE_ENV, load_images


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _no_decoding(monkeypatch):
    def refuse(path, size):
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(images_mod, "load_image", refuse)


def test_second_load_reads_the_cache(pngs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_images(pngs, 8, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1
    _no_decoding(monkeypatch)
    done = []
    again = load_images(pngs, 8, cache_dir=cache, progress=done.append)
    assert torch.equal(first, again) and sum(done) == len(pngs)
    monkeypatch.setenv(CACHE_ENV, str(cache))  # the environment variable finds the same file
    assert torch.equal(load_images(pngs, 8), first)


def test_changed_image_size_or_order_is_decoded_again(pngs, tmp_path):
    cache = tmp_path / "cache"
    load_images(pngs, 8, cache_dir=cache)
    load_images(pngs, 6, cache_dir=cache)  # another size
    load_images(pngs[::-1], 8, cache_dir=cache)  # another order
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(pngs[2])  # new content
    st = pngs[2].stat()
    os.utime(pngs[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = load_images(pngs, 8, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 4
    assert int(fresh[2].max()) == 0 and torch.equal(fresh, load_images(pngs, 8))


def test_corrupt_cache_is_decoded_and_rewritten(pngs, tmp_path, caplog):
    cache = tmp_path / "cache"
    want = load_images(pngs, 8, cache_dir=cache)
    (file,) = cache.glob("*.npy")
    file.write_bytes(b"not an array")
    assert torch.equal(load_images(pngs, 8, cache_dir=cache), want)
    assert "unreadable" in caplog.text
    assert torch.equal(torch.from_numpy(np.load(file)), want)  # rewritten whole


def test_unwritable_cache_is_only_a_warning(pngs, tmp_path, caplog):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    assert torch.equal(load_images(pngs, 8, cache_dir=blocked), load_images(pngs, 8))
    assert "cannot write the image cache" in caplog.text
