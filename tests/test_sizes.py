"""Sizes: width first and labelled, whatever the array's axis order, in every output."""

from __future__ import annotations

import sys
from pathlib import Path

from unet.engine.report import SegmentReport
from unet.sizes import shape_label, shapes_label, size_label

UNET = str(Path(sys.executable).with_name("unet"))


def test_width_comes_first_and_the_order_is_said():
    assert size_label(8192, 6144) == "8192 × 6144 px (width × height)"
    # Arrays are (..., Y, X): 500 rows of 700 columns are 700 wide.
    assert shape_label((1, 500, 700)) == "700 × 500 px (width × height)"
    assert shape_label((500, 700)) == shape_label((3, 500, 700))
    assert shapes_label([[500, 700], (250, 350)]) == "700 × 500, 350 × 250 px (width × height)"


def test_the_report_json_labels_the_size():
    report = SegmentReport(input="i", output="o", shape=(1, 500, 700), chunks_total=1)
    assert report.to_dict()["size"] == "700 × 500 px (width × height)"
    assert list(report.to_dict()["shape"]) == [1, 500, 700]  # (C, Y, X), as before
