"""Export a label mask for GIS: a Cloud-Optimized GeoTIFF, polygons per class or per object.

All read the mask chunk by chunk, so memory stays at a few chunks whatever the mask's size:

- the GeoTIFF is first written tile-aligned window by window into a temporary tiled GTiff,
  then copied by GDAL's COG driver, which adds nearest-neighbour overviews (label values stay
  exact) and lays the file out as a COG. Where GDAL has no COG driver (before 3.1), overviews
  are built in the temporary file and copied with ``COPY_SRC_OVERVIEWS``, the older recipe for
  the same layout. The class colours become the band's colour table;
- polygons come from ``rasterio.features.shapes`` (4-connected regions of one label) per chunk.
  A polygon that does not touch an inner chunk border is complete and written at once; the
  others are kept, and those that share an edge (not just a corner) are merged with
  ``shapely.unary_union``, so a region crossing chunk borders comes out as one polygon. Only
  the border-touching polygons are held in memory;
- objects of the instance image (``unet segment --instances``) need no such search: their ids
  are image-wide, so the pieces of an object cut by chunk borders are merged by id.

Coordinates are map coordinates in the mask's CRS (the input's, copied by ``unet segment``);
a mask without georeferencing is exported in pixel coordinates, its GeoJSON as QuPath imports it
(:mod:`unet.results.polygons`). An output named ``.gpkg``, ``.geojson`` or ``.parquet`` gets the
polygons alone: ``unet export MASK.zarr cells.geojson``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import InvalidParameter
from unet.results.masks import LabelMask, check_target, open_mask, resolve_label, sibling
from unet.results.polygons import (
    VECTOR_SUFFIXES,
    ObjectType,
    PolygonOptions,
    check_object_type,
    check_vector_format,
    write_polygons,
)

if TYPE_CHECKING:
    pass


#: Tile side of the exported GeoTIFF and the size its smallest overview fits in.
COG_BLOCKSIZE = 512


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote: the GeoTIFF (None when only polygons were asked for), the
    polygons, how many, and how many specks (regions under ``min_area``) were left out."""

    cog: Path | None
    vector: Path | None = None
    polygons: int | None = None
    dropped: int = 0


def export(
    mask: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    vector: str | os.PathLike[str] | None = None,
    label: str | int | None = None,
    overwrite: bool = False,
    blocksize: int = COG_BLOCKSIZE,
    object_type: ObjectType = "detection",
    min_area: float | None = None,
    simplify: float = 0.0,
    level: int = 0,
) -> ExportResult:
    """Write a label mask as a Cloud-Optimized GeoTIFF and, optionally, as polygons; or, when
    ``output`` is a vector file, as polygons alone.

    Everything is checked (mask, class, formats, existing outputs) before anything is written.

    Parameters
    ----------
    mask: OME-Zarr label image written by ``unet segment`` (path or URL)
    output: the GeoTIFF to write (local path), or polygons (``.gpkg``, ``.geojson``,
        ``.parquet``) without a GeoTIFF
    vector: polygons to write too: ``.gpkg``, ``.geojson`` or ``.parquet`` (needs geopandas)
    label: polygonize only this class, by name or label value; every class but 0 otherwise
    overwrite: replace existing outputs
    blocksize: tile side of the GeoTIFF (a multiple of 16, at least 128, as GDAL's COG driver
        takes); overviews are added until the smallest fits in one tile
    object_type: QuPath's ``objectType`` of the objects in GeoJSON of a mask without
        georeferencing: ``"detection"`` (light, for many cells) or ``"annotation"``
    min_area: polygons (and holes) of a smaller area are left out (filled): map units of the
        mask's CRS, or pixels of level 0 without georeferencing; default the area of
        ``DEFAULT_MIN_PIXELS`` pixels of ``level``; 0 keeps every region
    simplify: Douglas-Peucker tolerance of the polygons, in the same units; 0 (default) keeps
        the pixel outlines
    level: the pyramid level to export (0 the full resolution; a coarser level is smaller and
        quicker, its pixels ``2**level`` level-0 pixels wide)
    """
    options = PolygonOptions(min_area, simplify)
    labels = open_mask(mask, level=level)
    polygons_only = Path(output).suffix.lower() in VECTOR_SUFFIXES
    if polygons_only and vector is not None:
        raise InvalidParameter(
            f"{output} already receives the polygons: drop --vector, or export a .tif as well"
        )
    if polygons_only:
        vector = output
    value = resolve_label(labels, label) if label is not None else None
    if value is not None and vector is None:
        raise InvalidParameter(
            f"class {label!r} selects what to polygonize: give --vector OUT.gpkg as well"
        )
    if not isinstance(blocksize, int) or blocksize < 128 or blocksize % 16:
        raise InvalidParameter(
            f"blocksize {blocksize} is not a COG tile size: use a multiple of 16, at least 128"
        )
    check_object_type(object_type)
    targets = [Path(vector)] if vector is not None else []
    if not polygons_only:
        targets.insert(0, Path(output))
    if vector is not None:
        check_vector_format(Path(vector))
    for target in targets:
        check_target(target, overwrite, labels)
    cog = None
    if not polygons_only:
        cog = write_cog(labels, output, overwrite=overwrite, blocksize=blocksize)
    if vector is None:
        return ExportResult(cog)
    count, dropped = write_polygons(
        labels, vector, label=value, overwrite=overwrite, object_type=object_type, options=options
    )
    return ExportResult(cog, Path(vector), count, dropped)


def export_instances(
    mask: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    label: str | int | None = None,
    overwrite: bool = False,
    object_type: ObjectType = "detection",
    min_area: float | None = None,
    simplify: float = 0.0,
) -> ExportResult:
    """Write one polygon per object of the instance image of ``mask``.

    Parameters
    ----------
    mask: OME-Zarr label image written by ``unet segment --instances`` (path or URL)
    output: ``.gpkg``, ``.geojson`` or ``.parquet`` (needs geopandas)
    label: only the objects of this class, by name or label value; every object otherwise
    overwrite: replace an existing output
    object_type: QuPath's ``objectType`` of the objects in GeoJSON of a mask without
        georeferencing (``detection`` or ``annotation``)
    min_area, simplify: as for :func:`export`; objects under ``min_area`` are left out

    Each polygon has the attributes ``id`` (the object's id in the instance image),
    ``area_px``, ``value`` and ``class``; coordinates are in the mask's CRS (pixels without one).
    """
    from unet.results.masks import open_instances
    from unet.results.polygons import write_instance_polygons

    options = PolygonOptions(min_area, simplify)
    labels = open_mask(mask)
    value = resolve_label(labels, label) if label is not None else None
    target = Path(output)
    check_vector_format(target)
    check_target(target, overwrite, labels)
    instances = open_instances(labels)
    count, dropped = write_instance_polygons(
        labels,
        instances,
        target,
        label=value,
        overwrite=overwrite,
        object_type=object_type,
        options=options,
    )
    return ExportResult(None, target, count, dropped)


def write_cog(
    mask: LabelMask,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    blocksize: int = COG_BLOCKSIZE,
) -> Path:
    """Write ``mask`` as a Cloud-Optimized GeoTIFF with nearest-neighbour overviews.

    The file gets the mask's CRS, transform and nodata, DEFLATE compression, ``blocksize``
    tiles, the class colours as colour table and the class names as the band's ``class_names``
    tag (JSON). It is written next to ``output`` and renamed into place when complete, and so
    is its legend (:func:`write_legend`).
    """
    import rasterio
    import rasterio.shutil

    target = Path(output)
    check_target(target, overwrite, mask)
    temporary, staging = sibling(target, "tiles"), sibling(target, "partial")
    try:
        _write_tiled(mask, temporary, blocksize)
        options = {"COMPRESS": "DEFLATE", "BLOCKSIZE": blocksize, "BIGTIFF": "IF_SAFER"}
        if has_cog_driver():
            rasterio.shutil.copy(
                temporary, staging, driver="COG", RESAMPLING="NEAREST", OVERVIEWS="AUTO", **options
            )
        else:
            _copy_as_cog_layout(temporary, staging, blocksize)
        os.replace(staging, target)
        write_legend(mask, target)
    finally:
        for leftover in (temporary, staging):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return target


def legend_paths(cog: Path) -> tuple[Path, Path]:
    """The legend files of a GeoTIFF: GDAL's PAM sidecar ``OUT.tif.aux.xml`` and QGIS's default
    style ``OUT.qml``."""
    return cog.with_name(cog.name + ".aux.xml"), cog.with_suffix(".qml")


def write_legend(mask: LabelMask, cog: Path) -> None:
    """Name the classes of ``cog`` where GIS tools look, beside it.

    - ``OUT.tif.aux.xml``: GDAL's PAM sidecar (where GDAL itself keeps a GeoTIFF's raster
      attribute table) with a thematic ``GDALRasterAttributeTable`` (value, class name, RGBA)
      and the band's ``CategoryNames``; ``gdalinfo`` lists both, and QGIS (3.30 on) shows the
      table's classes;
    - ``OUT.qml``: a QGIS style that QGIS applies when it opens ``OUT.tif``: a paletted
      renderer, one entry per class with its colour and name, class 0 too; only no-data pixels
      are transparent.

    Without class names, stale legend files of an earlier export are removed.
    """
    from unet.io.replace import is_of_kind

    sidecar, style = legend_paths(cog)
    if not mask.class_names:
        for stale, kind in ((sidecar, "pam"), (style, "qml")):
            if stale.is_file() and is_of_kind(str(stale), kind):  # never another tool's file
                stale.unlink()
        return
    entries = [
        (value, name, (*mask.colours.get(value, (128, 128, 128))[:3], 255))
        for value, name in enumerate(mask.class_names)
    ]
    for path, text in ((sidecar, _pam_xml(entries)), (style, _qgis_style(entries))):
        staging = sibling(path, "partial")
        try:
            staging.write_text(text, encoding="utf-8")
            os.replace(staging, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)


_Entry = tuple[int, str, tuple[int, ...]]


def _pam_xml(entries: list[_Entry]) -> str:
    """GDAL's PAM XML of band 1: category names and a thematic raster attribute table. Field
    types and usages are GDAL's enums: GFT_Integer 0, GFT_String 2; GFU_Generic 0, GFU_Name 2,
    GFU_MinMax 5, GFU_Red 6, GFU_Green 7, GFU_Blue 8, GFU_Alpha 9."""
    from xml.etree.ElementTree import Element, SubElement, indent, tostring

    dataset = Element("PAMDataset")
    band = SubElement(dataset, "PAMRasterBand", band="1")
    categories = SubElement(band, "CategoryNames")
    for _, name, _ in entries:
        SubElement(categories, "Category").text = name
    table = SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    fields.append(("Alpha", 0, 9))
    for index, (name, kind, usage) in enumerate(fields):
        definition = SubElement(table, "FieldDefn", index=str(index))
        SubElement(definition, "Name").text = name
        SubElement(definition, "Type").text = str(kind)
        SubElement(definition, "Usage").text = str(usage)
    for index, (value, name, rgba) in enumerate(entries):
        row = SubElement(table, "Row", index=str(index))
        for cell in (value, name, *rgba[:4]):
            SubElement(row, "F").text = str(cell)
    indent(dataset)
    return tostring(dataset, encoding="unicode") + "\n"


def _qgis_style(entries: list[_Entry]) -> str:
    """A QGIS layer style (QML) with a paletted renderer of the classes."""
    from xml.etree.ElementTree import Element, SubElement, indent, tostring

    root = Element("qgis", version="3.34", styleCategories="Symbology")
    pipe = SubElement(root, "pipe")
    renderer = SubElement(
        pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1"
    )
    SubElement(renderer, "rasterTransparency")
    palette = SubElement(renderer, "colorPalette")
    for value, name, rgba in entries:
        red, green, blue, alpha = (*rgba[:3], rgba[3] if len(rgba) > 3 else 255)
        SubElement(
            palette,
            "paletteEntry",
            value=str(value),
            color=f"#{red:02x}{green:02x}{blue:02x}",
            alpha=str(alpha),
            label=name,
        )
    SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    SubElement(pipe, "rasterresampler", maxOversampling="2")
    indent(root)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        + tostring(root, encoding="unicode")
        + "\n"
    )


def has_cog_driver() -> bool:
    """Whether the installed GDAL has the COG driver (GDAL >= 3.1)."""
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def _write_tiled(mask: LabelMask, path: Path, blocksize: int) -> None:
    """Copy the mask into a tiled GTiff, one tile-aligned window (about a chunk) at a time."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from unet.tiling import ChunkGrid

    _, height, width = mask.source.shape
    georeference = mask.georeference
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": mask.source.dtype,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": "DEFLATE",
        "BIGTIFF": "IF_SAFER",
    }
    if georeference is not None:
        profile["transform"] = Affine(*georeference.transform)
        if georeference.crs_wkt is not None:
            profile["crs"] = CRS.from_wkt(georeference.crs_wkt)
    if mask.nodata is not None:
        profile["nodata"] = mask.nodata
    chunk_rows, chunk_cols = mask.source.chunks or (blocksize, blocksize)
    # Windows of whole tiles (about a chunk), so GDAL compresses each tile once.
    window_shape = (
        blocksize * math.ceil(chunk_rows / blocksize),
        blocksize * math.ceil(chunk_cols / blocksize),
    )
    with rasterio.open(path, "w", **profile) as sink:
        for rows, cols in ChunkGrid((height, width), window_shape).regions():
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            sink.write(mask.source.read(rows, cols), window=window)
        if mask.colours and np.dtype(mask.source.dtype) in (np.uint8, np.uint16):
            # Every class opaque, class 0 too (OME viewers draw label 0 transparent, as
            # background): in a GIS only no-data (the nodata value) is transparent.
            opaque = {value: (*rgba[:3], 255) for value, rgba in mask.colours.items()}
            opaque.pop(mask.nodata, None)
            sink.write_colormap(1, opaque)
        sink.set_band_description(1, "labels")
        if mask.class_names:
            sink.update_tags(1, class_names=json.dumps(mask.class_names))


def _copy_as_cog_layout(source: Path, target: Path, blocksize: int) -> None:
    """The pre-COG-driver recipe: overviews in the source, then ``COPY_SRC_OVERVIEWS``."""
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling

    with rasterio.open(source, "r+") as dataset:
        factors = []
        while max(dataset.width, dataset.height) / 2 ** len(factors) > blocksize:
            factors.append(2 ** (len(factors) + 1))
        if factors:
            dataset.build_overviews(factors, Resampling.nearest)
    rasterio.shutil.copy(
        source,
        target,
        driver="GTiff",
        TILED="YES",
        BLOCKXSIZE=blocksize,
        BLOCKYSIZE=blocksize,
        COMPRESS="DEFLATE",
        COPY_SRC_OVERVIEWS="YES",
        BIGTIFF="IF_SAFER",
    )
