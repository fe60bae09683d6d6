"""Polygons of a label mask, chunk by chunk: one polygon per 4-connected region of one label,
regions cut by chunk borders merged back with their pieces in the neighbouring chunks; and one
polygon per object of an instance image, whose pieces are merged by their image-wide id.

Out of core: chunks are read one row of chunks at a time. A polygon that touches no inner chunk
border is complete and written at once; the others wait, and at the end of each row of chunks
the waiting pieces that share an edge are merged (exactly: a region is one polygon however many
chunks it crosses), and those that do not reach the next row are written. Only the polygons
crossing the current row's lower border are held from one row to the next.

What is written (:class:`PolygonOptions`): regions smaller than ``min_area`` are specks and
dropped, holes smaller than it are filled; ``simplify`` is a Douglas-Peucker tolerance (shapely,
topology of each polygon kept), both in the output's units: map units of the mask's CRS, or
pixels of level 0. Outer rings run counterclockwise and holes clockwise (RFC 7946).

A mask with georeferencing gives features in map coordinates (GeoPackage, GeoJSON, GeoParquet,
through fiona / geopandas). A mask without gives GeoJSON in pixel coordinates that QuPath imports
(File > Import objects, or drag and drop): a FeatureCollection whose features carry QuPath's
``objectType`` (``"detection"`` or ``"annotation"``), ``classification``
(``{"name": class, "color": [r, g, b]}``) and ``measurements`` (``area_px``, ``value``, and
``id`` of an object), besides ``value`` and ``class``. Pixel coordinates are those of the mask's
level 0: ``x`` the column and ``y`` the row of pixel corners, as QuPath places objects on the
full-resolution image; the collection's ``crs`` member names an engineering CRS in pixels, so
GDAL-based readers (QGIS, geopandas) do not take them for degrees of WGS 84.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from unet.errors import InvalidImage, InvalidParameter
from unet.results.masks import LabelMask, check_target, sibling

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from unet.io.source import ImageSource


#: Output suffix -> OGR driver written through fiona; ``.parquet`` goes through geopandas.
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


_PARQUET = ".parquet"

#: The suffixes of vector files.
VECTOR_SUFFIXES = (*VECTOR_DRIVERS, _PARQUET)


#: QuPath's kinds of objects: detections are light (cells, nuclei), annotations editable regions.
ObjectType = Literal["detection", "annotation"]
OBJECT_TYPES = ("detection", "annotation")


#: Features handed to the vector writer at once.
_BATCH = 1024

#: Regions of fewer pixels than this are specks, unless ``min_area`` says otherwise.
DEFAULT_MIN_PIXELS = 9

#: The ``crs`` member of QuPath GeoJSON: an engineering CRS in pixels, x right and y down
#: (GDAL reads it; without one, GeoJSON readers assume WGS 84 degrees).
PIXEL_CRS_WKT = (
    'ENGCRS["image pixels",EDATUM["image"],CS[Cartesian,2],'
    'AXIS["x (column)",east,ORDER[1],LENGTHUNIT["pixel",1]],'
    'AXIS["y (row)",south,ORDER[2],LENGTHUNIT["pixel",1]]]'
)


@dataclass(frozen=True)
class PolygonOptions:
    """What becomes a polygon, in the output's units (map units of the mask's CRS, or pixels of
    level 0 without georeferencing).

    Attributes
    ----------
    min_area: regions of a smaller area are dropped and holes of a smaller area filled; None:
        the area of ``DEFAULT_MIN_PIXELS`` pixels of the level polygonized; 0 keeps everything
    simplify: Douglas-Peucker tolerance; 0 keeps the pixel outlines exactly
    """

    min_area: float | None = None
    simplify: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise InvalidParameter(
                    f"{name.replace('_', '-')} {value!r} is not a finite number >= 0: give an "
                    "area (tolerance) in the mask's map units, or pixels without georeferencing"
                )


#: The attributes of a class polygon (fiona schema types).
CLASS_PROPERTIES = {"value": "int", "class": "str"}
#: The attributes of an object's polygon: its id in the instance image and its pixel count.
INSTANCE_PROPERTIES = {"id": "int", "area_px": "int", **CLASS_PROPERTIES}


def write_polygons(
    mask: LabelMask,
    output: str | os.PathLike[str],
    *,
    label: int | None = None,
    overwrite: bool = False,
    object_type: ObjectType = "detection",
    options: PolygonOptions | None = None,
) -> tuple[int, int]:
    """Polygonize ``mask`` row of chunks by row of chunks into a vector file.

    Each polygon is one 4-connected region of one label value (label 0 and the no-data label
    are never polygonized), whole even where it crosses chunk borders, with the attributes
    ``value`` (the label) and ``class`` (its name), in the mask's CRS. GeoJSON of a mask without
    georeferencing is QuPath's (see the module docstring), its objects of ``object_type``.

    Returns
    -------
    the polygons written and the specks dropped (smaller than ``options.min_area``)
    """
    _, height, width = mask.source.shape
    pending: dict[int, list[Polygon]] = {}
    with _vector_file(mask, output, overwrite, object_type, options) as features:
        for rows, row_regions in _chunk_rows(mask.source):
            for cols in row_regions:
                block = mask.source.read(rows, cols)[0]
                wanted = block == label if label is not None else block != 0
                if label is None and mask.nodata is not None:
                    wanted &= block != mask.nodata
                if not wanted.any():
                    continue
                for polygon, value in _polygons(block, wanted, rows, cols):
                    if _on_inner_border(polygon.bounds, rows, cols, height, width):
                        pending.setdefault(value, []).append(polygon)
                    else:
                        features.write(polygon, value)
            for value in list(pending):
                carried = []
                for merged in merge_across_borders(pending.pop(value)):
                    if merged.bounds[3] == rows.stop < height:  # it may go on in the next row
                        carried.append(merged)
                    else:
                        features.write(merged, value)
                if carried:
                    pending[value] = carried
    return features.count, features.dropped


def write_instance_polygons(
    mask: LabelMask,
    instances: ImageSource,
    output: str | os.PathLike[str],
    *,
    label: int | None = None,
    overwrite: bool = False,
    object_type: ObjectType = "detection",
    options: PolygonOptions | None = None,
) -> tuple[int, int]:
    """One polygon per object of an instance image, row of chunks by row of chunks.

    Parameters
    ----------
    mask: the class mask the instances were labelled from (class of each object, CRS)
    instances: its instance image, ``(1, Y, X)`` ids (0: no object), chunked as the mask
    output: ``.gpkg``, ``.geojson`` or ``.parquet``
    label: only the objects of this label value; every object otherwise
    options: specks dropped, holes filled, simplification (:class:`PolygonOptions`)

    Each feature has the attributes ``id`` (the object's id), ``area_px`` (its pixels),
    ``value`` and ``class`` (GeoJSON of a mask without georeferencing is QuPath's, its objects of
    ``object_type``). An object whose pieces lie in several chunks is their union: the
    ids are image-wide, so pieces are merged by id, and only the pieces of objects touching an
    inner chunk border are held, until the row of chunks where the object ends.

    Returns
    -------
    the polygons written and the objects dropped (smaller than ``options.min_area``)
    """
    import shapely

    _, height, width = instances.shape
    pending: dict[int, list[Polygon]] = {}
    values: dict[int, int] = {}
    with _vector_file(
        mask, output, overwrite, object_type, options, INSTANCE_PROPERTIES
    ) as features:
        for rows, row_regions in _chunk_rows(instances):
            continues: set[int] = set()
            for cols in row_regions:
                ids = instances.read(rows, cols)[0]
                classes = mask.source.read(rows, cols)[0]
                wanted = ids != 0 if label is None else (ids != 0) & (classes == label)
                if not wanted.any():
                    continue
                present, first = np.unique(ids[wanted], return_index=True)
                class_of = dict(zip(present.tolist(), classes[wanted][first].tolist(), strict=True))
                for polygon, object_id in _polygons(ids, wanted, rows, cols):
                    if _on_inner_border(polygon.bounds, rows, cols, height, width):
                        pending.setdefault(object_id, []).append(polygon)
                        values[object_id] = class_of[object_id]
                        if polygon.bounds[3] == rows.stop < height:
                            continues.add(object_id)
                    else:
                        features.write(polygon, class_of[object_id], id=object_id)
            for object_id in sorted(set(pending) - continues):
                pieces = pending.pop(object_id)
                merged = pieces[0] if len(pieces) == 1 else shapely.unary_union(pieces)
                features.write(merged, values.pop(object_id), id=object_id)
    return features.count, features.dropped


@contextlib.contextmanager
def _vector_file(
    mask: LabelMask,
    output: str | os.PathLike[str],
    overwrite: bool,
    object_type: ObjectType,
    options: PolygonOptions | None,
    properties: dict[str, str] = CLASS_PROPERTIES,
) -> Iterator[_Features]:
    """Features of ``mask`` into the vector file ``output`` (its format, ``object_type`` and
    ``overwrite`` checked first), written beside it and renamed into place once complete."""
    target = Path(output)
    check_vector_format(target)
    check_object_type(object_type)
    check_target(target, overwrite, mask)
    staging = sibling(target, "partial")
    try:
        with _vector_writer(
            mask, staging, _layer_name(target), object_type, options or PolygonOptions(), properties
        ) as features:
            yield features
        os.replace(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def _chunk_rows(source: ImageSource) -> Iterator[tuple[slice, list[slice]]]:
    """Each row of stored chunks of ``source`` (the whole image when unchunked), top to bottom:
    its ``rows`` and the ``cols`` of its chunks, left to right."""
    from unet.tiling import ChunkGrid

    _, height, width = source.shape
    grid = ChunkGrid((height, width), source.chunks or (height, width))
    regions = grid.regions()
    per_row = grid.counts[1]
    for start in range(0, len(regions), per_row):
        row = regions[start : start + per_row]
        yield row[0][0], [cols for _, cols in row]


def _polygons(
    values: np.ndarray, wanted: np.ndarray, rows: slice, cols: slice
) -> Iterator[tuple[Polygon, int]]:
    """The 4-connected regions of equal ``values`` (2-D, the block at ``rows``/``cols``) where
    ``wanted``, as polygons in the image's pixel coordinates, with their value."""
    import rasterio.features
    from affine import Affine
    from shapely.geometry import shape

    regions = rasterio.features.shapes(
        _shapes_dtype(values),
        mask=wanted,
        connectivity=4,
        transform=Affine.translation(cols.start, rows.start),
    )
    for geometry, value in regions:
        yield shape(geometry), int(value)


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
    """Polygons in pixel coordinates of the mask's level in; features in the output's
    coordinates out, in batches: specks dropped, small holes filled, simplified, oriented."""

    def __init__(
        self,
        mask: LabelMask,
        flush: Callable[[list[dict[str, Any]]], None],
        options: PolygonOptions,
        properties: Callable[[int, dict[str, Any]], dict[str, Any]],
    ) -> None:
        a, b, c, d, e, f = mask.transform
        self._matrix = [a, b, d, e, c, f]  # shapely's order: [a, b, d, e, xoff, yoff]
        # Areas are compared in pixels of the level read, whatever the output's units.
        pixel_area = abs(a * e - b * d)
        self._min_pixels = (
            DEFAULT_MIN_PIXELS if options.min_area is None else options.min_area / pixel_area
        )
        self._level0_pixels = mask.factor**2
        self._simplify = options.simplify
        self._properties = properties
        self._flush = flush
        self._batch: list[dict[str, Any]] = []
        self.count = 0
        self.dropped = 0

    def write(self, polygon: Polygon, value: int, **measured: Any) -> None:
        """Write ``polygon`` (pixel coordinates) of label ``value`` unless it is a speck;
        ``measured`` (an object's ``id``) joins its ``area_px`` in the attributes."""
        from shapely.affinity import affine_transform
        from shapely.geometry import Polygon
        from shapely.geometry.polygon import orient

        area = polygon.area
        if area < self._min_pixels:
            self.dropped += 1
            return
        holes = [ring for ring in polygon.interiors if Polygon(ring).area >= self._min_pixels]
        if len(holes) != len(polygon.interiors):
            polygon = Polygon(polygon.exterior, holes)
        geometry = affine_transform(polygon, self._matrix)
        if self._simplify:
            geometry = geometry.simplify(self._simplify, preserve_topology=True)
        measured["area_px"] = round(area * self._level0_pixels)
        self._batch.append(
            {"geometry": orient(geometry, 1.0), "properties": self._properties(value, measured)}
        )
        self.count += 1
        if len(self._batch) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self._flush(self._batch)
            self._batch = []


def class_properties(mask: LabelMask, value: int) -> dict[str, Any]:
    """``{"value": value, "class": name}`` of a label value (its number where it has no name)."""
    names = mask.class_names
    return {"value": value, "class": names[value] if value < len(names) else str(value)}


def qupath_properties(
    mask: LabelMask, value: int, object_type: ObjectType, measured: dict[str, Any]
) -> dict[str, Any]:
    """QuPath's properties of an object of label ``value``: its ``objectType``, its
    ``classification`` (class name and the label's colour) and its ``measurements`` (an
    object's ``id``, ``area_px`` and the class ``value``, which QuPath lists and exports with
    the object), besides ``value`` and ``class`` (and ``id``, ``area_px`` of an object)."""
    own = class_properties(mask, value)
    red, green, blue = mask.colours.get(value, (128, 128, 128, 255))[:3]
    attributes = {k: measured[k] for k in ("id", "area_px") if "id" in measured}
    return {
        "objectType": object_type,
        "classification": {"name": own["class"], "color": [red, green, blue]},
        "measurements": {**measured, "value": value},
        **attributes,
        **own,
    }


@contextlib.contextmanager
def _vector_writer(
    mask: LabelMask,
    path: Path,
    layer: str,
    object_type: ObjectType,
    options: PolygonOptions,
    schema_properties: dict[str, str] = CLASS_PROPERTIES,
) -> Iterator[_Features]:
    """Features written to ``path``: QuPath GeoJSON for a mask without georeferencing, else
    GPKG / GeoJSON through fiona and GeoParquet through geopandas; ``schema_properties`` are the
    attributes' names and fiona types."""
    crs_wkt = mask.georeference.crs_wkt if mask.georeference is not None else None
    suffix = path.suffix.lower()

    def properties(value: int, measured: dict[str, Any]) -> dict[str, Any]:
        own = {k: v for k, v in measured.items() if k in schema_properties}
        return {**own, **class_properties(mask, value)}

    if suffix in (".geojson", ".json") and mask.georeference is None:
        with _qupath_writer(mask, path, object_type, options) as features:
            yield features
        return
    if suffix == _PARQUET:
        import geopandas

        # GeoParquet is written in one go, so these features are held in memory.
        collected: list[dict[str, Any]] = []
        features = _Features(mask, collected.extend, options, properties)
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

    schema = {"geometry": "Polygon", "properties": dict(schema_properties)}
    driver = VECTOR_DRIVERS[suffix]
    with fiona.open(path, "w", driver=driver, schema=schema, crs_wkt=crs_wkt, layer=layer) as sink:

        def flush(batch: list[dict[str, Any]]) -> None:
            sink.writerecords({**item, "geometry": mapping(item["geometry"])} for item in batch)

        features = _Features(mask, flush, options, properties)
        yield features
        features.flush()


@contextlib.contextmanager
def _qupath_writer(
    mask: LabelMask, path: Path, object_type: ObjectType, options: PolygonOptions
) -> Iterator[_Features]:
    """A GeoJSON FeatureCollection streamed to ``path`` feature by feature (memory stays at a
    batch whatever the number of objects)."""
    from shapely.geometry import mapping

    with open(path, "w", encoding="utf-8") as sink:
        crs = {"type": "name", "properties": {"name": PIXEL_CRS_WKT}}
        sink.write('{"type": "FeatureCollection", "crs": ' + json.dumps(crs) + ', "features": [\n')
        separator = ""

        def flush(batch: list[dict[str, Any]]) -> None:
            nonlocal separator
            for item in batch:
                feature = {
                    "type": "Feature",
                    "geometry": mapping(item["geometry"]),
                    "properties": item["properties"],
                }
                sink.write(separator + json.dumps(feature, separators=(",", ":")))
                separator = ",\n"

        features = _Features(
            mask, flush, options, lambda v, m: qupath_properties(mask, v, object_type, m)
        )
        yield features
        features.flush()
        sink.write("\n]}\n")


def _layer_name(target: Path) -> str:
    """The output's stem as a layer name GeoPackage accepts (letters, digits, underscores)."""
    return re.sub(r"\W", "_", target.stem, flags=re.ASCII) or "polygons"


def check_object_type(object_type: str) -> None:
    if object_type not in OBJECT_TYPES:
        raise InvalidParameter(
            f"object type {object_type!r} is not QuPath's: use detection or annotation"
        )


def check_vector_format(path: Path) -> None:
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
