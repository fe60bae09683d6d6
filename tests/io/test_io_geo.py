"""GeoTIFF ingest and georeferencing: CRS, transform, nodata and band names kept from file to mask."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import tifffile
import xarray
import zarr
from geodata import BANDS, CHUNK, EPSG, NODATA, SHAPE, TRANSFORM, write_geotiff, write_model

from unet.config import SegmentParameters
from unet.engine.run import segment
from unet.errors import ChannelMismatch, InvalidImage
from unet.io.geo import Georeference, check_bands, read_georeference, write_georeference
from unet.io.ingest import ingest
from unet.io.omezarr import MASK_NODATA
from unet.io.pyramid import build_pyramid
from unet.io.source import open_image


@pytest.fixture
def ingested(tmp_path):
    pixels = write_geotiff(tmp_path / "scene.tif")
    url = str(tmp_path / "scene.zarr")
    ingest(tmp_path / "scene.tif", url, chunks=(CHUNK, CHUNK), progress=False)
    return url, pixels


def test_georeference_orders_and_scales():
    from rasterio.crs import CRS

    wkt = CRS.from_epsg(EPSG).to_wkt()
    georeference = Georeference(wkt, TRANSFORM, 0.0, BANDS)
    assert georeference.scaled(4).transform == (40.0, 0.0, 500000.0, 0.0, -40.0, 5000000.0)
    attributes = georeference.to_attributes((160, 200))
    conventions = [c["name"] for c in attributes["zarr_conventions"]]
    assert conventions == ["spatial:", "proj:"]
    assert attributes["spatial:transform"] == attributes["transform"] == list(TRANSFORM)
    assert attributes["spatial:dimensions"] == ["y", "x"]
    assert attributes["spatial:shape"] == [160, 200]
    assert attributes["proj:wkt2"].startswith("PROJCRS[")
    assert (
        CRS.from_wkt(attributes["proj:wkt2"])
        == CRS.from_wkt(attributes["crs"])
        == CRS.from_wkt(wkt)
    )
    assert (attributes["nodata"], attributes["band_names"]) == (0.0, list(BANDS))
    assert "geo" not in attributes and "spatial_ref" not in attributes
    read = Georeference.from_attributes(attributes)
    assert CRS.from_wkt(read.crs_wkt) == CRS.from_wkt(wkt)
    assert (read.transform, read.nodata, read.band_names) == (TRANSFORM, 0.0, BANDS)
    assert Georeference.from_attributes({}) is None
    without_crs = Georeference(None, TRANSFORM).to_attributes()
    assert [c["name"] for c in without_crs["zarr_conventions"]] == ["spatial:"]
    assert Georeference.from_attributes(without_crs) == Georeference(None, TRANSFORM)
    labels = georeference.for_labels(had_nodata=True)
    assert (labels.nodata, labels.band_names) == (float(MASK_NODATA), None)
    assert georeference.for_labels(had_nodata=False).nodata is None


def test_calibration_is_the_pixel_size_in_the_crs_unit():
    """What becomes the OME scale and unit: metres for a projected CRS (a US survey foot CRS
    converted), the transform's units and no unit for degrees or without a CRS."""
    from rasterio.crs import CRS

    def calibration(crs, transform=TRANSFORM):
        wkt = CRS.from_string(crs).to_wkt() if crs else None
        return Georeference(wkt, transform).calibration()

    assert calibration("EPSG:32633") == ((10.0, 10.0), "meter")
    assert calibration("EPSG:32633", (3.0, 4.0, 0, 4.0, -3.0, 0)) == ((5.0, 5.0), "meter")
    (y, x), unit = calibration("EPSG:2263", (10.0, 0, 0, 0, -20.0, 0))  # US survey feet
    assert unit == "meter" and (y, x) == pytest.approx((6.096012, 3.048006))
    assert calibration("EPSG:4326", (0.001, 0, 10, 0, -0.001, 50)) == ((0.001, 0.001), None)
    assert calibration(None) == ((10.0, 10.0), None)


def test_ingested_scene_is_calibrated_in_metres_for_ome_readers(ingested):
    """ome-zarr-models reads the scale of each level in metres, not pixels."""
    from ome_zarr_models.v05.image import Image

    url, _ = ingested
    build_pyramid(url, max_side=64)
    image = Image.from_zarr(zarr.open_group(url, mode="r"))
    (multiscale,) = image.attributes.ome.multiscales
    assert [(a.name, a.unit) for a in multiscale.axes] == [
        ("c", None),
        ("y", "meter"),
        ("x", "meter"),
    ]
    scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
    assert scales == [[1.0, 10.0 * 2**k, 10.0 * 2**k] for k in range(3)]


def test_georeference_of_stores_written_before_is_still_read():
    """Stores written before GeoZarr's conventions kept a ``geo`` record."""
    record = {"crs_wkt": "WKT", "transform": list(TRANSFORM), "nodata": 0.0, "band_names": None}
    attributes = {"geo": record, "GeoTransform": "500000.0 10.0 0.0 5000000.0 0.0 -10.0"}
    assert Georeference.from_attributes(attributes) == Georeference("WKT", TRANSFORM, 0.0, None)


def test_georeference_refuses_a_broken_transform():
    with pytest.raises(InvalidImage, match="six finite numbers"):
        Georeference(None, (10.0, 0.0, float("nan"), 0.0, -10.0, 0.0))


def test_ingest_keeps_pixels_crs_transform_nodata_and_band_names(ingested):
    from rasterio.crs import CRS

    url, pixels = ingested
    source = open_image(url)
    assert source.shape == SHAPE and source.dtype == "uint16" and source.chunks == (CHUNK, CHUNK)
    assert np.array_equal(source.read(slice(None), slice(None)), pixels)
    group = zarr.open_group(url, mode="r")
    for attributes in (group.attrs.asdict(), group["0"].attrs.asdict()):
        georeference = Georeference.from_attributes(attributes)
        assert CRS.from_wkt(georeference.crs_wkt).to_epsg() == EPSG
        assert georeference.transform == TRANSFORM
        assert georeference.nodata == NODATA and georeference.band_names == BANDS
        assert attributes["spatial:transform"] == list(TRANSFORM)
        assert CRS.from_wkt(attributes["proj:wkt2"]).to_epsg() == EPSG
    channels = group.attrs["ome"]["omero"]["channels"]
    assert [channel["label"] for channel in channels] == list(BANDS)
    assert read_georeference(source) == Georeference.from_attributes(group.attrs.asdict())


def test_ingest_reads_a_cloud_optimized_geotiff(tmp_path):
    import rasterio.shutil

    pixels = write_geotiff(tmp_path / "scene.tif", (13, 40, 50))
    rasterio.shutil.copy(tmp_path / "scene.tif", tmp_path / "cog.tif", driver="COG")
    source = ingest(tmp_path / "cog.tif", tmp_path / "cog.zarr", chunks=(16, 16), progress=False)
    assert np.array_equal(source.read(slice(None), slice(None)), pixels)
    georeference = read_georeference(source)
    assert georeference.transform == TRANSFORM and georeference.nodata == NODATA
    assert georeference.band_names is None, "13 bands, 4 described: the names are not kept"


def test_ingest_reads_window_by_window(tmp_path, monkeypatch):
    """Each read covers at most one band of output chunks: memory does not grow with the scene."""
    import unet.io.ingest as ingest_module
    from unet.io.geo import open_geotiff

    windows = []

    def recording(path):
        context = open_geotiff(path)
        geotiff = context.__enter__()
        read = geotiff.read

        def read_window(rows, cols):
            windows.append((rows.stop - rows.start, cols.stop - cols.start))
            return read(rows, cols)

        geotiff.read = read_window
        try:
            yield geotiff
        finally:
            context.__exit__(None, None, None)

    import contextlib

    monkeypatch.setattr(ingest_module, "open_geotiff", contextlib.contextmanager(recording))
    write_geotiff(tmp_path / "scene.tif", (4, 160, 600))
    ingest(tmp_path / "scene.tif", tmp_path / "scene.zarr", chunks=(32, 32), progress=False)
    assert len(windows) > 1
    assert max(h for h, _ in windows) == 32
    assert max(w for _, w in windows) == 32 * ingest_module.BLOCK_CHUNKS < 600


def test_pyramid_levels_get_scaled_transforms(ingested):
    url, _ = ingested
    build_pyramid(url, max_side=64)
    georeference = read_georeference(open_image(url))
    write_georeference(url, georeference)
    group = zarr.open_group(url, mode="r")
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    assert paths == ["0", "1", "2"]
    for k, path in enumerate(paths):
        attributes = group[path].attrs.asdict()
        scaled = [10.0 * 2**k, 0, 500000.0, 0, -10.0 * 2**k, 5e6]
        assert attributes["spatial:transform"] == attributes["transform"] == scaled
        assert attributes["spatial:shape"] == list(group[path].shape[-2:])
        # rioxarray reads each level's own CRS and transform, one level at a time.
        others = [p for p in paths if p != path]
        level = xarray.open_zarr(url, consolidated=False, drop_variables=others)[path]
        assert level.rio.crs.to_epsg() == EPSG
        assert tuple(level.rio.transform())[:6] == tuple(scaled)


def test_plain_tiff_is_not_georeferenced(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.ones((16, 16), np.uint16))
    source = ingest(tmp_path / "plain.tif", tmp_path / "plain.zarr", progress=False)
    assert read_georeference(source) is None


def test_segment_defaults_nodata_skips_nodata_chunk_and_georeferences_mask(
    ingested, tmp_path, client
):
    url, pixels = ingested
    model = write_model(tmp_path / "m.safetensors")
    out = str(tmp_path / "mask.zarr")
    params = SegmentParameters(model=model, tile_size=100, device="cpu")
    report = segment(url, out, params, client=client)

    assert report.chunks_total == 12 and report.chunks_skipped == 1
    assert report.chunks_computed == 11
    group = zarr.open_group(out, mode="r")
    mask = group["0"][...]
    nodata_pixels = np.all(pixels == NODATA, axis=0)
    assert (mask[nodata_pixels] == MASK_NODATA).all()
    assert (mask[~nodata_pixels] != MASK_NODATA).all()
    assert len(np.unique(mask[~nodata_pixels])) > 1, "a constant mask would make this weak"
    assert group.attrs["unet"]["fingerprint"]["parameters"]["nodata"] == NODATA
    for attributes in (group.attrs.asdict(), group["0"].attrs.asdict()):
        georeference = Georeference.from_attributes(attributes)
        assert georeference.transform == TRANSFORM
        assert georeference.crs_wkt == read_georeference(open_image(url)).crs_wkt
        assert georeference.nodata == MASK_NODATA and georeference.band_names is None
    # The geospatial stack reads the mask as it is: xarray opens it, rioxarray finds its CRS,
    # transform and nodata.
    opened = xarray.open_zarr(out, consolidated=False)
    assert np.array_equal(opened["0"].values, mask)
    assert opened["0"].rio.crs.to_epsg() == EPSG
    assert tuple(opened["0"].rio.transform())[:6] == TRANSFORM
    assert opened["0"].rio.nodata == MASK_NODATA
    assert opened.rio.crs.to_epsg() == EPSG, "the group's attributes say it too"

    # The same command again resumes: the stored nodata gives the same fingerprint.
    again = segment(url, out, params, client=client)
    assert again.chunks_resumed == 12 and again.chunks_computed == 0


def test_wrong_band_count_is_refused(ingested, tmp_path):
    url, _ = ingested
    model = write_model(tmp_path / "m.safetensors", in_channels=3, band_names=None)
    params = SegmentParameters(model=model, tile_size=100, device="cpu")
    with pytest.raises(ChannelMismatch, match="4 channels but model .* takes 3"):
        segment(url, str(tmp_path / "mask.zarr"), params)


def test_wrong_band_names_are_refused_naming_both_lists(ingested, tmp_path):
    url, _ = ingested
    model = write_model(tmp_path / "m.safetensors", band_names=("red", "green", "blue", "nir"))
    params = SegmentParameters(model=model, tile_size=100, device="cpu")
    with pytest.raises(ChannelMismatch) as error:
        segment(url, str(tmp_path / "mask.zarr"), params)
    message = str(error.value)
    assert "['B02', 'B03', 'B04', 'B08']" in message
    assert "['red', 'green', 'blue', 'nir']" in message
    assert "\n" not in message


def test_check_bands_needs_names_on_both_sides():
    check_bands("x", 4, None, BANDS)
    check_bands("x", 4, BANDS, None)
    check_bands("x", 4, BANDS, list(BANDS))
    with pytest.raises(ChannelMismatch, match=r"3 bands \['B02', 'B03', 'B04'\]"):
        check_bands("x", 3, BANDS[:3], BANDS)
