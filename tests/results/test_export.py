"""Export of label masks: Cloud-Optimized GeoTIFF with overviews, polygons merged across chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import zarr
from geodata import CHUNK, EPSG, NODATA, TRANSFORM, write_geotiff, write_model
from rasterio.crs import CRS
from shapely.geometry import box, shape

from unet.config import SegmentParameters
from unet.engine.run import segment
from unet.errors import InvalidImage, InvalidParameter, OutputExists
from unet.io.geo import Georeference, write_georeference
from unet.io.ingest import ingest
from unet.io.omezarr import MASK_NODATA, create_label_image
from unet.results.export import export, open_mask
from unet.results.polygons import merge_across_borders

CLASSES = ["other", "field", "building"]
COLOURS = [(0, 0, 0), (60, 180, 75), (230, 25, 75)]
PIXEL_AREA = 100.0  # 10 m x 10 m


@pytest.fixture
def mask_url(tmp_path):
    """A 96 x 160 mask in 32 x 32 chunks with regions of known shape, georeferenced like test_geo.

    - class 1: a 30 x 32 rectangle over 4 chunks (rows 20..50, cols 16..48);
    - class 1: two 4 x 4 squares in different chunks touching only at the corner (64, 96);
    - class 2: a 10 x 10 square inside chunk (2, 0).
    """
    url = str(tmp_path / "mask.zarr")
    level0 = create_label_image(
        url, (96, 160), (32, 32), class_names=CLASSES, colours=COLOURS, name="mask"
    )
    labels = np.zeros((96, 160), np.uint8)
    labels[20:50, 16:48] = 1
    labels[64:68, 92:96] = 1
    labels[60:64, 96:100] = 1
    labels[70:80, 10:20] = 2
    level0[...] = labels
    write_georeference(url, Georeference(CRS.from_epsg(EPSG).to_wkt(), TRANSFORM, None, None))
    return url


@pytest.fixture
def pixel_mask_url(tmp_path):
    """The regions of ``mask_url`` in a mask without georeferencing (a microscopy slide's)."""
    url = str(tmp_path / "cells.zarr")
    level0 = create_label_image(
        url, (96, 160), (32, 32), class_names=CLASSES, colours=COLOURS, name="cells"
    )
    labels = np.zeros((96, 160), np.uint8)
    labels[20:50, 16:48] = 1
    labels[64:68, 92:96] = 1
    labels[60:64, 96:100] = 1
    labels[70:80, 10:20] = 2
    level0[...] = labels
    return url


def map_box(rows, cols):
    """The map-coordinate rectangle of pixel rows/cols (stop exclusive)."""
    a, _, c, _, e, f = TRANSFORM
    return box(c + a * cols[0], f + e * rows[1], c + a * cols[1], f + e * rows[0])


def read_features(path):
    import fiona

    with fiona.open(path) as source:
        crs = CRS.from_wkt(source.crs_wkt) if source.crs_wkt else None
        features = [(shape(f["geometry"]), dict(f["properties"])) for f in source]
    return features, crs


def test_cog_has_crs_transform_overviews_colours_and_labels(mask_url, tmp_path):
    result = export(mask_url, tmp_path / "mask.tif", blocksize=128)
    with rasterio.open(result.cog) as dataset:
        assert dataset.crs.to_epsg() == EPSG
        assert tuple(dataset.transform)[:6] == TRANSFORM
        assert dataset.nodata is None
        assert dataset.overviews(1) == [2]
        assert dataset.block_shapes == [(128, 128)]
        assert dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(dataset.read(1), zarr.open_array(mask_url + "/0")[...])
        assert dataset.colormap(1)[2] == (230, 25, 75, 255)
        assert json.loads(dataset.tags(1)["class_names"]) == CLASSES


def test_cog_without_the_cog_driver_still_gets_overviews(mask_url, tmp_path, monkeypatch):
    import unet.results.export

    monkeypatch.setattr(unet.results.export, "has_cog_driver", lambda: False)
    result = export(mask_url, tmp_path / "mask.tif", blocksize=128)
    with rasterio.open(result.cog) as dataset:
        assert dataset.overviews(1) == [2]
        assert dataset.crs.to_epsg() == EPSG
        assert np.array_equal(dataset.read(1), zarr.open_array(mask_url + "/0")[...])


def test_polygons_crossing_chunk_borders_come_out_whole(mask_url, tmp_path):
    result = export(mask_url, tmp_path / "mask.tif", vector=tmp_path / "mask.gpkg")
    features, crs = read_features(result.vector)
    assert crs.to_epsg() == EPSG
    assert result.polygons == len(features) == 4
    rectangles = [g for g, p in features if p["value"] == 1 and g.area > 16 * PIXEL_AREA]
    assert len(rectangles) == 1
    assert rectangles[0].area == 30 * 32 * PIXEL_AREA
    assert rectangles[0].equals(map_box((20, 50), (16, 48)))
    corner = [g for g, p in features if p["value"] == 1 and g.area == 16 * PIXEL_AREA]
    assert len(corner) == 2, "regions meeting only at a corner are not 4-connected"
    buildings = [(g, p) for g, p in features if p["value"] == 2]
    assert [p["class"] for _, p in buildings] == ["building"]
    assert buildings[0][0].equals(map_box((70, 80), (10, 20)))


@pytest.mark.parametrize("label, expected", [("building", 1), ("2", 1), ("field", 3), (1, 3)])
def test_one_class_by_name_or_value(mask_url, tmp_path, label, expected):
    result = export(mask_url, tmp_path / "mask.tif", vector=tmp_path / "mask.geojson", label=label)
    features, crs = read_features(result.vector)
    assert len(features) == expected and crs.to_epsg() == EPSG


def test_merge_keeps_corner_contacts_apart_and_unions_shared_edges():
    pieces = [box(0, 0, 2, 2), box(2, 0, 4, 2), box(4, 2, 6, 4), box(0, 2, 2, 3)]
    merged = merge_across_borders(pieces)
    areas = sorted(p.area for p in merged)
    # The first, second and fourth share edges; the third meets the second only at (4, 2).
    assert areas == [4.0, 10.0]
    assert merge_across_borders([]) == []


def test_refusals(mask_url, tmp_path):
    (tmp_path / "exists.tif").write_bytes(b"")
    with pytest.raises(OutputExists, match="--overwrite"):
        export(mask_url, tmp_path / "exists.tif")
    with pytest.raises(InvalidParameter, match="give --vector"):
        export(mask_url, tmp_path / "a.tif", label="building")
    with pytest.raises(InvalidParameter, match="0 other, 1 field, 2 building"):
        export(mask_url, tmp_path / "a.tif", vector=tmp_path / "a.gpkg", label="road")
    with pytest.raises(InvalidParameter, match=".gpkg, .geojson or .parquet"):
        export(mask_url, tmp_path / "a.tif", vector=tmp_path / "a.shp")
    assert not (tmp_path / "a.tif").exists()


def test_parquet_names_the_fix_without_geopandas(mask_url, tmp_path):
    try:
        import geopandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidParameter, match="pip install geopandas pyarrow"):
            export(mask_url, tmp_path / "a.tif", vector=tmp_path / "a.parquet")
        return
    result = export(mask_url, tmp_path / "a.tif", vector=tmp_path / "a.parquet")
    assert result.polygons == 4


def test_unfinished_run_is_refused(mask_url):
    group = zarr.open_group(mask_url, mode="r+")
    group.attrs["unet"] = {"complete": False}
    with pytest.raises(InvalidImage, match="unfinished"):
        open_mask(mask_url)


def test_geotiff_round_trip_ingest_segment_export(tmp_path, client):
    write_geotiff(tmp_path / "scene.tif")
    ingest(tmp_path / "scene.tif", tmp_path / "scene.zarr", chunks=(CHUNK, CHUNK), progress=False)
    params = SegmentParameters(
        model=write_model(tmp_path / "m.safetensors"), tile_size=100, device="cpu"
    )
    report = segment(
        str(tmp_path / "scene.zarr"), str(tmp_path / "mask.zarr"), params, client=client
    )
    assert report.chunks_skipped == 1
    # napari and other OME readers see the mask in metres, as the scene.
    from ome_zarr_models.v05.image_label import ImageLabel

    label_image = ImageLabel.from_zarr(zarr.open_group(tmp_path / "mask.zarr", mode="r"))
    (multiscale,) = label_image.attributes.ome.multiscales
    assert [(a.name, a.unit) for a in multiscale.axes] == [("y", "meter"), ("x", "meter")]
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [10.0, 10.0]
    # napari-ome-zarr, the reader docs/ecosystem.md leads with: a Labels layer in metres.
    import warnings

    with warnings.catch_warnings():  # napari's own deprecation warnings on import
        warnings.simplefilter("ignore")
        from napari_ome_zarr._reader import napari_get_reader

    mask_path = str(tmp_path / "mask.zarr")
    ((levels, metadata, layer_type),) = napari_get_reader(mask_path)(mask_path)
    assert layer_type == "labels" and len(levels) == 1
    assert metadata["scale"] == [10.0, 10.0] and metadata["units"] == ("meter", "meter")
    result = export(
        tmp_path / "mask.zarr",
        tmp_path / "mask.tif",
        vector=tmp_path / "mask.gpkg",
        label="field",
        blocksize=128,
        min_area=0,  # a random model's fields are specks: keep every region to count them all
    )
    with rasterio.open(tmp_path / "scene.tif") as scene, rasterio.open(result.cog) as cog:
        assert cog.crs == scene.crs and cog.crs.to_epsg() == EPSG
        assert cog.transform == scene.transform
        assert scene.nodata == NODATA and cog.nodata == MASK_NODATA  # not a class
        assert (cog.width, cog.height) == (scene.width, scene.height)
        assert cog.overviews(1) == [2]
        labels = cog.read(1)
        assert (labels[:CHUNK, :CHUNK] == MASK_NODATA).all()
        crs_of_scene = scene.crs
    features, crs = read_features(result.vector)
    assert crs == crs_of_scene
    assert {p["class"] for _, p in features} == {"field"}
    field_pixels = int((labels == 1).sum())
    assert sum(g.area for g, _ in features) == pytest.approx(field_pixels * PIXEL_AREA)


def test_qupath_geojson_of_a_mask_without_georeferencing(pixel_mask_url, tmp_path):
    """QuPath imports a FeatureCollection of Features whose properties name the objectType and
    the classification (name and [r, g, b]), in pixel coordinates of the full image."""
    result = export(pixel_mask_url, tmp_path / "cells.geojson")
    assert result.cog is None and not list(tmp_path.glob("*.tif")), "polygons alone"
    collection = json.loads((tmp_path / "cells.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert result.polygons == len(features) == 4
    for feature in features:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        value = properties["value"]
        assert properties["classification"] == {"name": CLASSES[value], "color": [*COLOURS[value]]}
        assert properties["class"] == CLASSES[value]
    polygons = {round(shape(f["geometry"]).area): shape(f["geometry"]) for f in features}
    # x is the column and y the row of pixel corners: QuPath's image coordinates.
    assert polygons[30 * 32].equals(box(16, 20, 48, 50)), "whole across four chunks"
    assert polygons[100].equals(box(10, 70, 20, 80))
    assert sorted(polygons) == [16, 100, 960], "the two corner squares stay apart (16 each)"

    annotations = export(
        pixel_mask_url, tmp_path / "a.geojson", label="building", object_type="annotation"
    )
    (feature,) = json.loads(annotations.vector.read_text())["features"]
    assert feature["properties"]["objectType"] == "annotation"
    with pytest.raises(InvalidParameter, match="detection or annotation"):
        export(pixel_mask_url, tmp_path / "b.geojson", object_type="cell")
    with pytest.raises(InvalidParameter, match="drop --vector"):
        export(pixel_mask_url, tmp_path / "b.geojson", vector=tmp_path / "c.gpkg")
    assert not (tmp_path / "b.geojson").exists()


def test_georeferenced_polygons_alone_stay_in_map_coordinates(mask_url, tmp_path):
    result = export(mask_url, tmp_path / "fields.gpkg")
    assert result.cog is None and result.polygons == 4
    features, crs = read_features(result.vector)
    assert crs.to_epsg() == EPSG
    building = [g for g, p in features if p["value"] == 2][0]
    assert building.equals(map_box((70, 80), (10, 20)))


def test_cli_export_to_qupath(pixel_mask_url, tmp_path):
    from typer.testing import CliRunner

    from unet.cli import app

    target = tmp_path / "cells.geojson"
    outcome = CliRunner().invoke(app, ["export", pixel_mask_url, str(target)])
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.strip() == f"{target}: 4 polygons"


def test_cli_export(mask_url, tmp_path):
    from typer.testing import CliRunner

    from unet.cli import app

    outcome = CliRunner().invoke(
        app,
        ["export", mask_url, str(tmp_path / "m.tif"), "--vector", str(tmp_path / "m.gpkg")]
        + ["--class", "field"],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "3 polygons" in outcome.output


def test_cli_export_instances_writes_one_polygon_per_object(mask_url, tmp_path, client):
    """The mask's regions as objects: the rectangle over 4 chunks is one polygon, the squares
    touching at a corner two, the class-2 square one; ids and areas as in the object table."""
    import pyarrow.parquet as parquet
    from typer.testing import CliRunner

    from unet.cli import app
    from unet.engine.instances.stage import write_instances

    zarr.open_group(mask_url, mode="r+").attrs["unet"] = {"complete": True, "digest": "d"}
    georeference = open_mask(mask_url).georeference
    counts = write_instances(
        client, mask_url, class_names=CLASSES, georeference=georeference, digest="d"
    )
    assert counts == {"field": 3, "building": 1}
    target = tmp_path / "objects.geojson"

    outcome = CliRunner().invoke(app, ["export", mask_url, str(target), "--instances"])
    assert outcome.exit_code == 0, outcome.output
    assert "4 objects" in outcome.output
    features, crs = read_features(target)
    assert crs.to_epsg() == EPSG
    table = parquet.read_table(tmp_path / "mask-objects.parquet").to_pydict()
    assert sorted(p["id"] for _, p in features) == sorted(table["id"]) == [1, 2, 3, 4]
    by_area = sorted(
        ((p["area_px"], p["class"], g) for g, p in features), key=lambda f: (*f[:2], f[2].bounds)
    )
    expected = [
        (16, "field", map_box((64, 68), (92, 96))),
        (16, "field", map_box((60, 64), (96, 100))),
        (100, "building", map_box((70, 80), (10, 20))),
        (960, "field", map_box((20, 50), (16, 48))),
    ]
    for (area, name, geometry), (want_area, want_name, want) in zip(by_area, expected, strict=True):
        assert (area, name) == (want_area, want_name)
        assert geometry.geom_type == "Polygon" and geometry.equals(want)
    assert sorted(table["area"]) == [a * PIXEL_AREA for a, _, _ in expected]

    field = CliRunner().invoke(
        app, ["export", mask_url, str(tmp_path / "f.gpkg"), "--instances", "--class", "field"]
    )
    assert field.exit_code == 0, field.output
    assert "3 objects" in field.output


def test_export_instances_refusals(mask_url, tmp_path):
    from unet.results.export import export_instances

    with pytest.raises(InvalidImage, match="--instances"):
        export_instances(mask_url, tmp_path / "o.geojson")
    from typer.testing import CliRunner

    from unet.cli import app

    outcome = CliRunner().invoke(
        app,
        ["export", mask_url, str(tmp_path / "o.geojson"), "--instances"]
        + ["--vector", str(tmp_path / "v.gpkg")],
    )
    assert outcome.exit_code != 0 and "leave out --vector" in str(outcome.exception)


def write_mask(url, labels, chunks=(32, 32), *, georeferenced=True, levels=None):
    """A mask of ``labels`` in ``chunks``, georeferenced like ``mask_url`` unless told not."""
    from unet.io.pyramid import build_pyramid

    level0 = create_label_image(
        url, labels.shape, chunks, class_names=CLASSES, colours=COLOURS, name="m"
    )
    level0[...] = labels
    if levels:
        build_pyramid(url, reduction="nearest", levels=levels)
    if georeferenced:
        write_georeference(url, Georeference(CRS.from_epsg(EPSG).to_wkt(), TRANSFORM, None, None))
    return url


def test_polygons_are_the_regions_of_the_whole_image_in_any_chunking(tmp_path):
    """Noise of three classes in 8 x 8 chunks, read row of chunks by row of chunks: per class,
    as many polygons as skimage finds 4-connected regions in the whole image, of the same
    areas, each valid, outer rings counterclockwise and holes clockwise (RFC 7946)."""
    import geopandas
    from skimage.measure import label as regions

    rng = np.random.default_rng(3)
    labels = rng.choice(3, size=(44, 60), p=[0.5, 0.3, 0.2]).astype(np.uint8)
    labels[2:40, 4:8] = 1  # a snake over five rows of chunks, back up and down again
    labels[36:40, 4:30] = 1
    labels[2:40, 26:30] = 1
    url = write_mask(str(tmp_path / "noise.zarr"), labels, (8, 8))
    result = export(url, tmp_path / "noise.gpkg", min_area=0)
    frame = geopandas.read_file(result.vector)
    assert frame.crs.to_epsg() == EPSG and result.dropped == 0
    for value in (1, 2):
        found, count = regions(labels == value, connectivity=1, return_num=True)
        areas = sorted(np.bincount(found.ravel())[1:] * PIXEL_AREA)
        polygons = frame[frame["value"] == value].geometry
        assert len(polygons) == count
        assert sorted(polygons.area) == pytest.approx(areas)
    assert frame.geometry.is_valid.all()
    assert all(g.exterior.is_ccw for g in frame.geometry)
    assert all(not ring.is_ccw for g in frame.geometry for ring in g.interiors)
    assert any(len(g.interiors) for g in frame.geometry), "the test has holes to orient"


def test_min_area_drops_specks_and_fills_small_holes(tmp_path):
    """By default regions under 9 pixels are left out and holes under 9 pixels filled;
    --min-area is in map units (m² here, 100 m² a pixel); 0 keeps every region."""
    import geopandas

    labels = np.zeros((64, 64), np.uint8)
    labels[4:24, 4:24] = 1  # a field with a 1-pixel hole and a 4 x 4 hole
    labels[10, 10] = 0
    labels[14:18, 14:18] = 0
    labels[40, 40] = 1  # a speck
    labels[40:43, 50:53] = 2  # a 3 x 3 building: 9 pixels, kept
    labels[50:52, 50:52] = 2  # 4 pixels: dropped
    url = write_mask(str(tmp_path / "m.zarr"), labels)

    result = export(url, tmp_path / "default.gpkg")
    frame = geopandas.read_file(result.vector)
    assert (result.polygons, result.dropped) == (2, 2)
    (field,) = frame[frame["value"] == 1].geometry
    assert len(field.interiors) == 1 and field.area == (400 - 16) * PIXEL_AREA
    assert frame[frame["value"] == 2].geometry.area.tolist() == [9 * PIXEL_AREA]

    everything = export(url, tmp_path / "all.gpkg", min_area=0)
    assert (everything.polygons, everything.dropped) == (4, 0)
    large = export(url, tmp_path / "large.gpkg", min_area=20 * PIXEL_AREA)
    (field,) = geopandas.read_file(large.vector).geometry
    assert (large.polygons, large.dropped) == (1, 3)
    assert field.equals(map_box((4, 24), (4, 24))), "both holes filled"
    with pytest.raises(InvalidParameter, match="min-area"):
        export(url, tmp_path / "bad.gpkg", min_area=-1)
    assert not (tmp_path / "bad.gpkg").exists()


def test_simplify_smooths_staircases_in_map_units(tmp_path):
    import geopandas

    rows, cols = np.indices((96, 96))
    labels = ((rows - 48) ** 2 + (cols - 48) ** 2 < 40**2).astype(np.uint8)  # a disc
    url = write_mask(str(tmp_path / "disc.zarr"), labels)
    exact = geopandas.read_file(export(url, tmp_path / "exact.gpkg").vector).geometry[0]
    smooth = geopandas.read_file(
        export(url, tmp_path / "smooth.gpkg", simplify=15.0).vector
    ).geometry[0]
    assert exact.area == labels.sum() * PIXEL_AREA
    assert len(smooth.exterior.coords) < len(exact.exterior.coords) / 3
    assert smooth.is_valid and smooth.exterior.is_ccw
    assert smooth.area == pytest.approx(exact.area, rel=0.02)
    assert exact.hausdorff_distance(smooth) <= 15.0


def test_a_coarser_level_is_polygonized_in_the_same_coordinates(tmp_path):
    """Level 1 of a mask: map coordinates with twice the pixel size; without georeferencing,
    QuPath's pixels of level 0."""
    import geopandas

    labels = np.zeros((128, 128), np.uint8)
    labels[16:48, 32:96] = 1
    url = write_mask(str(tmp_path / "geo.zarr"), labels, levels=2)
    result = export(url, tmp_path / "level1.tif", vector=tmp_path / "level1.gpkg", level=1)
    (field,) = geopandas.read_file(result.vector).geometry
    assert field.equals(map_box((16, 48), (32, 96)))
    with rasterio.open(result.cog) as dataset:
        assert (dataset.width, dataset.height) == (64, 64)
        assert tuple(dataset.transform)[:6] == (20.0, 0.0, TRANSFORM[2], 0.0, -20.0, TRANSFORM[5])
        assert np.array_equal(dataset.read(1), labels[::2, ::2])

    pixels = write_mask(str(tmp_path / "px.zarr"), labels, levels=2, georeferenced=False)
    qupath = export(pixels, tmp_path / "level1.geojson", level=1)
    (feature,) = json.loads(qupath.vector.read_text())["features"]
    assert shape(feature["geometry"]).equals(box(32, 16, 96, 48))
    assert feature["properties"]["measurements"]["area_px"] == 32 * 64
    with pytest.raises(InvalidParameter, match="--level 0..1"):
        export(url, tmp_path / "level2.gpkg", level=2)


def test_qupath_geojson_has_measurements_and_a_pixel_crs(pixel_mask_url, tmp_path):
    """QuPath imports ``measurements``; GDAL-based readers see pixels, not WGS 84 degrees."""
    import geopandas

    result = export(pixel_mask_url, tmp_path / "cells.geojson")
    frame = geopandas.read_file(result.vector)
    assert frame.crs is not None and not frame.crs.is_geographic
    assert frame.crs.axis_info[0].unit_name == "pixel"
    features = json.loads(result.vector.read_text())["features"]
    for feature in features:
        properties = feature["properties"]
        polygon = shape(feature["geometry"])
        assert properties["measurements"] == {
            "area_px": round(polygon.area),
            "value": properties["value"],
        }
        assert polygon.exterior.is_ccw


def test_a_legend_file_of_another_tool_beside_the_cog_is_never_replaced(mask_url, tmp_path):
    (tmp_path / "mask.qml").write_text("my own style, by hand")
    for overwrite in (False, True):
        with pytest.raises(OutputExists, match="mask.qml exists and is not a QGIS style"):
            export(mask_url, tmp_path / "mask.tif", blocksize=128, overwrite=overwrite)
    assert (tmp_path / "mask.qml").read_text() == "my own style, by hand"
    assert not (tmp_path / "mask.tif").exists()
    (tmp_path / "mask.qml").unlink()
    export(mask_url, tmp_path / "mask.tif", blocksize=128)
    export(mask_url, tmp_path / "mask.tif", blocksize=128, overwrite=True)  # its own: replaced


def test_gdal_reads_the_class_names_and_qgis_gets_a_style(mask_url, tmp_path):
    """GDAL (rasterio's) reads the PAM sidecar's raster attribute table and category names:
    a VRT copy of the COG, which GDAL writes from what it read, holds them."""
    import xml.etree.ElementTree as ElementTree

    import rasterio.shutil

    result = export(mask_url, tmp_path / "mask.tif", blocksize=128)
    assert (tmp_path / "mask.tif.aux.xml").is_file() and (tmp_path / "mask.qml").is_file()
    rasterio.shutil.copy(result.cog, tmp_path / "mask.vrt", driver="VRT")
    band = ElementTree.parse(tmp_path / "mask.vrt").getroot().find("VRTRasterBand")
    assert [c.text for c in band.find("CategoryNames")] == CLASSES
    table = band.find("GDALRasterAttributeTable")
    assert table.get("tableType") == "thematic"
    fields = [f.findtext("Name") for f in table.findall("FieldDefn")]
    assert fields == ["Value", "Class", "Red", "Green", "Blue", "Alpha"]
    rows = [[cell.text for cell in row.findall("F")] for row in table.findall("Row")]
    assert [(int(r[0]), r[1]) for r in rows] == list(enumerate(CLASSES))
    assert rows[2][2:5] == ["230", "25", "75"]
    with rasterio.open(result.cog) as dataset:
        assert dataset.colormap(1)[2] == (230, 25, 75, 255), "the colour table stays"
        assert dataset.colormap(1)[0] == (0, 0, 0, 255), "class 0 is shown, not transparent"

    style = ElementTree.parse(tmp_path / "mask.qml").getroot()
    assert style.find("pipe/rasterrenderer").get("type") == "paletted"
    entries = style.findall("pipe/rasterrenderer/colorPalette/paletteEntry")
    assert {e.get("alpha") for e in entries} == {"255"}
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        ("0", "other", "#000000"),
        ("1", "field", "#3cb44b"),
        ("2", "building", "#e6194b"),
    ]
    again = export(mask_url, tmp_path / "mask.tif", overwrite=True)
    assert again.cog == result.cog and not list(tmp_path.glob(".*")), "no staging left"


def test_no_data_is_apart_from_class_0_for_gis_readers(tmp_path):
    """A mask of a run with no-data: 255 is the COG's nodata, so a GIS reader masks exactly the
    no-data pixels and shows class 0; rioxarray reads 255 from the GeoZarr attributes; no
    polygon covers no-data, class 0 is polygonized when asked, and 255 names no class."""
    import geopandas
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray

    labels = np.zeros((64, 96), np.uint8)  # class 0 ("other") everywhere but:
    labels[:32, :32] = MASK_NODATA  # outside the swath
    labels[40:60, 40:80] = 1
    url = str(tmp_path / "m.zarr")
    level0 = create_label_image(
        url, labels.shape, (32, 32), class_names=CLASSES, colours=COLOURS, nodata=MASK_NODATA
    )
    level0[...] = labels
    zarr.open_group(url, mode="r+").attrs["unet"] = {"complete": True, "nodata": MASK_NODATA}
    wkt = CRS.from_epsg(EPSG).to_wkt()
    write_georeference(url, Georeference(wkt, TRANSFORM, NODATA).for_labels(had_nodata=True))

    mask = open_mask(url)
    assert mask.nodata == MASK_NODATA and mask.class_names == CLASSES
    result = export(url, tmp_path / "m.tif", vector=tmp_path / "m.gpkg", blocksize=128)
    with rasterio.open(result.cog) as dataset:
        assert dataset.nodata == MASK_NODATA
        masked = dataset.read(1, masked=True)
    assert masked.mask.sum() == 32 * 32, "only no-data is hidden, class 0 is not"
    assert (masked.compressed() == 0).sum() == (labels == 0).sum()
    frame = geopandas.read_file(result.vector)
    assert frame["value"].tolist() == [1]
    other = export(url, tmp_path / "other.gpkg", label="other", min_area=0)
    (region,) = geopandas.read_file(other.vector).geometry
    assert region.area == (labels == 0).sum() * PIXEL_AREA, "no-data is not class 0"
    with pytest.raises(InvalidParameter, match="no-data label"):
        export(url, tmp_path / "x.gpkg", label=MASK_NODATA)
    assert xarray.open_zarr(url, consolidated=False)["0"].rio.nodata == MASK_NODATA


def test_qupath_objects_carry_id_area_and_class_as_measurements(pixel_mask_url, tmp_path, client):
    """``--instances`` to QuPath: each object's id (the object table's), pixel area and class
    value are QuPath measurements, in level-0 pixels, outer rings counterclockwise."""
    import pyarrow.parquet as parquet

    from unet.engine.instances.stage import write_instances
    from unet.results.export import export_instances

    zarr.open_group(pixel_mask_url, mode="r+").attrs["unet"] = {"complete": True, "digest": "d"}
    write_instances(client, pixel_mask_url, class_names=CLASSES, georeference=None, digest="d")
    result = export_instances(pixel_mask_url, tmp_path / "objects.geojson")
    features = json.loads(result.vector.read_text())["features"]
    table = parquet.read_table(tmp_path / "cells-objects.parquet").to_pydict()
    rows = {
        i: (a, v) for i, a, v in zip(table["id"], table["area_px"], table["value"], strict=True)
    }
    assert result.polygons == len(features) == len(rows) == 4
    for feature in features:
        measurements = feature["properties"]["measurements"]
        assert (measurements["area_px"], measurements["value"]) == rows[measurements["id"]]
        assert feature["properties"]["classification"]["name"] == CLASSES[measurements["value"]]
        polygon = shape(feature["geometry"])
        assert polygon.area == measurements["area_px"] and polygon.exterior.is_ccw
