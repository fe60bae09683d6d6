"""Export a label mask to GIS formats: a Cloud-Optimized GeoTIFF, and polygons per class.

Both read the mask chunk by chunk, so memory stays at a few chunks whatever the mask's size:

- the GeoTIFF is first written tile-aligned window by window into a temporary tiled GTiff,
  then copied by GDAL's COG driver, which adds nearest-neighbour overviews (label values stay
  exact) and lays the file out as a COG. Where GDAL has no COG driver (before 3.1), overviews
  are built in the temporary file and copied with ``COPY_SRC_OVERVIEWS``, the older recipe for
  the same layout. The class colours become the band's colour table;
- polygons come from ``rasterio.features.shapes`` (4-connected regions of one label) per chunk.
  A polygon that does not touch an inner chunk border is complete and written at once; the
  others are kept, and those that share an edge (not just a corner) are merged with
  ``shapely.unary_union``, so a region crossing chunk borders comes out as one polygon. Only
  the border-touching polygons are held in memory.

Coordinates are map coordinates in the mask's CRS (the input's, copied by ``unet segment``);
a mask without georeferencing is exported in pixel coordinates.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import InvalidImage, InvalidParameter, OutputExists

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from unet.io.geo import Georeference
    from unet.io.source import ImageSource

#: Tile side of the exported GeoTIFF and the size its smallest overview fits in.
COG_BLOCKSIZE = 512
#: Output suffix -> OGR driver written through fiona; ``.parquet`` goes through geopandas.
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
_PARQUET = ".parquet"
#: Features handed to the vector writer at once.
_BATCH = 1024


@dataclass(frozen=True)
class LabelMask:
    """A label mask opened for export.

    Attributes
    ----------
    source: level 0, ``(1, Y, X)`` integer labels
    georeference: CRS, transform and nodata copied from the segmented image, if any
    class_names: name of each label value (index = value), from the image-label metadata
    colours: RGBA per label value, from the image-label metadata
    """

    source: ImageSource
    georeference: Georeference | None
    class_names: list[str]
    colours: dict[int, tuple[int, int, int, int]]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote."""

    cog: Path
    vector: Path | None = None
    polygons: int | None = None


def export(
    mask: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    vector: str | os.PathLike[str] | None = None,
    label: str | int | None = None,
    overwrite: bool = False,
    blocksize: int = COG_BLOCKSIZE,
) -> ExportResult:
    """Write a label mask as a Cloud-Optimized GeoTIFF and, optionally, as polygons.

    Everything is checked (mask, class, formats, existing outputs) before anything is written.

    Parameters
    ----------
    mask: OME-Zarr label image written by ``unet segment`` (path or URL)
    output: the GeoTIFF to write (local path)
    vector: polygons to write too: ``.gpkg``, ``.geojson`` or ``.parquet`` (needs geopandas)
    label: polygonize only this class, by name or label value; every class but 0 otherwise
    overwrite: replace existing outputs
    blocksize: tile side of the GeoTIFF (a multiple of 16, at least 128, as GDAL's COG driver
        takes); overviews are added until the smallest fits in one tile
    """
    labels = open_mask(mask)
    value = resolve_label(labels, label) if label is not None else None
    if value is not None and vector is None:
        raise InvalidParameter(
            f"class {label!r} selects what to polygonize: give --vector OUT.gpkg as well"
        )
    if not isinstance(blocksize, int) or blocksize < 128 or blocksize % 16:
        raise InvalidParameter(
            f"blocksize {blocksize} is not a COG tile size: use a multiple of 16, at least 128"
        )
    targets = [Path(output)] + ([Path(vector)] if vector is not None else [])
    if vector is not None:
        _check_vector_format(Path(vector))
    for target in targets:
        _check_target(target, overwrite)
    cog = write_cog(labels, output, overwrite=overwrite, blocksize=blocksize)
    if vector is None:
        return ExportResult(cog)
    count = write_polygons(labels, vector, label=value, overwrite=overwrite)
    return ExportResult(cog, Path(vector), count)


def open_mask(url: str | os.PathLike[str]) -> LabelMask:
    """Open a label mask and its class names, colours and georeferencing.

    Raises
    ------
    InvalidImage
        Not a single-channel integer array, or an unfinished ``unet segment`` run.
    """
    import zarr

    from unet.io.geo import read_georeference
    from unet.io.source import open_image
    from unet.ledger import ATTRIBUTE

    source = open_image(url)
    if source.shape[0] != 1 or np.dtype(source.dtype).kind not in "ui":
        raise InvalidImage(
            f"{source.url} holds {source.shape[0]} channel(s) of {source.dtype}, not a label "
            "mask: give the output of unet segment"
        )
    attributes: dict[str, Any] = {}
    if source.array_path:
        attributes = zarr.open_group(store=source.url, mode="r").attrs.asdict()
    run = attributes.get(ATTRIBUTE)
    if isinstance(run, dict) and not run.get("complete", True):
        raise InvalidImage(
            f"{source.url} is an unfinished unet segment run: rerun the same segment command "
            "to finish it, then export"
        )
    image_label = attributes.get("ome", {}).get("image-label", {})
    names = {
        int(item["label-value"]): str(item["class"])
        for item in image_label.get("properties", [])
        if "label-value" in item and "class" in item
    }
    colours = {
        int(item["label-value"]): tuple(int(v) for v in item["rgba"])
        for item in image_label.get("colors", [])
        if "label-value" in item and len(item.get("rgba", [])) == 4
    }
    count = max(names, default=-1) + 1
    return LabelMask(
        source=source,
        georeference=read_georeference(source),
        class_names=[names.get(v, str(v)) for v in range(count)],
        colours=colours,
    )


def resolve_label(mask: LabelMask, label: str | int) -> int:
    """The label value of a class given by name or value (``"building"``, ``3`` or ``"3"``)."""
    if isinstance(label, str) and label in mask.class_names:
        return mask.class_names.index(label)
    with contextlib.suppress(ValueError):
        value = int(label)
        if 0 <= value <= np.iinfo(np.dtype(mask.source.dtype)).max:
            return value
    known = ", ".join(f"{v} {n}" for v, n in enumerate(mask.class_names)) or "none stored"
    raise InvalidParameter(f"class {label!r} is not in this mask: give a name or value ({known})")


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
    tag (JSON). It is written next to ``output`` and renamed into place when complete.
    """
    import rasterio
    import rasterio.shutil

    target = Path(output)
    _check_target(target, overwrite)
    temporary, staging = _sibling(target, "tiles"), _sibling(target, "partial")
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
    finally:
        for leftover in (temporary, staging):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return target


def has_cog_driver() -> bool:
    """Whether the installed GDAL has the COG driver (GDAL >= 3.1)."""
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def write_polygons(
    mask: LabelMask,
    output: str | os.PathLike[str],
    *,
    label: int | None = None,
    overwrite: bool = False,
) -> int:
    """Polygonize ``mask`` chunk by chunk into a vector file; returns the number of polygons.

    Each polygon is one 4-connected region of one label value (label 0 is never polygonized),
    whole even where it crosses chunk borders, with the attributes ``value`` (the label) and
    ``class`` (its name), in the mask's CRS.
    """
    import rasterio.features
    from affine import Affine
    from shapely.geometry import shape

    from unet.tiling import chunk_grid

    target = Path(output)
    _check_vector_format(target)
    _check_target(target, overwrite)
    _, height, width = mask.source.shape
    pending: dict[int, list[Polygon]] = {}
    staging = _sibling(target, "partial")
    try:
        with _vector_writer(mask, staging, _layer_name(target)) as features:
            for rows, cols in chunk_grid((height, width), mask.source.chunks or (height, width)):
                block = mask.source.read(rows, cols)[0]
                wanted = block != 0 if label is None else block == label
                if not wanted.any():
                    continue
                regions = rasterio.features.shapes(
                    _shapes_dtype(block),
                    mask=wanted,
                    connectivity=4,
                    transform=Affine.translation(cols.start, rows.start),
                )
                for geometry, value in regions:
                    polygon = shape(geometry)
                    if _on_inner_border(polygon.bounds, rows, cols, height, width):
                        pending.setdefault(int(value), []).append(polygon)
                    else:
                        features.write(polygon, int(value))
            for value, polygons in pending.items():
                for merged in merge_across_borders(polygons):
                    features.write(merged, value)
        count = features.count
        os.replace(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
    return count


def merge_across_borders(polygons: list[Polygon]) -> list[Polygon]:
    """Union the polygons that share an edge, transitively; corner contacts stay apart.

    Pieces of one 4-connected region cut by chunk borders share border segments, while two
    regions of the same label in neighbouring chunks meet at most in a corner (4-connectivity).
    """
    import shapely

    if not polygons:
        return []
    tree = shapely.STRtree(polygons)
    first, second = tree.query(polygons, predicate="touches")
    keep = first < second
    first, second = first[keep], second[keep]
    # DE-9IM: the boundaries meet in a line (dimension 1), not only in points.
    shares_edge = shapely.relate_pattern(
        np.asarray(polygons, dtype=object)[first],
        np.asarray(polygons, dtype=object)[second],
        "****1****",
    )
    parent = list(range(len(polygons)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for a, b in zip(first[shares_edge], second[shares_edge], strict=True):
        parent[root(int(a))] = root(int(b))
    groups: dict[int, list[Polygon]] = {}
    for index, polygon in enumerate(polygons):
        groups.setdefault(root(index), []).append(polygon)
    merged = []
    for members in groups.values():
        union = members[0] if len(members) == 1 else shapely.unary_union(members)
        merged.extend(getattr(union, "geoms", [union]))
    return merged


def _on_inner_border(
    bounds: tuple[float, float, float, float], rows: slice, cols: slice, height: int, width: int
) -> bool:
    """Whether a polygon (pixel coordinates) touches a chunk edge that is not the image edge."""
    min_x, min_y, max_x, max_y = bounds
    return (
        (min_x == cols.start and cols.start > 0)
        or (max_x == cols.stop and cols.stop < width)
        or (min_y == rows.start and rows.start > 0)
        or (max_y == rows.stop and rows.stop < height)
    )


def _shapes_dtype(block: np.ndarray) -> np.ndarray:
    """``rasterio.features.shapes`` takes uint8, (u)int16, int32 and float32, not wider integers."""
    if block.dtype in (np.uint8, np.uint16, np.int16, np.int32):
        return block
    if block.size and (block.min() < np.iinfo(np.int32).min or block.max() > 2**31 - 1):
        raise InvalidImage("labels beyond the int32 range cannot be polygonized")
    return block.astype(np.int32)


class _Features:
    """Polygons in pixel coordinates in, features in map coordinates out, in batches."""

    def __init__(self, mask: LabelMask, flush: Callable[[list[dict[str, Any]]], None]) -> None:
        georeference = mask.georeference
        a, b, c, d, e, f = (
            georeference.transform if georeference is not None else (1, 0, 0, 0, 1, 0)
        )
        self._matrix = [a, b, d, e, c, f]  # shapely's order: [a, b, d, e, xoff, yoff]
        self._names = mask.class_names
        self._flush = flush
        self._batch: list[dict[str, Any]] = []
        self.count = 0

    def write(self, polygon: Polygon, value: int) -> None:
        from shapely.affinity import affine_transform

        self._batch.append(
            {
                "geometry": affine_transform(polygon, self._matrix),
                "properties": {
                    "value": value,
                    "class": self._names[value] if value < len(self._names) else str(value),
                },
            }
        )
        self.count += 1
        if len(self._batch) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self._flush(self._batch)
            self._batch = []


@contextlib.contextmanager
def _vector_writer(mask: LabelMask, path: Path, layer: str) -> Iterator[_Features]:
    """Features written to ``path``: GPKG / GeoJSON through fiona, GeoParquet through geopandas."""
    crs_wkt = mask.georeference.crs_wkt if mask.georeference is not None else None
    if path.suffix.lower() == _PARQUET:
        import geopandas

        # GeoParquet is written in one go, so these features are held in memory.
        collected: list[dict[str, Any]] = []
        features = _Features(mask, collected.extend)
        yield features
        features.flush()
        geopandas.GeoDataFrame(
            [item["properties"] for item in collected],
            geometry=[item["geometry"] for item in collected],
            crs=crs_wkt,
        ).to_parquet(path)
        return
    import fiona
    from shapely.geometry import mapping

    schema = {"geometry": "Polygon", "properties": {"value": "int", "class": "str"}}
    driver = VECTOR_DRIVERS[path.suffix.lower()]
    with fiona.open(path, "w", driver=driver, schema=schema, crs_wkt=crs_wkt, layer=layer) as sink:

        def flush(batch: list[dict[str, Any]]) -> None:
            sink.writerecords({**item, "geometry": mapping(item["geometry"])} for item in batch)

        features = _Features(mask, flush)
        yield features
        features.flush()


def _layer_name(target: Path) -> str:
    """The output's stem as a layer name GeoPackage accepts (letters, digits, underscores)."""
    return re.sub(r"\W", "_", target.stem, flags=re.ASCII) or "polygons"


def _check_vector_format(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == _PARQUET:
        try:
            import geopandas  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidParameter(
                f"writing {path} (GeoParquet) needs geopandas and pyarrow: "
                "pip install geopandas pyarrow, or write .gpkg or .geojson"
            ) from None
        return
    if suffix not in VECTOR_DRIVERS:
        raise InvalidParameter(
            f"vector output {path} has an unknown suffix: use .gpkg, .geojson or .parquet"
        )


def _check_target(target: Path, overwrite: bool) -> None:
    if "://" in str(target):
        raise InvalidParameter(f"{target} is a URL: export writes local files")
    if target.exists() and not overwrite:
        raise OutputExists(
            f"output {target} exists: choose another path or pass overwrite=True (--overwrite)"
        )
    if not target.parent.is_dir():
        raise InvalidParameter(f"folder {target.parent} does not exist: create it first")


def _sibling(target: Path, purpose: str) -> Path:
    return target.with_name(f".{target.stem}.{purpose}-{uuid.uuid4().hex[:8]}{target.suffix}")


def _write_tiled(mask: LabelMask, path: Path, blocksize: int) -> None:
    """Copy the mask into a tiled GTiff, one tile-aligned window (about a chunk) at a time."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from unet.tiling import chunk_grid

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
        if georeference.nodata is not None:
            profile["nodata"] = georeference.nodata
    chunk_rows, chunk_cols = mask.source.chunks or (blocksize, blocksize)
    # Windows of whole tiles (about a chunk), so GDAL compresses each tile once.
    window_shape = (
        blocksize * math.ceil(chunk_rows / blocksize),
        blocksize * math.ceil(chunk_cols / blocksize),
    )
    with rasterio.open(path, "w", **profile) as sink:
        for rows, cols in chunk_grid((height, width), window_shape):
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            sink.write(mask.source.read(rows, cols), window=window)
        if mask.colours and np.dtype(mask.source.dtype) in (np.uint8, np.uint16):
            sink.write_colormap(1, mask.colours)
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
