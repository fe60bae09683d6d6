import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from unet.errors import InvalidParameter
from unet.training.augment import augment, elastic_deform, elastic_field, flip_rotate, warp
from unet.training.synthetic import nuclei_image


def test_elastic_field_interpolates_the_coarse_grid():
    field = elastic_field((101, 81), np.random.default_rng(5), sigma=10.0)
    coarse = np.random.default_rng(5).normal(0, 10.0, size=(2, 3, 3))
    assert field.shape == (2, 101, 81) and field.dtype == np.float32
    for (gy, gx), (y, x) in {
        (0, 0): (0, 0),
        (1, 1): (50, 40),
        (2, 0): (100, 0),
        (2, 2): (100, 80),
    }.items():
        np.testing.assert_allclose(field[:, y, x], coarse[:, gy, gx], atol=1e-4)
    # Smooth: neighbouring pixels move almost alike.
    assert np.abs(np.diff(field, axis=1)).max() < 2.0


def test_elastic_field_refuses_bad_parameters():
    with pytest.raises(InvalidParameter):
        elastic_field((10, 10), np.random.default_rng(), grid=1)


def test_deformed_mask_stays_integer_and_aligned_with_the_image():
    nuclei = nuclei_image((96, 96), seed=1)[1]
    labels = np.where(nuclei > 0, 1 + nuclei % 3, 0)  # classes 0..3
    image = labels.astype(np.float32)[None]
    weights = np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape)
    rng = np.random.default_rng(0)
    deformed_image, deformed_labels, deformed_weights = elastic_deform(
        image, labels, weights, rng=rng
    )
    assert deformed_labels.dtype == labels.dtype
    assert set(np.unique(deformed_labels)) <= set(np.unique(labels))
    assert set(np.unique(deformed_weights)) <= set(np.unique(weights))
    assert not np.array_equal(deformed_labels, labels), "the deformation should move something"
    # The image, resampled bicubically, still shows the mask: it differs from the deformed mask
    # only next to label boundaries.
    disagree = np.rint(deformed_image[0]) != deformed_labels
    edges = np.zeros_like(disagree)
    edges[:, 1:] |= deformed_labels[:, 1:] != deformed_labels[:, :-1]
    edges[1:] |= deformed_labels[1:] != deformed_labels[:-1]
    assert not (disagree & ~binary_dilation(edges, iterations=2)).any()
    assert disagree.mean() < 0.1


def test_nearest_image_and_mask_agree_exactly():
    labels = nuclei_image((64, 64), seed=3)[1]
    image, mask = elastic_deform(
        labels.astype(np.float64), labels, rng=np.random.default_rng(1), order=0
    )
    np.testing.assert_array_equal(image, mask)


def test_zero_field_is_identity():
    image = np.random.default_rng(0).random((2, 9, 7)).astype(np.float32)
    field = np.zeros((2, 9, 7), np.float32)
    np.testing.assert_allclose(warp(image, field, order=3), image, atol=1e-5)
    np.testing.assert_array_equal(warp(image, field, order=0), image)


def test_flip_rotate_covers_the_eight_symmetries_and_keeps_pairs_together():
    square = np.arange(9).reshape(3, 3)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(64):
        image, mask = flip_rotate(square[None], square, rng=rng)
        np.testing.assert_array_equal(image[0], mask)
        seen.add(mask.tobytes())
    assert len(seen) == 8


def test_augment_is_reproducible_for_a_seed():
    image = np.random.default_rng(0).random((1, 40, 40)).astype(np.float32)
    labels = (image[0] > 0.5).astype(np.int64)
    a = augment(image, labels, rng=np.random.default_rng(3))
    b = augment(image, labels, rng=np.random.default_rng(3))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
