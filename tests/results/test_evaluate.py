import numpy as np
import pytest

from unet.errors import InvalidImage, UnsupportedInput
from unet.io.files import read_array, read_labels
from unet.results.evaluate import evaluate, evaluate_paths, match_objects

PRED = np.array([[0, 1, 1], [0, 1, 0]])
GT = np.array([[0, 1, 0], [1, 1, 0]])


def test_dice_and_iou_by_hand():
    result = evaluate(PRED, GT)
    # Class 1: TP 2, FP 1 (0, 2), FN 1 (1, 0): Dice 4/6, IoU 2/4. Class 0 mirrors it.
    assert result["num_classes"] == 2
    assert result["dice"] == pytest.approx([4 / 6, 4 / 6])
    assert result["iou"] == pytest.approx([0.5, 0.5])
    assert result["foreground_dice"] == pytest.approx(4 / 6)
    assert result["pixels"] == 6
    assert "objects" not in result


def test_absent_class_is_none_and_left_out_of_the_mean():
    pred = np.array([[0, 1, 3], [3, 3, 0]])
    gt = np.array([[0, 1, 3], [3, 0, 0]])
    result = evaluate(pred, gt, num_classes=4)
    assert result["dice"][2] is None and result["iou"][2] is None
    # Class 1 perfect; class 3: TP 2, FP 1 -> Dice 4/5, IoU 2/3.
    assert result["dice"][1] == 1.0 and result["dice"][3] == pytest.approx(0.8)
    assert result["foreground_dice"] == pytest.approx(0.9)
    assert result["foreground_iou"] == pytest.approx((1 + 2 / 3) / 2)


def test_object_f1_by_hand():
    gt = np.zeros((6, 8), np.int32)
    gt[0:2, 0:2] = 1  # A, 4 px
    gt[0:2, 4:6] = 2  # B, 4 px
    gt[4:6, 0] = 3  # C, 2 px
    pred = np.zeros_like(gt)
    pred[0:2, 0:2] = 5  # A exactly: IoU 1
    pred[0:2, 4] = 6  # half of B: IoU 2/4 = 0.5, a match at >= 0.5
    pred[4:6, 6:8] = 7  # nothing there: false positive; C is missed
    objects = evaluate(pred, gt, instances=True)["objects"]
    assert objects == {
        "true": 3,
        "predicted": 3,
        "matched": 2,
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }
    assert match_objects(pred, gt, iou_threshold=0.6)["matched"] == 1


def test_a_binary_prediction_is_split_into_components():
    gt = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[1, 1, 0, 1, 1]])
    result = evaluate(pred, gt, instances=True)
    assert result["objects"]["matched"] == 2
    assert result["dice"] == [1.0, 1.0]


def test_one_object_cannot_match_twice():
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[3, 3, 4, 4]])  # each half has IoU 0.5 with the one true object
    objects = match_objects(pred, gt)
    assert objects["matched"] == 1 and objects["f1"] == pytest.approx(2 / 3)


def test_nothing_anywhere():
    empty = np.zeros((3, 3), np.int32)
    result = evaluate(empty, empty, instances=True)
    assert result["foreground_dice"] is None and result["objects"]["f1"] is None


def test_refuses_bad_arrays():
    with pytest.raises(InvalidImage, match="differ in shape"):
        evaluate(PRED, GT[:, :2])
    with pytest.raises(InvalidImage, match="integers"):
        evaluate(PRED.astype(np.float32), GT)
    with pytest.raises(InvalidImage, match="num_classes"):
        evaluate(PRED * 5, GT, num_classes=2)


def test_paths_in_every_format(tmp_path):
    import tifffile
    import zarr
    from PIL import Image

    Image.fromarray(PRED.astype(np.uint8)).save(tmp_path / "pred.png")
    tifffile.imwrite(tmp_path / "gt.tif", GT.astype(np.int32))
    zarr.create_array(str(tmp_path / "gt.zarr"), data=GT.astype(np.uint16))
    group = zarr.open_group(str(tmp_path / "gt.ome.zarr"), mode="w")
    group.create_array("0", data=GT[None, None].astype(np.uint8))  # (t, c, y, x)-like
    expected = evaluate(PRED, GT)
    for gt_name in ("gt.tif", "gt.zarr", "gt.ome.zarr"):
        assert evaluate_paths(tmp_path / "pred.png", tmp_path / gt_name) == expected


def test_readers(tmp_path):
    import tifffile
    from PIL import Image

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for name in ("rgb.png", "rgb.tif"):
        np.testing.assert_array_equal(read_array(tmp_path / name), np.moveaxis(rgb, -1, 0))
    with pytest.raises(InvalidImage, match="channels"):
        read_labels(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((2, 2), np.float32))
    with pytest.raises(InvalidImage, match="float32"):
        read_labels(tmp_path / "float.tif")
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(UnsupportedInput):
        read_array(tmp_path / "x.jpg")


def test_nodata_pixels_are_left_out_of_every_score():
    """255 (no data) in the prediction or the ground truth counts in no class: the scores are
    those of the other pixels, by hand."""
    pred = np.array([[0, 1, 1, 255], [0, 1, 0, 255]])
    gt = np.array([[0, 1, 0, 1], [1, 1, 0, 255]])
    result = evaluate(pred, gt, nodata=255)
    assert result == {**evaluate(PRED, GT), "nodata_pixels": 2}
    assert (
        evaluate(pred, gt, nodata=255, instances=True)["objects"]
        == evaluate(PRED, GT, instances=True)["objects"]
    )
    with pytest.raises(InvalidImage, match="255"):
        evaluate(pred, gt, num_classes=2)


def test_paths_take_the_no_data_label_the_mask_declares(tmp_path):
    import tifffile
    import zarr

    from unet.io.omezarr import create_label_image

    pred = np.array([[0, 1, 1, 255], [0, 1, 0, 255]], np.uint8)
    level0 = create_label_image(
        tmp_path / "mask.zarr", pred.shape, (2, 4), class_names=["a", "b"], colours=[(0, 0, 0)] * 2
    )
    level0[...] = pred
    zarr.open_group(tmp_path / "mask.zarr", mode="r+").attrs["unet"] = {"nodata": 255}
    tifffile.imwrite(tmp_path / "gt.tif", np.array([[0, 1, 0, 1], [1, 1, 0, 1]], np.uint8))
    result = evaluate_paths(tmp_path / "mask.zarr", tmp_path / "gt.tif")
    assert result["nodata_pixels"] == 2 and result["pixels"] == 6
    assert result["dice"] == pytest.approx([4 / 6, 4 / 6])
