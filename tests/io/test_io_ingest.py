"""ingest: exact pixels from tiled TIFF and PNG, errors, no partial output, bounded memory."""

from __future__ import annotations

import shutil
import tracemalloc
import uuid

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.image import Image
from PIL import Image as PILImage

from unet.errors import InputNotFound, InvalidImage, OutputExists, UnsupportedInput
from unet.io import ingest as ingest_module
from unet.io.ingest import ingest


def _rgb(shape=(150, 230)):
    return np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _entries(folder):
    return sorted(path.name for path in folder.iterdir())


def test_tiled_rgb_tiff_is_copied_exactly(tmp_path):
    pixels = _rgb()
    tifffile.imwrite(
        tmp_path / "in.tif",
        pixels,
        tile=(64, 64),
        photometric="rgb",
        compression="zlib",
        resolution=(4.0, 2.0),
        resolutionunit="CENTIMETER",
    )
    source = ingest(
        tmp_path / "in.tif", str(tmp_path / "out.zarr"), chunks=(48, 80), progress=False
    )
    assert (source.shape, source.dtype, source.chunks) == ((3, 150, 230), "uint8", (48, 80))
    assert source.pixel_size == (5000.0, 2500.0)  # micrometres per pixel (y, x)
    np.testing.assert_array_equal(
        source.read(slice(0, 150), slice(0, 230)), np.moveaxis(pixels, -1, 0)
    )
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    Image.from_zarr(group)
    assert [c["label"] for c in group.attrs["ome"]["omero"]["channels"]] == ["red", "green", "blue"]
    assert _entries(tmp_path) == ["in.tif", "out.zarr"]


@pytest.mark.parametrize("tiled", [True, False])
def test_grayscale_tiff_becomes_one_channel(tmp_path, tiled):
    pixels = np.random.default_rng(3).integers(0, 65536, (130, 97), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", pixels, tile=(32, 32) if tiled else None, rowsperstrip=16)
    source = ingest(
        tmp_path / "in.tif", str(tmp_path / "out.zarr"), chunks=(40, 40), progress=False
    )
    assert (source.shape, source.dtype, source.pixel_size) == ((1, 130, 97), "uint16", None)
    np.testing.assert_array_equal(source.read(slice(0, 130), slice(0, 97)), pixels[None])


def test_planar_bigtiff(tmp_path):
    pixels = np.moveaxis(_rgb((70, 90)), -1, 0)
    tifffile.imwrite(
        tmp_path / "in.tif",
        pixels,
        tile=(32, 32),
        photometric="rgb",
        planarconfig="separate",
        bigtiff=True,
    )
    source = ingest(tmp_path / "in.tif", str(tmp_path / "out.zarr"), progress=False)
    np.testing.assert_array_equal(source.read(slice(0, 70), slice(0, 90)), pixels)


def test_png_exact_and_jpeg_shape(tmp_path):
    pixels = _rgb((40, 50))
    PILImage.fromarray(pixels).save(tmp_path / "in.png")
    PILImage.fromarray(pixels).save(tmp_path / "in.jpg", quality=90)
    source = ingest(
        tmp_path / "in.png", str(tmp_path / "png.zarr"), chunks=(16, 16), progress=False
    )
    np.testing.assert_array_equal(
        source.read(slice(0, 40), slice(0, 50)), np.moveaxis(pixels, -1, 0)
    )
    source = ingest(tmp_path / "in.jpg", str(tmp_path / "jpg.zarr"), progress=False)
    assert (source.shape, source.dtype) == ((3, 40, 50), "uint8")


def test_grayscale_png_and_pyramid(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, (20, 1100), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "in.png")
    source = ingest(
        tmp_path / "in.png", str(tmp_path / "out.zarr"), chunks=(16, 512), progress=False
    )
    assert source.shape == (1, 20, 1100) and source.level_paths == ("0", "1")
    level1 = zarr.open_array(str(tmp_path / "out.zarr" / "1"), mode="r")
    assert level1.shape == (1, 10, 550)


def test_memory_url_output(tmp_path):
    pixels = _rgb((30, 20))
    PILImage.fromarray(pixels).save(tmp_path / "in.png")
    url = f"memory://{uuid.uuid4().hex}.zarr"
    source = ingest(tmp_path / "in.png", url, progress=False)
    assert source.url == url
    np.testing.assert_array_equal(
        source.read(slice(0, 30), slice(0, 20)), np.moveaxis(pixels, -1, 0)
    )


def test_progress_false_is_silent(tmp_path, capfd):
    PILImage.fromarray(_rgb((8, 8))).save(tmp_path / "in.png")
    ingest(tmp_path / "in.png", str(tmp_path / "out.zarr"), progress=False)
    assert capfd.readouterr() == ("", "")


def test_missing_input(tmp_path):
    with pytest.raises(InputNotFound):
        ingest(tmp_path / "nope.tif", str(tmp_path / "out.zarr"))


@pytest.mark.parametrize("content", [b"hello, not an image", b"II*\x00garbage"])
def test_unreadable_input_writes_nothing(tmp_path, content):
    (tmp_path / "in.tif").write_bytes(content)
    with pytest.raises(UnsupportedInput, match="PNG and JPEG") as caught:
        ingest(tmp_path / "in.tif", str(tmp_path / "out.zarr"), progress=False)
    assert "\n" not in str(caught.value)
    assert _entries(tmp_path) == ["in.tif"]


def test_folder_input(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(UnsupportedInput, match="folder"):
        ingest(tmp_path / "in", str(tmp_path / "out.zarr"))


def test_stack_is_refused(tmp_path):
    tifffile.imwrite(
        tmp_path / "in.tif", np.zeros((3, 8, 8, 2), np.uint8), photometric="minisblack"
    )
    with pytest.raises(InvalidImage, match="one plane per file"):
        ingest(tmp_path / "in.tif", str(tmp_path / "out.zarr"), progress=False)
    assert _entries(tmp_path) == ["in.tif"]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    PILImage.fromarray(_rgb((8, 8))).save(tmp_path / "in.png")
    PILImage.fromarray(_rgb((6, 5))[..., 0]).save(tmp_path / "gray.png")
    ingest(tmp_path / "in.png", str(tmp_path / "out.zarr"), progress=False)
    with pytest.raises(OutputExists, match="--overwrite"):
        ingest(tmp_path / "gray.png", str(tmp_path / "out.zarr"), progress=False)
    source = ingest(
        tmp_path / "gray.png", str(tmp_path / "out.zarr"), overwrite=True, progress=False
    )
    assert source.shape == (1, 6, 5)
    assert _entries(tmp_path) == ["gray.png", "in.png", "out.zarr"]


def test_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch):
    PILImage.fromarray(_rgb((8, 8))).save(tmp_path / "in.png")
    ingest(tmp_path / "in.png", str(tmp_path / "old.zarr"), progress=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ingest_module, "build_pyramid", broken)
    with pytest.raises(OSError, match="disk full"):
        ingest(tmp_path / "in.png", str(tmp_path / "new.zarr"), progress=False)
    with pytest.raises(OSError, match="disk full"):
        ingest(tmp_path / "in.png", str(tmp_path / "old.zarr"), overwrite=True, progress=False)
    assert _entries(tmp_path) == ["in.png", "old.zarr"]
    assert zarr.open_array(str(tmp_path / "old.zarr" / "0"), mode="r").shape == (3, 8, 8)


def test_tiled_bigtiff_is_ingested_in_bounded_memory(tmp_path):
    side, tile = 4096, 256

    def tiles():
        for row in range(0, side, tile):
            for col in range(0, side, tile):
                yy, xx = np.mgrid[row : row + tile, col : col + tile]
                yield ((yy * 7 + xx * 3) % 251).astype(np.uint8)

    tifffile.imwrite(
        tmp_path / "big.tif",
        tiles(),
        shape=(side, side),
        dtype=np.uint8,
        tile=(tile, tile),
        bigtiff=True,
        compression="zlib",
    )
    # Warm up once (one pyramid level included) so first-use imports and caches are not counted.
    tifffile.imwrite(tmp_path / "warm.tif", np.zeros((8, 1100), np.uint8), tile=(16, 16))
    ingest(tmp_path / "warm.tif", str(tmp_path / "warm.zarr"), chunks=(256, 256), progress=False)
    shutil.rmtree(tmp_path / "warm.zarr")

    tracemalloc.start()
    try:
        source = ingest(
            tmp_path / "big.tif", str(tmp_path / "big.zarr"), chunks=(256, 256), progress=False
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < side * side / 3, f"peak {peak / 2**20:.1f} MiB"
    assert source.level_paths == ("0", "1", "2")
    yy, xx = np.mgrid[1000:1300, 3900:4096]
    np.testing.assert_array_equal(
        source.read(slice(1000, 1300), slice(3900, 4096))[0], (yy * 7 + xx * 3) % 251
    )


def test_pyramidal_tiff_takes_level_0(tmp_path):
    pixels = _rgb((100, 130))
    with tifffile.TiffWriter(tmp_path / "in.tif") as tif:
        tif.write(pixels, subifds=1, tile=(32, 32), photometric="rgb")
        tif.write(pixels[::2, ::2], subfiletype=1, tile=(32, 32), photometric="rgb")
    source = ingest(tmp_path / "in.tif", str(tmp_path / "out.zarr"), progress=False)
    np.testing.assert_array_equal(
        source.read(slice(0, 100), slice(0, 130)), np.moveaxis(pixels, -1, 0)
    )


def test_svs_pixel_size(tmp_path):
    pixels = _rgb((40, 50))
    description = "Aperio Image Library v12.0.0\r\n50x40 (32x32) RGB|AppMag = 40|MPP = 0.2520"
    tifffile.imwrite(
        tmp_path / "in.svs", pixels, tile=(32, 32), photometric="rgb", description=description
    )
    source = ingest(tmp_path / "in.svs", str(tmp_path / "out.zarr"), progress=False)
    assert source.pixel_size == (0.252, 0.252)
    np.testing.assert_array_equal(
        source.read(slice(0, 40), slice(0, 50)), np.moveaxis(pixels, -1, 0)
    )


def test_url_input_is_refused(tmp_path):
    with pytest.raises(UnsupportedInput, match="local"):
        ingest("s3://bucket/slide.svs", str(tmp_path / "out.zarr"))
