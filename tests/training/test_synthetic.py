import time

import numpy as np
import pytest

from unet.errors import InvalidParameter
from unet.training.synthetic import (
    NucleiScene,
    SatelliteScene,
    TissueScene,
    nuclei_image,
    render,
    write_nuclei_dataset,
    write_to_zarr,
)

SCENES = [
    NucleiScene(shape=(300, 260), seed=5),
    NucleiScene.varied((300, 260), seed=7),
    TissueScene(shape=(300, 260), seed=2, tissue_fraction=0.6),
    TissueScene.varied((300, 260), seed=4),
    SatelliteScene(shape=(300, 260), seed=3, parcel=60, road_spacing=200),
]


def whole(scene):
    return render(scene, slice(0, scene.shape[0]), slice(0, scene.shape[1]))


def name(scene):
    varied = scene.seed in (4, 7)
    return type(scene).__name__ + ("-varied" if varied else "")


@pytest.mark.parametrize("scene", SCENES, ids=name)
def test_render_is_independent_of_the_block_partition(scene):
    image, labels = whole(scene)
    assert image.shape == (scene.channels, *scene.shape) and image.dtype == np.uint8
    assert labels.shape == scene.shape and labels.dtype == np.int32
    assert image.std() > 5, "the scene should not be blank"
    row_cuts, col_cuts = [0, 1, 77, 128, 300], [0, 50, 199, 259, 260]
    tiled_image = np.zeros_like(image)
    tiled_labels = np.zeros_like(labels)
    for r0, r1 in zip(row_cuts, row_cuts[1:], strict=False):
        for c0, c1 in zip(col_cuts, col_cuts[1:], strict=False):
            block_image, block_labels = render(scene, slice(r0, r1), slice(c0, c1))
            tiled_image[:, r0:r1, c0:c1] = block_image
            tiled_labels[r0:r1, c0:c1] = block_labels
    np.testing.assert_array_equal(tiled_image, image)
    np.testing.assert_array_equal(tiled_labels, labels)


@pytest.mark.parametrize("scene", SCENES, ids=name)
def test_labels_use_the_scene_classes(scene):
    labels = whole(scene)[1]
    if scene.instances:
        assert len(np.unique(labels)) > 20
    else:
        assert set(np.unique(labels)) <= set(range(len(scene.class_names)))
        assert len(np.unique(labels)) >= 2


def test_write_to_zarr_fills_arrays_block_by_block():
    import zarr

    scene = NucleiScene(shape=(150, 97), seed=1)
    image_array = zarr.create_array({}, shape=(1, 150, 97), chunks=(1, 64, 64), dtype="uint8")
    labels_array = zarr.create_array({}, shape=(150, 97), chunks=(64, 64), dtype="int32")
    calls = []
    write_to_zarr(scene, image_array, labels_array, block=64, progress=lambda *a: calls.append(a))
    image, labels = whole(scene)
    np.testing.assert_array_equal(image_array[...], image)
    np.testing.assert_array_equal(labels_array[...], labels)
    assert calls[-1] == (6, 6)


def test_write_to_zarr_refuses_a_wrong_shape():
    scene = NucleiScene(shape=(50, 50))
    with pytest.raises(InvalidParameter, match=r"\(1, 50, 50\)"):
        write_to_zarr(scene, np.zeros((50, 50), np.uint8))


def test_nuclei_image_has_parted_touching_nuclei_and_sequential_labels():
    image, labels = nuclei_image((128, 128), seed=7)
    assert image.shape == labels.shape == (128, 128)
    assert image.dtype == np.uint8 and labels.dtype == np.int32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    assert 0.1 < (labels > 0).mean() < 0.6
    # Nuclei are brighter than the background.
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
    # Touching nuclei are parted by exactly two background pixels, never directly adjacent.
    for lab in (labels, labels.T):
        adjacent = (lab[:, 1:] > 0) & (lab[:, :-1] > 0) & (lab[:, 1:] != lab[:, :-1])
        assert not adjacent.any()
    left, right = labels[:, :-3], labels[:, 3:]
    gap = (labels[:, 1:-2] == 0) & (labels[:, 2:-1] == 0)
    assert ((left > 0) & (right > 0) & (left != right) & gap).sum() > 5


def test_nuclei_image_is_reproducible_per_seed():
    a, b, c = nuclei_image((64, 64), 3), nuclei_image((64, 64), 3), nuclei_image((64, 64), 4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_write_nuclei_dataset(tmp_path):
    import tifffile

    write_nuclei_dataset(tmp_path, count=2, size=40, seed=9)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert (
        names
        == sorted(p.name for p in (tmp_path / "masks").iterdir())
        == [
            "nuclei_0000.tif",
            "nuclei_0001.tif",
        ]
    )
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "masks" / "nuclei_0001.tif"), nuclei_image((40, 40), 10)[1]
    )


@pytest.mark.parametrize(
    "rows, cols",
    [(slice(0, 0), slice(0, 5)), (slice(0, 5, 2), slice(0, 5)), (slice(-3, 2), slice(0, 5))],
)
def test_render_refuses_bad_regions(rows, cols):
    with pytest.raises(InvalidParameter):
        render(NucleiScene(shape=(10, 10)), rows, cols)


def test_scene_refuses_bad_parameters():
    with pytest.raises(InvalidParameter):
        NucleiScene(shape=(0, 10))
    with pytest.raises(InvalidParameter):
        NucleiScene(shape=(10, 10), seed=-1)


@pytest.mark.slow
def test_an_8192_slide_renders_quickly():
    scene = NucleiScene(shape=(8192, 8192), seed=0)
    started = time.perf_counter()
    for y in range(0, 8192, 1024):
        for x in range(0, 8192, 1024):
            render(scene, slice(y, y + 1024), slice(x, x + 1024))
    assert time.perf_counter() - started < 30


def test_varied_scenes_differ_in_look_and_repeat_per_seed():
    scenes = [NucleiScene.varied((64, 64), seed) for seed in range(6)]
    assert scenes[0] == NucleiScene.varied((64, 64), 0)
    for field in ("blur", "gain", "background", "noise", "texture", "radius"):
        assert len({getattr(scene, field) for scene in scenes}) == 6
    assert all(0.8 <= s.blur <= 2.6 and 0.3 <= s.gain <= 1.2 for s in scenes)
    image, labels = nuclei_image((64, 64), 3, varied=True)
    np.testing.assert_array_equal(image, whole(scenes[3])[0][0])
    with pytest.raises(InvalidParameter, match="blur"):
        NucleiScene((10, 10), blur=9.0)
