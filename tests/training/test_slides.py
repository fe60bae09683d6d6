"""Whole slides as training data: Zarr images and masks read window by window."""

import numpy as np
import pytest
import torch
import zarr

from unet.errors import InputNotFound, InvalidParameter
from unet.io.omezarr import create_image, create_label_image
from unet.io.source import ImageSource
from unet.network.checkpoint import load_checkpoint
from unet.tiling import Geometry
from unet.training.data import LabelledImage, load_dataset
from unet.training.labels import LabelRules
from unet.training.sampler import CELL, TileSampler
from unet.training.slides import open_slide
from unet.training.synthetic import nuclei_image
from unet.training.train import train
from unet.training.weightmap import IGNORED, weight_map

IGNORE = 255


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_slide(path, image, labels=None, names=("cells",)):
    """An OME-Zarr image with chunks of 32, and label images ``labels/<name>`` inside."""
    create_image(path, (1, *image.shape), image.dtype, (32, 32))[...] = image[None]
    if labels is None:
        return path
    for name in names:
        level0 = create_label_image(
            path / "labels" / name,
            labels.shape,
            (32, 32),
            class_names=["background", "nucleus"],
            colours=[(0, 0, 0), (255, 0, 0)],
        )
        # Instance ids (and the ignore label) do not fit the class-name metadata; the training
        # data reads the values as they are.
        level0[...] = labels.astype(np.uint8)
    group = zarr.open_group(str(path / "labels"), mode="a")
    group.update_attributes({"ome": {"version": "0.5", "labels": list(names)}})
    return path


@pytest.fixture(scope="module")
def scene():
    image, labels = nuclei_image((90, 110), seed=3)
    mask = np.where(labels > 0, labels % 200 + 1, 0)  # instance ids that fit a uint8 mask
    mask[:, 60:] = IGNORE  # annotated: the left part only
    return image, mask


def test_a_slide_gives_the_windows_of_the_image_read_whole(scene, tmp_path):
    image, mask = scene
    rules = LabelRules(ignore_label=IGNORE)
    slide = open_slide("s", write_slide(tmp_path / "s.zarr", image, mask), None, rules)
    classes, objects = rules.classes(mask, "mask")
    whole = LabelledImage(
        "w", image[None].astype(np.float32), classes, weight_map(objects, classes)
    )
    np.testing.assert_array_equal(slide.cells, whole.cells)
    np.testing.assert_array_equal(slide.class_counts, whole.class_counts)
    sampler = TileSampler([slide], Geometry(depth=2), 60, np.random.default_rng(0))
    for top, left in ((0, 0), (35, 17), (70, 40), (89, 109)):
        read = sampler.window(slide, top, left)
        expected = sampler.window(whole, top, left)
        np.testing.assert_array_equal(read[0], expected[0])
        np.testing.assert_array_equal(read[1], expected[1])
        # Weights from a window with `reach` of context: exact up to NEGLIGIBLE border terms.
        np.testing.assert_allclose(read[2], expected[2], atol=2e-3)


def test_tiles_are_drawn_where_there_are_annotations(tmp_path, monkeypatch):
    image, labels = nuclei_image((200, 160), seed=1)
    mask = np.full(labels.shape, IGNORE, np.uint8)
    rows, cols = slice(2 * CELL, 5 * CELL), slice(3 * CELL, 6 * CELL)  # whole cells
    mask[rows, cols] = np.where(labels[rows, cols] > 0, labels[rows, cols] % 200 + 1, 0)
    path = write_slide(tmp_path / "s.zarr", image, mask)
    slide = open_slide("s", path, None, LabelRules(ignore_label=IGNORE))
    regions = []
    original = ImageSource.read

    def recording(self, rows, cols):
        regions.append((rows.stop - rows.start) * (cols.stop - cols.start))
        return original(self, rows, cols)

    monkeypatch.setattr(ImageSource, "read", recording)
    sampler = TileSampler([slide], Geometry(depth=2), 60, np.random.default_rng(0))
    for _ in range(10):
        _, classes, weights = sampler.sample()
        assert (classes != IGNORED).any()
        assert not weights[classes == IGNORED].any()
    # Windows only (tile plus the weight map's reach), never the slide.
    assert max(regions) <= (60 + 2 * 22) ** 2 < 200 * 160


def test_training_on_a_slide_with_its_labels_inside(scene, tmp_path):
    image, mask = scene
    path = write_slide(tmp_path / "slide.ome.zarr", image, mask)
    result = train(
        path,
        tmp_path / "m.safetensors",
        ignore_label=IGNORE,
        steps=2,
        base_channels=4,
        depth=2,
        tile_size=60,
        batch_size=2,
        progress=False,
    )
    metadata = load_checkpoint(result.path).metadata
    annotated = mask != IGNORE
    assert metadata["train_images"] == ["slide"] and metadata["input_dtype"] == "uint8"
    assert metadata["annotated_pixels"] == int(annotated.sum())
    assert metadata["input_range"] == [float(image[annotated].min()), float(image[annotated].max())]


def test_a_data_directory_of_slides_is_validated_on_windows(scene, tmp_path):
    image, mask = scene
    root = tmp_path / "data"
    for name in ("a", "b"):
        write_slide(root / "images" / f"{name}.zarr", image)
        create_image(
            root / "masks" / f"{name}.zarr", mask.shape, np.uint8, (32, 32), axes=("y", "x")
        )[...] = mask
    dataset = load_dataset(root, ignore_label=IGNORE)
    assert [item.name for item in dataset] == ["a", "b"]
    result = train(
        root,
        tmp_path / "m.safetensors",
        ignore_label=IGNORE,
        steps=1,
        base_channels=4,
        depth=2,
        tile_size=60,
        batch_size=1,
        val_fraction=0.5,
        progress=False,
    )
    assert result.val_images == ["a"] and result.val_dice is not None


def test_which_label_image_is_the_mask(scene, tmp_path):
    image, mask = scene
    path = write_slide(tmp_path / "s.zarr", image, mask, names=("cells", "tissue"))
    rules = LabelRules(ignore_label=IGNORE)
    with pytest.raises(InvalidParameter, match="cells, tissue: choose one with --label-name"):
        open_slide("s", path, None, rules)
    assert open_slide("s", path, None, rules, label_name="tissue").mask.url.endswith("tissue")
    with pytest.raises(InputNotFound, match="no label image 'nuclei'.*--label-name"):
        open_slide("s", path, None, rules, label_name="nuclei")
    bare = write_slide(tmp_path / "bare.zarr", image)
    with pytest.raises(InputNotFound, match="no mask"):
        open_slide("b", bare, None, rules)


def test_huge_slides_count_annotations_in_larger_cells(scene, tmp_path, monkeypatch):
    import unet.training.slides as slides

    image, mask = scene
    monkeypatch.setattr(slides, "MAX_CELLS", 10)
    slide = open_slide(
        "s", write_slide(tmp_path / "s.zarr", image, mask), None, LabelRules(ignore_label=IGNORE)
    )
    assert slide.cell == 64 and slide.cells.shape == (2, 2)
    assert slide.cells.sum() == np.sum(mask != IGNORE)
    sampler = TileSampler([slide], Geometry(depth=2), 60, np.random.default_rng(0))
    rows = [sampler.place(slide, np.random.default_rng(seed))[0] for seed in range(20)]
    assert min(rows) >= 0 and max(rows) <= 90 - 20  # windows inside the slide
