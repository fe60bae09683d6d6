"""End to end: Zarr in, Dask per-chunk inference, OME-Zarr out, resume, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from testdata import assert_same_mask, reference_mask, write_checkpoint, write_image

from unet.config import SegmentParameters
from unet.engine.ledger import ATTRIBUTE, LEDGER_PATH, create_ledger
from unet.engine.run import segment
from unet.errors import ChannelMismatch, FingerprintMismatch, InvalidTileSize, OutputExists
from unet.io.omezarr import MASK_NODATA


@pytest.mark.parametrize(
    "shape, chunks, channels",
    [((150, 230), (64, 48), 1), ((3, 97, 71), (3, 40, 40), 3), ((5, 9), (4, 4), 1)],
)
def test_mask_equals_predict_array_argmax(tmp_path, client, shape, chunks, channels):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", in_channels=channels)
    raw = write_image(tmp_path / "in.zarr", shape, chunks)
    raw_cyx = raw if raw.ndim == 3 else raw[None]
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=220, device="cpu")
    report = segment(str(tmp_path / "in.zarr"), str(out), params, client=client)

    group = zarr.open_group(str(out), mode="r")
    mask = group["0"][...]
    assert mask.dtype == np.uint8 and mask.shape == raw_cyx.shape[1:]
    assert group["0"].chunks == chunks[-2:]
    expected, near_tie = reference_mask(ckpt, raw_cyx, 220)
    assert_same_mask(mask, expected, near_tie)
    assert 0 < (mask == 1).mean() < 1, "a constant mask would make the comparison weak"
    assert report.chunks_total == report.chunks_computed == group["0"].nchunks
    assert sorted(group) == ["0"], "a finished mask holds its levels and nothing else"
    assert report.chunks_skipped == report.chunks_resumed == 0
    assert sum(report.class_pixels) == mask.size
    assert report.class_pixels[1] == int((mask == 1).sum())
    assert group.attrs["unet"]["complete"] is True


def test_ome_metadata_and_pyramid(tmp_path, client):
    from ome_zarr_models.v05.image_label import ImageLabel

    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    write_image(tmp_path / "in.zarr", (300, 170), (64, 64))
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=108, device="cpu")
    segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    from unet.io.pyramid import build_pyramid

    # Force a pyramid on this small image by rebuilding with a small max side.
    build_pyramid(str(out), reduction="nearest", max_side=64)
    group = zarr.open_group(str(out), mode="r")
    ImageLabel.from_zarr(group)
    level0 = group["0"][...]
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    assert paths == ["0", "1", "2", "3"]
    for k, path in enumerate(paths):
        assert np.array_equal(group[path][...], level0[:: 2**k, :: 2**k])
    labels = group.attrs["ome"]["image-label"]
    assert [p["class"] for p in labels["properties"]] == ["background", "foreground"]


def test_probabilities_are_softmax_of_the_mask(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2, num_classes=3)
    write_image(tmp_path / "in.zarr", (70, 90), (32, 32))
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=76, device="cpu", probabilities=True)
    segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    group = zarr.open_group(str(out), mode="r")
    probabilities = group["probabilities"][...]
    assert probabilities.dtype == np.float16 and probabilities.shape == (3, 70, 90)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=3e-3)
    mask = group["0"][...]
    confident = np.sort(probabilities, axis=0)[-1] - np.sort(probabilities, axis=0)[-2] > 1e-2
    assert np.array_equal(probabilities.argmax(0)[confident], mask[confident])


def test_resume_computes_only_missing_chunks_bit_identical(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    write_image(tmp_path / "in.zarr", (130, 100), (32, 32))
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=76, device="cpu")
    segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    group = zarr.open_group(str(out), mode="r+")
    complete = group["0"][...]

    # A crash after some chunks: the rest are neither written nor marked, the run not complete.
    lost = [(0, 1), (2, 2), (4, 3)]
    create_ledger(group, (5, 4))
    group[LEDGER_PATH][...] = 1
    group.attrs[ATTRIBUTE] = {**group.attrs[ATTRIBUTE], "complete": False}
    for i, j in lost:
        group[LEDGER_PATH][i, j] = 0
        group["0"][i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32] = 255
    report = segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    assert report.chunks_computed == len(lost)
    assert report.chunks_resumed == report.chunks_total - len(lost)
    resumed = zarr.open_group(str(out), mode="r")
    assert np.array_equal(resumed["0"][...], complete)
    assert LEDGER_PATH not in resumed and resumed.attrs[ATTRIBUTE]["complete"] is True


def test_changed_fingerprint_is_refused_unless_overwrite(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    write_image(tmp_path / "in.zarr", (40, 40), (32, 32))
    out = str(tmp_path / "out.zarr")
    segment(
        str(tmp_path / "in.zarr"), out, SegmentParameters(model=ckpt, tile_size=76), client=client
    )
    changed = SegmentParameters(model=ckpt, tile_size=80)
    with pytest.raises(FingerprintMismatch, match="parameters.tile_size") as info:
        segment(str(tmp_path / "in.zarr"), out, changed, client=client)
    assert "--overwrite" in str(info.value)
    overwritten = SegmentParameters(model=ckpt, tile_size=80, overwrite=True)
    report = segment(str(tmp_path / "in.zarr"), out, overwritten, client=client)
    assert report.chunks_computed == report.chunks_total


def test_foreign_output_and_bad_settings_are_refused(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors")
    write_image(tmp_path / "in.zarr", (40, 40), (32, 32))
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w")
    with pytest.raises(OutputExists):
        segment(
            str(tmp_path / "in.zarr"), str(foreign), SegmentParameters(model=ckpt), client=client
        )
    with pytest.raises(InvalidTileSize):
        segment(
            str(tmp_path / "in.zarr"),
            str(tmp_path / "o.zarr"),
            SegmentParameters(model=ckpt, tile_size=500),
            client=client,
        )
    rgb = write_checkpoint(tmp_path / "rgb.safetensors", in_channels=3)
    with pytest.raises(ChannelMismatch, match="1 channels"):
        segment(
            str(tmp_path / "in.zarr"),
            str(tmp_path / "o.zarr"),
            SegmentParameters(model=rgb),
            client=client,
        )
    assert not (tmp_path / "o.zarr").exists(), "a refused run must write nothing"


def test_skip_background_computes_only_tissue_chunks(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    image = np.full((256, 256), 240, np.uint8)  # bright brightfield background
    rng = np.random.default_rng(0)
    image[20:60, 30:70] = rng.integers(40, 120, (40, 40))  # dark tissue in chunk (0, 0)
    array = zarr.create_array(
        str(tmp_path / "in.zarr"), shape=image.shape, chunks=(64, 64), dtype="uint8"
    )
    array[...] = image
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=108, skip_background=True)
    report = segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    assert report.chunks_total == 16
    assert 1 <= report.chunks_computed <= 4
    assert report.chunks_skipped == 16 - report.chunks_computed
    mask = zarr.open_group(str(out), mode="r")["0"][...]
    assert (mask[192:, 192:] == 0).all()


def test_nodata_pixels_get_the_nodata_label_and_nodata_chunks_are_skipped(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    raw = write_image(tmp_path / "in.zarr", (64, 96), (32, 32))
    array = zarr.open_array(str(tmp_path / "in.zarr"), mode="r+")
    raw[:, 64:] = 0  # the right third: two whole chunks of no data
    raw[5, 5] = 0
    array[...] = raw
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=76, nodata=0)
    report = segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    assert report.chunks_skipped == 2 and report.chunks_computed == 4
    group = zarr.open_group(str(out), mode="r")
    mask = group["0"][...]
    # No-data is a label no class uses, declared as the arrays' fill value and in "unet".
    assert MASK_NODATA == 255 and group.attrs["unet"]["nodata"] == MASK_NODATA
    assert all(group[path].fill_value == MASK_NODATA for path in group.array_keys()
               if path.isdigit())
    assert (mask[:, 64:] == MASK_NODATA).all() and mask[5, 5] == MASK_NODATA
    expected = raw == 0  # every pixel equal to the no-data value, and no other
    assert ((mask == MASK_NODATA) == expected).all()  # the model's labels elsewhere, class 0 too
    assert report.nodata_pixels == expected.sum()
    assert sum(report.class_pixels) == mask.size - expected.sum()
    assert report.class_pixels == [int((mask == k).sum()) for k in (0, 1)]
    # The chunks of no-data only are not stored: the fill value says it.
    assert not (out / "0" / "c" / "0" / "2").exists()


def test_skipped_background_is_class_0_in_a_mask_with_nodata(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    image = np.full((128, 128), 240, np.uint8)  # bright background
    image[:, :32] = 7  # no data down the left edge
    image[70:100, 70:100] = np.random.default_rng(0).integers(40, 120, (30, 30))  # tissue
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(32, 32))
    out = tmp_path / "out.zarr"
    params = SegmentParameters(model=ckpt, tile_size=76, skip_background=True, nodata=7)
    report = segment(str(tmp_path / "in.zarr"), str(out), params, client=client)
    assert report.chunks_skipped >= 8
    mask = zarr.open_group(str(out), mode="r")["0"][...]
    assert (mask[:, :32] == MASK_NODATA).all()
    assert (mask[:32, 32:64] == 0).all()  # background: class 0, written over the fill value
    assert (mask[:, 32:] != MASK_NODATA).all()


def test_a_run_without_nodata_declares_none(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    write_image(tmp_path / "in.zarr", (40, 40), (32, 32))
    out = tmp_path / "out.zarr"
    segment(str(tmp_path / "in.zarr"), str(out), SegmentParameters(model=ckpt), client=client)
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["unet"]["nodata"] is None and group["0"].fill_value == 0


def test_report_json_keys(tmp_path, client):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    write_image(tmp_path / "in.zarr", (40, 40), (32, 32))
    report = segment(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "o.zarr"),
        SegmentParameters(model=ckpt),
        client=client,
    )
    data = json.loads(json.dumps(report.to_dict()))
    for key in (
        "chunks_total",
        "chunks_computed",
        "chunks_skipped",
        "chunks_resumed",
        "megapixels",
        "seconds",
        "megapixels_per_second",
    ):
        assert key in data
    assert data["megapixels"] == pytest.approx(40 * 40 / 1e6)
