"""Georeferenced images: read GeoTIFF / COG, keep CRS, geotransform, nodata and band names in Zarr.

A GeoTIFF is read through rasterio (GDAL) window by window, so ingest copies a scene of any size
with memory bounded by a few output chunks plus GDAL's block cache (``GDAL_CACHEMAX``).

Where the georeferencing goes: attributes of the OME-Zarr image group and of every level array,
each level with its own transform, so that a reader of one level needs nothing else::

    "zarr_conventions": [{"name": "spatial:", ...}, {"name": "proj:", ...}]   GeoZarr's conventions
    "spatial:dimensions": ["y", "x"], "spatial:registration": "pixel",
    "spatial:transform": [a, b, c, d, e, f], "spatial:shape": [h, w]         (level arrays)
    "proj:wkt2": "PROJCRS[...]"                                                 (with a CRS)
    "crs": "PROJCS[...]", "transform": [a, b, c, d, e, f]      rioxarray's own names (< 0.20)
    "nodata": 0                                                 (with one; rioxarray reads it)
    "band_names": ["B02", ...]                                  (images whose bands are named)

``transform`` is the affine (rasterio / ``affine`` order) from (column, row) of the pixel corner
to map coordinates: ``x = a*col + b*row + c``, ``y = d*col + e*row + f``. rioxarray reports CRS
and transform from these attributes (``xarray.open_zarr`` of the group, a level's variable): from
``proj:``/``spatial:`` since 0.20, from ``crs``/``transform`` before. A CF grid-mapping variable
(a scalar ``spatial_ref`` array) is not written: napari's built-in reader takes every array of
the group for a pyramid level, and one variable's ``GeoTransform`` cannot describe several levels.

Stores written before kept a ``geo`` record (``{"crs_wkt", "transform", "nodata",
"band_names"}``) and CF names as attributes; :meth:`Georeference.from_attributes` reads them too.

Level ``k`` of a pyramid halves level ``k - 1`` with the same origin, so its transform is level
0's with ``a, b, d, e`` multiplied by ``2**k``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.config import json_number
from unet.errors import ChannelMismatch, InvalidImage, UnsupportedInput

if TYPE_CHECKING:
    from unet.io.source import ImageSource

#: The attribute of the georeferencing record written before GeoZarr's conventions (read only).
ATTRIBUTE = "geo"

#: The zarr-conventions declarations of GeoZarr's ``spatial:`` and ``proj:`` attributes.
SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial:",
    "description": "Spatial coordinate information",
}
PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}


@dataclass(frozen=True)
class Georeference:
    """Where an image lies on the Earth, and what its pixel values mean.

    Attributes
    ----------
    crs_wkt: the coordinate reference system as WKT, None when the file gives none
    transform: affine ``(a, b, c, d, e, f)`` of level 0, pixel corners to map coordinates
    nodata: pixel value meaning "no data" (in every band), None when there is none
    band_names: one name per band, None when the file does not name them all
    """

    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None = None
    band_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.transform) != 6 or not all(math.isfinite(v) for v in self.transform):
            raise InvalidImage(
                f"geotransform {self.transform} is not six finite numbers (a, b, c, d, e, f)"
            )

    def scaled(self, factor: int) -> Georeference:
        """The georeference of a level downsampled by ``factor`` from the same origin."""
        a, b, c, d, e, f = self.transform
        return Georeference(
            self.crs_wkt,
            (a * factor, b * factor, c, d * factor, e * factor, f),
            self.nodata,
            self.band_names,
        )

    def for_labels(self, had_nodata: bool) -> Georeference:
        """The georeference of a label mask segmented from this image.

        The engine gives no-data pixels the label :data:`~unet.io.omezarr.MASK_NODATA`, a value
        no class uses, when the run had a nodata value, so that is the mask's nodata (class 0
        stays a class); None otherwise. A mask has no band names.
        """
        from unet.io.omezarr import MASK_NODATA

        nodata = float(MASK_NODATA) if had_nodata else None
        return Georeference(self.crs_wkt, self.transform, nodata, None)

    def calibration(self) -> tuple[tuple[float, float], str | None]:
        """The ``(y, x)`` size of a pixel and its OME unit, for the OME ``scale`` and ``unit``.

        A projected CRS measured in metres or international feet gives its own unit
        (``"meter"``, ``"foot"``); another linear unit (the US survey foot, say) is converted to
        metres. A geographic CRS (degrees, which OME has no unit for) or a transform without a
        CRS gives the size in the transform's units and no unit.
        """
        a, b, _, d, e, _ = self.transform
        size = (math.hypot(b, e), math.hypot(a, d))
        if self.crs_wkt is None:
            return size, None
        from rasterio.crs import CRS

        crs = CRS.from_wkt(self.crs_wkt)
        if not crs.is_projected:
            return size, None
        name, factor = crs.linear_units_factor
        if name in ("metre", "meter"):
            return size, "meter"
        if name == "foot" and math.isclose(factor, 0.3048):
            return size, "foot"
        return (size[0] * factor, size[1] * factor), "meter"

    def to_attributes(self, shape: tuple[int, int] | None = None) -> dict[str, Any]:
        """Zarr attributes of a group, or of a level array of ``(h, w)`` pixels ``shape`` (see
        the module docstring)."""
        attributes: dict[str, Any] = {
            "zarr_conventions": [SPATIAL_CONVENTION],
            "spatial:dimensions": ["y", "x"],
            "spatial:registration": "pixel",
            "spatial:transform": list(self.transform),
            "transform": list(self.transform),
        }
        if shape is not None:
            attributes["spatial:shape"] = [int(n) for n in shape]
        if self.crs_wkt is not None:
            attributes["zarr_conventions"].append(PROJ_CONVENTION)
            attributes["proj:wkt2"] = _wkt2(self.crs_wkt)
            attributes["crs"] = self.crs_wkt
        if self.nodata is not None:
            attributes["nodata"] = json_number(self.nodata)
        if self.band_names is not None:
            attributes["band_names"] = list(self.band_names)
        return attributes

    @classmethod
    def from_attributes(cls, attributes: dict[str, Any]) -> Georeference | None:
        """The georeference of a group's or array's attributes, GeoZarr's or the ``geo`` record
        of stores written before; None when there is none."""
        transform = attributes.get("spatial:transform")
        if isinstance(transform, list) and len(transform) == 6:
            names, nodata = attributes.get("band_names"), attributes.get("nodata")
            crs = attributes.get("proj:wkt2") or attributes.get("crs")
        else:
            record = attributes.get(ATTRIBUTE)
            if not isinstance(record, dict) or "transform" not in record:
                return None
            transform, names = record["transform"], record.get("band_names")
            nodata, crs = record.get("nodata"), record.get("crs_wkt")
        return cls(
            crs_wkt=str(crs) if crs is not None else None,
            transform=tuple(float(v) for v in transform),
            nodata=float(nodata) if nodata is not None else None,
            band_names=tuple(str(n) for n in names) if names is not None else None,
        )


def _wkt2(crs_wkt: str) -> str:
    """The CRS as WKT2 (``proj:wkt2``), whatever WKT version the source gave."""
    from rasterio.crs import CRS

    return CRS.from_wkt(crs_wkt).to_wkt(version="WKT2_2019")


@dataclass
class GeoTiff:
    """An open GeoTIFF as a ``(C, Y, X)`` image read window by window."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    read: Callable[[slice, slice], np.ndarray]
    georeference: Georeference


def is_geotiff(path: str | os.PathLike[str]) -> bool:
    """Whether a TIFF carries GeoTIFF georeferencing tags (CRS keys, tie points or a transform)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages) and bool(tif.pages[0].is_geotiff)
    except (tifffile.TiffFileError, ValueError, OSError):
        return False


@contextlib.contextmanager
def open_geotiff(path: str | os.PathLike[str]) -> Iterator[GeoTiff]:
    """Open a GeoTIFF or Cloud-Optimized GeoTIFF with rasterio.

    ``read(rows, cols)`` decodes only the TIFF blocks the window overlaps and returns
    ``(C, h, w)`` in the file's dtype. Band names are the band descriptions when every band has
    one; the nodata value is the dataset's (GDAL keeps one for all bands of a GeoTIFF).

    Raises
    ------
    UnsupportedInput
        GDAL cannot open the file.
    InvalidImage
        Bands of different dtypes.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    try:
        dataset = rasterio.open(path)
    except RasterioIOError as error:
        raise UnsupportedInput(
            f"{path} could not be opened as a GeoTIFF ({error}): check the file with gdalinfo"
        ) from error
    with dataset:
        if len(set(dataset.dtypes)) != 1:
            raise InvalidImage(
                f"{path} has bands of different dtypes {dataset.dtypes}: write one dtype for all "
                "bands first (e.g. gdal_translate -ot UInt16)"
            )
        descriptions = dataset.descriptions
        names = tuple(descriptions) if all(descriptions) else None
        georeference = Georeference(
            crs_wkt=dataset.crs.to_wkt() if dataset.crs is not None else None,
            transform=tuple(dataset.transform)[:6],
            nodata=float(dataset.nodata) if dataset.nodata is not None else None,
            band_names=names,
        )

        def read(rows: slice, cols: slice) -> np.ndarray:
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            return dataset.read(window=window)

        yield GeoTiff(
            shape=(dataset.count, dataset.height, dataset.width),
            dtype=np.dtype(dataset.dtypes[0]),
            read=read,
            georeference=georeference,
        )


def write_georeference(url: str | os.PathLike[str], georeference: Georeference) -> None:
    """Store ``georeference`` on an OME-Zarr image group and each of its level arrays.

    Each level gets the transform scaled by its downsampling factor, read from the multiscales
    scales (so call this after the pyramid is built). Other attributes are kept.
    """
    import zarr

    from unet.io.locations import resolve_location

    group = zarr.open_group(store=resolve_location(url), mode="r+")
    group.update_attributes(georeference.to_attributes())
    multiscale = group.attrs["ome"]["multiscales"][0]
    base = _x_scale(multiscale["datasets"][0])
    for dataset in multiscale["datasets"]:
        factor = round(_x_scale(dataset) / base)
        level = group[dataset["path"]]
        level.update_attributes(georeference.scaled(factor).to_attributes(level.shape[-2:]))


def read_georeference(source: ImageSource) -> Georeference | None:
    """The georeference of an opened image: its level-0 array's, else its group's, else None."""
    import zarr

    array = zarr.open_array(store=source.url, path=source.array_path, mode="r")
    found = Georeference.from_attributes(array.attrs.asdict())
    if found is None and source.array_path:
        group = zarr.open_group(store=source.url, mode="r")
        found = Georeference.from_attributes(group.attrs.asdict())
    return found


def check_bands(
    input: str,
    channels: int,
    band_names: Sequence[str] | None,
    model_band_names: Sequence[str] | None,
) -> None:
    """Refuse an image whose named bands differ from the bands the model was trained on.

    Only checked when both the image and the checkpoint (``metadata["band_names"]``) name their
    bands; the channel count alone is checked by the engine.

    Raises
    ------
    ChannelMismatch
        The names (or their number, or their order) differ.
    """
    if band_names is None or model_band_names is None:
        return
    image, model = [str(n) for n in band_names], [str(n) for n in model_band_names]
    if image != model:
        raise ChannelMismatch(
            f"{input} has {channels} bands {image} but the model was trained on "
            f"{len(model)} bands {model}: give an image with these bands in this order "
            "(e.g. gdal_translate -b ...) or use a model trained on these bands"
        )


def _x_scale(dataset: dict[str, Any]) -> float:
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            return float(transform["scale"][-1])
    return 1.0
