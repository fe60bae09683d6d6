"""The preview: a heat map of class shares that reads at any scale, a full-resolution crop where
the objects are, a legend and captions that say what is shown."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zarr
from PIL import Image

from unet.results import figure
from unet.results.preview import (
    CELLS,
    MAX_SIDE,
    MIN_CELL,
    build_preview,
    cell_fractions,
    class_names,
    full_share,
    heat_map,
)

COLOURS = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def write_mask(path, labels: np.ndarray, names=("background", "nucleus", "stroma")) -> str:
    """An OME-Zarr label image: level 0 and its nearest halvings down to 256 px, with
    image-label colours and class names."""
    group = zarr.open_group(str(path), mode="w")
    level, k = labels, 0
    while True:
        group.create_array(str(k), data=level, chunks=(256, 256))
        if max(level.shape) <= 256:
            break
        level, k = level[::2, ::2], k + 1
    group.attrs["ome"] = {
        "image-label": {
            "colors": [{"label-value": v, "rgba": [*c, 255]} for v, c in enumerate(COLOURS)],
            "properties": [{"label-value": v, "class": n} for v, n in enumerate(names)],
        }
    }
    return str(path)


def write_input(path, shape, dtype="uint8", zarr_format=3) -> str:
    data = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    array = zarr.create_array(
        str(path), shape=shape, chunks=(256, 256), dtype=dtype, zarr_format=zarr_format
    )
    array[...] = data
    return str(path)


def test_cell_fractions_are_the_share_of_each_class_per_cell_without_no_data():
    labels = np.array(
        [
            [0, 1, 2, 2],
            [1, 1, 2, 255],  # 255: no class, counted in no share
        ],
        np.uint8,
    )
    rows, cols = np.array([0, 0]), np.array([0, 0, 1, 1])  # two cells of 2 x 2 pixels
    fractions = cell_fractions(labels, rows, cols, (1, 2), classes=3)
    assert fractions.shape == (3, 1, 2)
    assert fractions[:, 0, 0].tolist() == [0.25, 0.75, 0.0]
    assert fractions[:, 0, 1].tolist() == [0.0, 0.0, 1.0]  # 3 labelled pixels, all class 2


def test_the_heat_map_tints_by_share_up_to_full_colour_and_mixes_classes():
    brightness = np.full((1, 3), 100.0)
    fractions = np.array(
        [
            [[1.0, 0.8, 0.5]],  # background
            [[0.0, 0.2, 0.25]],  # class 1, red
            [[0.0, 0.0, 0.25]],  # class 2, blue
        ]
    )
    out = heat_map(brightness, fractions, COLOURS, full=0.4, alpha=0.8)
    assert out[0, 0].tolist() == [75, 75, 75]  # no objects: the grey, dimmed
    # share 0.2 of a full 0.4: half the full opacity, 0.4, of red over the dimmed grey
    assert out[0, 1].tolist() == [147, 45, 45]
    # share 0.5 >= full: full opacity of the half red, half blue mix
    assert out[0, 2].tolist() == [117, 15, 117]


def test_full_colour_is_a_round_share_above_nearly_every_cell():
    shares = np.full((10, 10), 0.12)
    shares[0, 0] = 0.9  # one dense cell does not pale the others
    assert full_share(shares) == 0.2
    assert full_share(np.zeros((3, 3))) == 0.01


def test_class_names_come_from_the_label_metadata():
    attributes = {"ome": {"image-label": {"properties": [{"label-value": 1, "class": "cell"}]}}}
    assert class_names(attributes) == ["background", "cell"]
    assert class_names({}) == ["background", "class 1"]


def test_a_large_image_gets_an_overview_and_a_crop_where_the_objects_are(tmp_path):
    """A 1200 x 900 image whose only objects lie in a block near its bottom right."""
    labels = np.zeros((900, 1200), np.uint8)
    labels[700:800, 1000:1100] = 1
    labels[720:760, 1020:1060] = 2
    mask = write_mask(tmp_path / "m.zarr", labels)
    preview = build_preview(write_input(tmp_path / "in.zarr", (900, 1200)), mask, crop_side=256)

    assert preview.title == "m: 1200 × 900 px (width × height)"
    x0, y0, x1, y1 = preview.crop
    assert (x1 - x0, y1 - y0) == (256, 256)
    assert x0 <= 1000 and x1 >= 1100 and y0 <= 700 and y1 >= 800  # the objects are in the crop
    cell = max(-(-1200 // CELLS), MIN_CELL)
    assert f"each cell of {cell} × {cell} px (width × height)" in preview.caption
    assert (
        f"Full resolution, 256 × 256 px (width × height) at x {x0}-{x1}, y {y0}-{y1}, "
        "the region richest in nucleus and stroma" in preview.caption
    )
    with Image.open(io.BytesIO(preview.png)) as picture:
        rgb = np.asarray(picture.convert("RGB")).astype(int)
    # The crop is drawn right of the 512 x 384 overview, pixel for pixel: grey where the mask
    # is background, red over grey where it is class 1, blue over grey for class 2.
    top, left = figure.MARGIN + figure.TITLE + 10, figure.MARGIN + MAX_SIDE + figure.GAP
    crop = rgb[top : top + 256, left : left + 256]
    red, green, blue = crop[..., 0], crop[..., 1], crop[..., 2]
    inside = labels[y0:y1, x0:x1]
    assert (red == green)[inside == 0].all() and (green == blue)[inside == 0].all()
    assert (red > green + 50)[inside == 1].all() and (green == blue)[inside == 1].all()
    assert (blue > red + 50)[inside == 2].all() and (red == green)[inside == 2].all()


def test_an_image_without_objects_shows_its_centre_and_says_so(tmp_path):
    mask = write_mask(tmp_path / "m.zarr", np.zeros((600, 800), np.uint8))
    preview = build_preview(write_input(tmp_path / "in.zarr", (600, 800)), mask, crop_side=200)
    assert preview.crop == (300, 200, 500, 400)
    assert "the centre (no objects)" in preview.caption


def test_an_image_up_to_twice_the_overview_is_shown_whole_shrunk(tmp_path):
    """700 rows of 500: its objects stay visible at 512 / 700 of their size, no heat map."""
    labels = np.zeros((700, 500), np.uint8)
    labels[600:650, 50:100] = 1
    mask = write_mask(tmp_path / "m.zarr", labels)
    preview = build_preview(write_input(tmp_path / "in.zarr", (700, 500)), mask)
    assert preview.title == "m: 500 × 700 px (width × height)"
    assert preview.caption.startswith(
        "Whole image at 73% of its size, the mask's colours over it; the box is the crop. "
        "Full resolution, 384 × 384 px (width × height) at x 0-384, y 288-672, the region "
        "richest in nucleus"
    )
    with Image.open(io.BytesIO(preview.png)) as picture:
        assert picture.size[0] >= round(500 * MAX_SIDE / 700) + 384


def test_a_small_image_is_shown_whole_at_full_resolution_enlarged(tmp_path):
    labels = np.zeros((40, 60), np.uint8)
    labels[10:20, 10:30] = 1
    mask = write_mask(tmp_path / "m.zarr", labels)
    preview = build_preview(write_input(tmp_path / "in.zarr", (40, 60)), mask)
    assert preview.crop is None
    assert preview.caption == (
        "The whole image at full resolution enlarged 4 times, the mask's colours over it."
    )


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_big_endian_input_is_previewed(tmp_path, zarr_format):
    """zarrs, the fast codec pipeline, decodes into native byte order only."""
    from unet.io.codecs import use_fast_codecs

    use_fast_codecs()
    image = write_input(tmp_path / "in.zarr", (300, 700), dtype=">u2", zarr_format=zarr_format)
    labels = np.zeros((300, 700), np.uint8)
    labels[100:150, 100:150] = 1
    preview = build_preview(image, write_mask(tmp_path / "m.zarr", labels), crop_side=128)
    assert preview.png.startswith(b"\x89PNG") and preview.crop is not None
