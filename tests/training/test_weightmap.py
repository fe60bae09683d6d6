import math

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from unet.errors import InvalidImage, InvalidParameter
from unet.training.synthetic import nuclei_image
from unet.training.weightmap import (
    IGNORED,
    NEGLIGIBLE,
    class_balance,
    class_weights,
    reach,
    weight_map,
)


def border(distance_sum, w0=10.0, sigma=5.0):
    return w0 * math.exp(-(distance_sum**2) / (2 * sigma**2))


def test_two_objects_on_a_row_by_hand():
    #            0  1  2  3  4  5
    labels = np.array([[1, 0, 0, 2, 0, 0]])
    # w_c: 6 pixels, 2 classes; foreground 2 pixels -> 6 / (2 * 2) = 1.5, background 4 -> 0.75.
    # Pixel 1: d1 = 1 (object 1), d2 = 2 (object 2); pixel 2: 1 + 2; pixel 4: 1 + 4; pixel 5: 2 + 5.
    expected = [1.5, 0.75 + border(3), 0.75 + border(3), 1.5, 0.75 + border(5), 0.75 + border(7)]
    np.testing.assert_allclose(weight_map(labels)[0], expected, rtol=1e-6)


def test_two_objects_in_opposite_corners_by_hand():
    labels = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 2]])
    # w_c: foreground 9 / (2 * 2) = 2.25, background 9 / (2 * 7) = 9 / 14.
    bg = 9 / 14
    edge = bg + border(1 + math.sqrt(5))  # e.g. (0, 1): 1 from object 1, sqrt(4 + 1) from 2
    corner = bg + border(2 + 2)  # (0, 2): 2 from each
    centre = bg + border(2 * math.sqrt(2))
    expected = [[2.25, edge, corner], [edge, centre, edge], [corner, edge, 2.25]]
    np.testing.assert_allclose(weight_map(labels), expected, rtol=1e-6)


def test_one_object_gets_class_balance_only():
    labels = np.zeros((4, 5), np.int32)
    labels[1:3, 1:3] = 7
    weights = weight_map(labels)
    np.testing.assert_allclose(weights[labels > 0], 20 / (2 * 4))
    np.testing.assert_allclose(weights[labels == 0], 20 / (2 * 16))
    assert weights.dtype == np.float32


def test_class_balance_gives_every_class_the_same_total():
    classes = np.array([[0, 0, 0, 1], [2, 2, 0, 0]])
    weights = class_balance(classes)
    totals = [weights[classes == k].sum() for k in range(3)]
    np.testing.assert_allclose(totals, [8 / 3] * 3)
    assert weights.mean() == pytest.approx(1.0)


def test_matches_brute_force_distances_up_to_the_negligible_terms():
    labels = nuclei_image((80, 80), seed=2)[1]
    ids = [i for i in np.unique(labels) if i]
    distances = np.sort(np.stack([distance_transform_edt(labels != i) for i in ids]), axis=0)
    term = 10 * np.exp(-((distances[0] + distances[1]) ** 2) / 50)
    expected = class_balance(labels > 0) + np.where(labels == 0, term, 0)
    np.testing.assert_allclose(weight_map(labels), expected, atol=1.1e-3)


def test_classes_and_parameters():
    labels = np.array([[1, 0, 2]])
    classes = np.array([[1, 0, 2]])
    no_border = weight_map(labels, classes, w0=0)
    np.testing.assert_allclose(no_border, [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(
        weight_map(labels, classes, w0=2, sigma=1)[0, 1], 1 + 2 * math.exp(-2)
    )


def test_refuses_bad_input():
    with pytest.raises(InvalidImage):
        weight_map(np.zeros((3, 3), np.float32))
    with pytest.raises(InvalidImage):
        weight_map(np.zeros((3, 3, 3), np.int32))
    with pytest.raises(InvalidParameter):
        weight_map(np.zeros((3, 3), np.int32), sigma=0)


def test_ignored_pixels_weigh_nothing_and_count_in_no_class():
    instances = np.array([[1, 0, 0, 2, 0, 0]])
    classes = np.array([[1, 0, IGNORED, 1, 0, IGNORED]])
    weights = weight_map(instances, classes)
    # w_c over the 4 annotated pixels: 2 foreground -> 4 / (2 * 2) = 1, 2 background -> 1.
    expected = [1.0, 1.0 + border(1 + 2), 0.0, 1.0, 1.0 + border(1 + 4), 0.0]
    np.testing.assert_allclose(weights[0], expected, rtol=1e-6)
    np.testing.assert_allclose(class_weights([2, 2, 0]), [1.0, 1.0, 0.0])


def test_a_window_with_reach_of_context_has_the_whole_image_weights():
    labels = nuclei_image((120, 130), seed=4)[1]
    whole = weight_map(labels)
    margin = reach(10.0, 5.0)
    rows, cols = slice(40, 80), slice(30, 75)
    context = (slice(40 - margin, 80 + margin), slice(30 - margin, 75 + margin))
    balance = class_weights(np.bincount((labels > 0).ravel()))
    window = weight_map(labels[context], weights_per_class=balance)
    inner = (slice(margin, margin + 40), slice(margin, margin + 45))
    np.testing.assert_allclose(window[inner], whole[rows, cols], atol=NEGLIGIBLE)
