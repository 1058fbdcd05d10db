"""Image decoding helpers of factlearn.data.images: PIL images, folders of images, the pixel cap."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from factlearn.data import images as images_mod
from factlearn.data.images import expand_images, load_image, pil_to_array, read_images
from factlearn.errors import UserError


def rgba(side: int = 20) -> Image.Image:
    """Random colours with a varying alpha channel: compositing on white matters."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 4), dtype=np.uint8), "RGBA")


def test_pil_image_embeds_like_the_same_file(tmp_path):
    img = rgba()
    img.save(tmp_path / "a.png")
    got = pil_to_array(img, 12)
    assert got.shape == (12, 12, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, load_image(tmp_path / "a.png", 12))
    stacked = read_images([tmp_path / "a.png"], 12)  # (N, 3, S, S)
    np.testing.assert_array_equal(stacked[0].permute(1, 2, 0).numpy(), got)


def test_expand_images_lists_a_folder_sorted(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.webp"):
        rgba(4).convert("RGB").save(folder / name, format="PNG")  # the suffix decides, not the bytes
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    single = tmp_path / "single.png"
    rgba(4).save(single)
    assert expand_images([folder, single]) == [folder / "a.JPG", folder / "b.png", folder / "c.webp", single]


def test_expand_images_refuses_empty_folders_and_missing_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(UserError, match="no images in folder .*empty"):
        expand_images([tmp_path / "empty"])
    with pytest.raises(UserError, match="image not found: .*nowhere.png"):
        expand_images([tmp_path / "nowhere.png"])


def test_pixel_cap_applies_to_pil_images(monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 99)
    assert pil_to_array(rgba(9), 4).shape == (4, 4, 3)  # 81 pixels: under the cap
    with pytest.raises(UserError, match="query image has 10x10 pixels, over the limit of 99"):
        pil_to_array(rgba(10), 4, "query image")
