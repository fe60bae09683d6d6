"""The object table: one row per object (id, class, area, centroid, bounding box), measured chunk
by chunk and written to Parquet as the chunks come in.

An object inside one chunk is measured whole by that chunk's task and its row is written at once.
An object spanning chunks comes in as one partial row per chunk it touches; areas and coordinate
sums add up and bounding boxes widen, so those rows are merged by id at the end. Only these
partial rows are held, and there are no more of them than regions along chunk borders.

Columns (pixel coordinates are those of pixel centres, row and column indices as
:func:`skimage.measure.regionprops` gives them; bounding boxes stop one past the last pixel):

=================================================  =======================================
``id``                                             uint32 or uint64, the instance label
``value``, ``class``                               the class's label value and name
``area_px``                                        int64, pixels
``centroid_row``, ``centroid_col``                 float64, mean pixel row and column
``bbox_min_row``, ``bbox_min_col``,                int64, ``[min, max)`` rows and columns
``bbox_max_row``, ``bbox_max_col``
``area``, ``centroid_x``, ``centroid_y``           only for a georeferenced mask: square CRS
                                                   units, and the centroid in map coordinates
=================================================  =======================================
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from unet.io.geo import Georeference

#: Rows per Parquet row group (rows are buffered up to this many).
ROW_GROUP = 65536


@dataclass(frozen=True)
class ObjectStats:
    """Sums over the pixels of some objects, one entry per object; all arrays of one length.

    ``row_sum``/``col_sum`` are float64 sums of row and column indices (exact below 2**53).
    """

    id: np.ndarray
    value: np.ndarray
    area: np.ndarray
    row_sum: np.ndarray
    col_sum: np.ndarray
    min_row: np.ndarray
    min_col: np.ndarray
    max_row: np.ndarray
    max_col: np.ndarray

    def __len__(self) -> int:
        return len(self.id)

    def take(self, where: np.ndarray) -> ObjectStats:
        """The entries selected by a bool mask or an index array."""
        return ObjectStats(**{f.name: getattr(self, f.name)[where] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: list[ObjectStats]) -> ObjectStats:
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )


def chunk_stats(
    labels: np.ndarray,
    count: int,
    values: np.ndarray,
    ids: np.ndarray,
    origin: tuple[int, int],
) -> ObjectStats:
    """Measure the regions of one labelled chunk.

    Parameters
    ----------
    labels: uint32 (h, w), local ids ``1 .. count`` (0: background)
    values: uint8 (count + 1,), label value of each local id
    ids: (count + 1,), image-wide id of each local id
    origin: image row and column of the chunk's first pixel

    Returns
    -------
    One entry per local id, in image coordinates.
    """
    from scipy.ndimage import find_objects

    height, width = labels.shape
    flat = labels.ravel()
    area = np.bincount(flat, minlength=count + 1)[1:]
    rows = np.broadcast_to(np.arange(height, dtype=np.float64)[:, None], labels.shape).ravel()
    cols = np.broadcast_to(np.arange(width, dtype=np.float64)[None, :], labels.shape).ravel()
    row_sum = np.bincount(flat, weights=rows, minlength=count + 1)[1:] + origin[0] * area
    col_sum = np.bincount(flat, weights=cols, minlength=count + 1)[1:] + origin[1] * area
    boxes = np.array(
        [(r.start, c.start, r.stop, c.stop) for r, c in find_objects(labels, max_label=count)],
        dtype=np.int64,
    ).reshape(count, 4)
    boxes += np.array([origin[0], origin[1], origin[0], origin[1]], dtype=np.int64)
    return ObjectStats(
        id=ids[1:].astype(np.uint64),
        value=values[1:],
        area=area.astype(np.int64),
        row_sum=row_sum,
        col_sum=col_sum,
        min_row=boxes[:, 0],
        min_col=boxes[:, 1],
        max_row=boxes[:, 2],
        max_col=boxes[:, 3],
    )


def merge_by_id(stats: ObjectStats) -> ObjectStats:
    """One entry per id: areas and sums added, bounding boxes spanning every part."""
    order = np.argsort(stats.id, kind="stable")
    ordered = stats.take(order)
    ids, starts = np.unique(ordered.id, return_index=True)
    if len(ids) == len(ordered):
        return ordered

    def reduce(ufunc: np.ufunc, array: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(array, starts)

    return ObjectStats(
        id=ids,
        value=ordered.value[starts],
        area=reduce(np.add, ordered.area),
        row_sum=reduce(np.add, ordered.row_sum),
        col_sum=reduce(np.add, ordered.col_sum),
        min_row=reduce(np.minimum, ordered.min_row),
        min_col=reduce(np.minimum, ordered.min_col),
        max_row=reduce(np.maximum, ordered.max_row),
        max_col=reduce(np.maximum, ordered.max_col),
    )


class ObjectTable:
    """The object table, written to Parquet as chunks' stats come in; partial rows of objects
    that span chunks are merged and written at :meth:`close`.

    Parameters
    ----------
    location: the Parquet file (path or fsspec URL); a local file is written beside it and
        renamed into place when complete, so a killed run leaves no partial table
    spanning: sorted ids of the objects spanning chunks (their rows come in parts)
    class_names: name of each label value
    id_dtype: uint32 or uint64, the instance image's dtype
    georeference: the mask's, for areas and centroids in map units; None for pixels only
    """

    def __init__(
        self,
        location: str,
        spanning: np.ndarray,
        class_names: list[str],
        id_dtype: np.dtype,
        georeference: Georeference | None = None,
    ) -> None:
        self.location = location
        self.rows = 0
        #: int64 (256,): rows written per label value.
        self.objects_per_value = np.zeros(256, np.int64)
        self._spanning = spanning
        self._names = class_names
        self._id_dtype = np.dtype(id_dtype)
        self._georeference = georeference
        self._complete: list[ObjectStats] = []
        self._buffered = 0
        self._parts: list[ObjectStats] = []
        self._writer: Any = None
        self._staging: str | None = None

    def __enter__(self) -> ObjectTable:
        import pyarrow.parquet as parquet

        from unet.io.locations import is_url

        if is_url(self.location):
            import fsspec

            filesystem, path = fsspec.core.url_to_fs(self.location)
            self._writer = parquet.ParquetWriter(path, self.schema(), filesystem=filesystem)
        else:
            folder, name = os.path.split(self.location)
            self._staging = os.path.join(folder, f".{name}.partial-{os.getpid()}")
            self._writer = parquet.ParquetWriter(self._staging, self.schema())
        return self

    def add(self, stats: ObjectStats) -> None:
        """Take one chunk's :func:`chunk_stats`."""
        spanning = np.isin(stats.id, self._spanning, assume_unique=False)
        if spanning.any():
            self._parts.append(stats.take(spanning))
            stats = stats.take(~spanning)
        if len(stats):
            self._complete.append(stats)
            self._buffered += len(stats)
        if self._buffered >= ROW_GROUP:
            self._flush()

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        try:
            if kind is None:
                if self._parts:
                    self._complete.append(merge_by_id(ObjectStats.concatenate(self._parts)))
                    self._parts = []
                self._flush()
            self._writer.close()
            if kind is None and self._staging is not None:
                os.replace(self._staging, self.location)
        finally:
            if self._staging is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._staging)

    def schema(self) -> Any:
        """The table's ``pyarrow.Schema``, with the CRS and transform in its metadata."""
        import pyarrow

        id_type = pyarrow.uint32() if self._id_dtype == np.uint32 else pyarrow.uint64()
        columns = [
            ("id", id_type),
            ("value", pyarrow.uint8()),
            ("class", pyarrow.string()),
            ("area_px", pyarrow.int64()),
            ("centroid_row", pyarrow.float64()),
            ("centroid_col", pyarrow.float64()),
            ("bbox_min_row", pyarrow.int64()),
            ("bbox_min_col", pyarrow.int64()),
            ("bbox_max_row", pyarrow.int64()),
            ("bbox_max_col", pyarrow.int64()),
        ]
        metadata = {"unet": json.dumps({"coordinates": "pixel centres (row, col)"})}
        if self._georeference is not None:
            columns += [
                ("area", pyarrow.float64()),
                ("centroid_x", pyarrow.float64()),
                ("centroid_y", pyarrow.float64()),
            ]
            metadata["unet"] = json.dumps(
                {
                    "coordinates": "pixel centres (row, col); centroid_x/y in map units",
                    "crs_wkt": self._georeference.crs_wkt,
                    "transform": list(self._georeference.transform),
                }
            )
        return pyarrow.schema(columns, metadata=metadata)

    def _flush(self) -> None:
        if not self._complete:
            return
        import pyarrow

        stats = ObjectStats.concatenate(self._complete)
        self._complete, self._buffered = [], 0
        if not len(stats):
            return
        centroid_row = stats.row_sum / stats.area
        centroid_col = stats.col_sum / stats.area
        names = np.array([*self._names, *(str(v) for v in range(len(self._names), 256))])
        columns: dict[str, Any] = {
            "id": stats.id.astype(self._id_dtype),
            "value": stats.value.astype(np.uint8),
            "class": names[stats.value.astype(np.int64)],
            "area_px": stats.area,
            "centroid_row": centroid_row,
            "centroid_col": centroid_col,
            "bbox_min_row": stats.min_row,
            "bbox_min_col": stats.min_col,
            "bbox_max_row": stats.max_row,
            "bbox_max_col": stats.max_col,
        }
        if self._georeference is not None:
            a, b, c, d, e, f = self._georeference.transform
            # The transform maps pixel corners; a pixel's centre lies half a pixel inside.
            columns["area"] = stats.area * abs(a * e - b * d)
            columns["centroid_x"] = a * (centroid_col + 0.5) + b * (centroid_row + 0.5) + c
            columns["centroid_y"] = d * (centroid_col + 0.5) + e * (centroid_row + 0.5) + f
        self._writer.write_table(pyarrow.table(columns, schema=self.schema()))
        self.rows += len(stats)
        self.objects_per_value += np.bincount(stats.value, minlength=256)
