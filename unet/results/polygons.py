"""Polygons of a label mask, chunk by chunk: one polygon per 4-connected region of one label,
regions cut by chunk borders merged back with their pieces in the neighbouring chunks; and one
polygon per object of an instance image, whose pieces are merged by their image-wide id.

A mask with georeferencing gives features in map coordinates (GeoPackage, GeoJSON, GeoParquet,
through fiona / geopandas). A mask without gives GeoJSON in pixel coordinates that QuPath imports
(File > Import objects, or drag and drop): a FeatureCollection whose features carry QuPath's
``objectType`` (``"detection"`` or ``"annotation"``) and ``classification``
(``{"name": class, "color": [r, g, b]}``), besides ``value`` and ``class``. Pixel coordinates
are those of the mask's level 0: ``x`` the column and ``y`` the row of pixel corners, as QuPath
places objects on the full-resolution image.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
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
) -> int:
    """Polygonize ``mask`` chunk by chunk into a vector file; returns the number of polygons.

    Each polygon is one 4-connected region of one label value (label 0 is never polygonized),
    whole even where it crosses chunk borders, with the attributes ``value`` (the label) and
    ``class`` (its name), in the mask's CRS. GeoJSON of a mask without georeferencing is
    QuPath's (see the module docstring), its objects of ``object_type``.
    """
    pending: dict[int, list[Polygon]] = {}
    _, height, width = mask.source.shape
    with _vector_file(mask, output, overwrite, object_type) as features:
        for rows, cols in _chunk_regions(mask.source):
            block = mask.source.read(rows, cols)[0]
            wanted = block != 0 if label is None else block == label
            if not wanted.any():
                continue
            for polygon, value in _polygons(block, wanted, rows, cols):
                if _on_inner_border(polygon.bounds, rows, cols, height, width):
                    pending.setdefault(value, []).append(polygon)
                else:
                    features.write(polygon, value)
        for value, polygons in pending.items():
            for merged in merge_across_borders(polygons):
                features.write(merged, value)
    return features.count


def write_instance_polygons(
    mask: LabelMask,
    instances: ImageSource,
    output: str | os.PathLike[str],
    *,
    label: int | None = None,
    overwrite: bool = False,
    object_type: ObjectType = "detection",
) -> int:
    """One polygon per object of an instance image, chunk by chunk; returns the number written.

    Parameters
    ----------
    mask: the class mask the instances were labelled from (class of each object, CRS)
    instances: its instance image, ``(1, Y, X)`` ids (0: no object), chunked as the mask
    output: ``.gpkg``, ``.geojson`` or ``.parquet``
    label: only the objects of this label value; every object otherwise

    Each feature has the attributes ``id`` (the object's id), ``area_px`` (its pixels),
    ``value`` and ``class`` (GeoJSON of a mask without georeferencing is QuPath's, its objects of
    ``object_type``). An object whose pieces lie in several chunks is their union: the
    ids are image-wide, so pieces are merged by id, and only the pieces of objects touching an
    inner chunk border are held until the end.
    """
    import shapely

    _, height, width = instances.shape
    pending: dict[int, list[Polygon]] = {}
    values: dict[int, int] = {}
    with _vector_file(mask, output, overwrite, object_type, INSTANCE_PROPERTIES) as features:
        for rows, cols in _chunk_regions(instances):
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
                else:
                    features.write(
                        polygon, class_of[object_id], id=object_id, area_px=round(polygon.area)
                    )
        for object_id in sorted(pending):
            pieces = pending.pop(object_id)
            merged = pieces[0] if len(pieces) == 1 else shapely.unary_union(pieces)
            features.write(merged, values.pop(object_id), id=object_id, area_px=round(merged.area))
    return features.count


@contextlib.contextmanager
def _vector_file(
    mask: LabelMask,
    output: str | os.PathLike[str],
    overwrite: bool,
    object_type: ObjectType,
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
            mask, staging, _layer_name(target), object_type, properties
        ) as features:
            yield features
        os.replace(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def _chunk_regions(source: ImageSource) -> Iterator[tuple[slice, slice]]:
    """``(rows, cols)`` of each stored chunk of ``source`` (the whole image when unchunked)."""
    from unet.tiling import ChunkGrid

    _, height, width = source.shape
    return ChunkGrid((height, width), source.chunks or (height, width)).regions()


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
    """Polygons in pixel coordinates in, features in map coordinates out, in batches."""

    def __init__(
        self,
        mask: LabelMask,
        flush: Callable[[list[dict[str, Any]]], None],
        properties: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        georeference = mask.georeference
        a, b, c, d, e, f = (
            georeference.transform if georeference is not None else (1, 0, 0, 0, 1, 0)
        )
        self._matrix = [a, b, d, e, c, f]  # shapely's order: [a, b, d, e, xoff, yoff]
        self._properties = properties or (lambda value: class_properties(mask, value))
        self._flush = flush
        self._batch: list[dict[str, Any]] = []
        self.count = 0

    def write(self, polygon: Polygon, value: int, **properties: Any) -> None:
        """Write ``polygon`` (pixel coordinates) of label ``value``, with ``properties`` first."""
        from shapely.affinity import affine_transform

        self._batch.append(
            {
                "geometry": affine_transform(polygon, self._matrix),
                "properties": {**properties, **self._properties(value)},
            }
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


def qupath_properties(mask: LabelMask, value: int, object_type: ObjectType) -> dict[str, Any]:
    """QuPath's properties of an object of label ``value``: its ``objectType`` and its
    ``classification`` (class name and the label's colour), besides ``value`` and ``class``."""
    own = class_properties(mask, value)
    red, green, blue = mask.colours.get(value, (128, 128, 128, 255))[:3]
    return {
        "objectType": object_type,
        "classification": {"name": own["class"], "color": [red, green, blue]},
        **own,
    }


@contextlib.contextmanager
def _vector_writer(
    mask: LabelMask,
    path: Path,
    layer: str,
    object_type: ObjectType,
    properties: dict[str, str] = CLASS_PROPERTIES,
) -> Iterator[_Features]:
    """Features written to ``path``: QuPath GeoJSON for a mask without georeferencing, else
    GPKG / GeoJSON through fiona and GeoParquet through geopandas; ``properties`` are the
    attributes' names and fiona types."""
    crs_wkt = mask.georeference.crs_wkt if mask.georeference is not None else None
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json") and mask.georeference is None:
        with _qupath_writer(mask, path, object_type) as features:
            yield features
        return
    if suffix == _PARQUET:
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

    schema = {"geometry": "Polygon", "properties": dict(properties)}
    driver = VECTOR_DRIVERS[suffix]
    with fiona.open(path, "w", driver=driver, schema=schema, crs_wkt=crs_wkt, layer=layer) as sink:

        def flush(batch: list[dict[str, Any]]) -> None:
            sink.writerecords({**item, "geometry": mapping(item["geometry"])} for item in batch)

        features = _Features(mask, flush)
        yield features
        features.flush()


@contextlib.contextmanager
def _qupath_writer(mask: LabelMask, path: Path, object_type: ObjectType) -> Iterator[_Features]:
    """A GeoJSON FeatureCollection streamed to ``path`` feature by feature (memory stays at a
    batch whatever the number of objects)."""
    from shapely.geometry import mapping

    with open(path, "w", encoding="utf-8") as sink:
        sink.write('{"type": "FeatureCollection", "features": [\n')
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

        features = _Features(mask, flush, lambda v: qupath_properties(mask, v, object_type))
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
