"""The instance pass of a run, on the driver: after every chunk of the mask is written, two rounds
of chunk work give every object of every foreground class one image-wide id (several chunks
a Dask task: :func:`unet.engine.dispatch.run_items`).

1. Each chunk's work labels its chunk of the mask and returns its object count and its four borders
   (:class:`~unet.engine.instances.stitch.ChunkLabels`); the driver pairs the regions facing each
   other across each chunk edge as both sides arrive, then numbers the objects
   (:class:`~unet.engine.instances.stitch.Stitcher`).
2. Each chunk's work labels it again, maps its local ids to image-wide ids, writes that chunk of
   the instance image and returns its objects' measures, which the driver writes to the object
   table as they come (:class:`~unet.engine.instances.objects.ObjectTable`).

The driver holds chunk counts, the borders whose neighbour has not come yet and the pairs of
regions across borders: it never sees a chunk's pixels, and what it holds grows with the
length of the chunk borders, not with the image's area. The pass is recorded in the mask's
attributes only once the instance image (with its pyramid) and the table are complete; a run
killed before that runs the whole pass again when resumed. The numbering depends on the mask
alone, so the instance image written then is the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.engine.instances.location import (
    RECORD,
    instances_location,
    objects_location,
    recorded_instances,
    relative_to,
)
from unet.errors import writing
from unet.io.complete import ATTRIBUTE

if TYPE_CHECKING:
    import zarr

    from unet.engine.plan import RunPlan
    from unet.io.geo import Georeference

#: ``progress(round, done, total)``: ``done`` of the ``total`` chunks of round 1 (labelling) or
#: 2 (writing the instance image) of the pass are done.
RoundProgress = Callable[[int, int, int], object]


@dataclass(frozen=True)
class InstanceSummary:
    """What :func:`label_instances` wrote.

    objects: objects in the image (ids ``1 .. objects``); objects_per_value: per label value of
    the mask (0, background, has none); spanning: objects across chunk borders; dtype: of the ids
    """

    objects: int
    objects_per_value: tuple[int, ...]
    spanning: int
    dtype: np.dtype


def finished_objects(output: str) -> dict[str, int] | None:
    """The objects per class of the instance pass an earlier run of ``output`` finished; None
    when none did."""
    import zarr

    recorded = recorded_instances(zarr.open_group(output, mode="r").attrs.asdict())
    return None if recorded is None else dict(recorded["objects_per_class"])


def instance_pass(
    plan: RunPlan, client: Any, progress: RoundProgress | None = None
) -> dict[str, int]:
    """:func:`write_instances` for the finished mask of ``plan``; the objects per class.
    ``progress``: see :func:`label_instances`.

    Raises
    ------
    OutputWriteError: the instance image, the table or the record cannot be written
    """
    georeference = None
    if plan.georeference is not None:
        georeference = plan.georeference.for_labels(plan.parameters.nodata is not None)
    destination = plan.destination
    return write_instances(
        client,
        plan.output,
        class_names=list(plan.checkpoint.class_names),
        georeference=georeference,
        digest=plan.fingerprint.digest,
        image=destination.image if destination.inside_image else None,
        progress=progress,
    )


def write_instances(
    client: Any,
    output: str,
    *,
    class_names: list[str],
    georeference: Georeference | None = None,
    digest: str | None = None,
    image: str | None = None,
    progress: RoundProgress | None = None,
) -> dict[str, int]:
    """Write the instance image and the object table of the class mask at ``output`` (inside
    ``image`` when given: ``image/labels/NAME``) where
    :func:`~unet.engine.instances.location.instances_location` and
    :func:`~unet.engine.instances.location.objects_location` say, with
    :func:`label_instances` (``progress`` as there), then record them in the mask's ``unet``
    attribute.

    Returns
    -------
    Objects per class name, background left out.
    """
    import zarr

    instances, table = instances_location(output, image), objects_location(output, image)
    summary = label_instances(
        client,
        output,
        instances,
        table,
        class_names=class_names,
        georeference=georeference,
        digest=digest,
        progress=progress,
    )
    per_class = {
        class_names[value]: count
        for value, count in enumerate(summary.objects_per_value)
        if 0 < value < len(class_names)
    }
    with writing(output):
        _record(
            zarr.open_group(output, mode="r+"),
            {
                "image": relative_to(output, instances),
                "table": relative_to(output, table),
                "dtype": str(summary.dtype),
                "objects": summary.objects,
                "objects_per_class": per_class,
            },
        )
    return per_class


def label_instances(
    client: Any,
    mask: str,
    instances: str,
    table: str,
    *,
    class_names: list[str],
    georeference: Georeference | None = None,
    digest: str | None = None,
    progress: RoundProgress | None = None,
) -> InstanceSummary:
    """Label every object of a finished class mask image-wide, on Dask, chunk by chunk.

    Parameters
    ----------
    client: the ``distributed.Client`` to run the chunk tasks on
    mask: an OME-Zarr label image whose level ``"0"`` is a uint8 ``(Y, X)`` class mask
    instances: the instance image to write (replaced if it exists): an OME-Zarr image-label of
        the mask's shape and chunks, uint32 (uint64 beyond 2**32 - 1 objects), with a pyramid
    table: the object table to write (Parquet; see :mod:`unet.engine.instances.objects`)
    class_names: the name of each label value of the mask
    georeference: the mask's, copied onto the instance image and used for map units in the table
    digest: the mask's fingerprint digest, recorded on the instance image (``unet.digest``)
    progress: called as each chunk of each round is done (:data:`RoundProgress`)

    Returns
    -------
    What was written: :class:`InstanceSummary`.
    """
    import zarr

    from unet.engine.dispatch import run_items
    from unet.engine.instances.objects import ObjectTable
    from unet.engine.instances.stitch import Stitcher
    from unet.engine.instances.tasks import InstanceJob, RelabelItem, label_task, relabel_task
    from unet.io.pyramid import build_pyramid, chunk_levels
    from unet.io.source import open_image

    source = open_image(mask)
    shape, chunks = source.shape[1:], source.chunks or source.shape[1:]
    state = zarr.open_group(mask, mode="r").attrs.get(ATTRIBUTE)
    job = InstanceJob(
        mask=source,
        instances=instances,
        chunks=chunks,
        pyramid_levels=chunk_levels(shape, chunks),
        nodata=state.get("nodata") if isinstance(state, dict) else None,
        token=uuid.uuid4().hex,
    )
    grid = job.grid
    stitcher = Stitcher(grid.counts)
    for done, labels in enumerate(run_items(client, job, grid.indices(), label_task), 1):
        stitcher.add(labels)
        if progress is not None:
            progress(1, done, grid.total)
    numbering = stitcher.numbering()

    with writing(instances):
        create_instance_image(
            instances, shape, chunks, numbering.dtype, job.pyramid_levels, mask, digest
        )
    items = [
        RelabelItem(index, numbering.chunk_mapping(flat))
        for flat, index in enumerate(grid.indices())
    ]
    with (
        writing(table),
        ObjectTable(table, numbering.spanning, class_names, numbering.dtype, georeference) as rows,
    ):
        for done, stats in enumerate(run_items(client, job, items, relabel_task), 1):
            rows.add(stats)
            if progress is not None:
                progress(2, done, grid.total)
    per_value = rows.objects_per_value[: max(len(class_names), 2)]
    with writing(instances):
        build_pyramid(instances, reduction="nearest", keep_levels=job.pyramid_levels)
        if georeference is not None:
            from unet.io.geo import write_georeference

            write_georeference(instances, georeference)
    return InstanceSummary(
        objects=numbering.total,
        objects_per_value=tuple(int(n) for n in per_value),
        spanning=len(numbering.spanning),
        dtype=numbering.dtype,
    )


def create_instance_image(
    location: str,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    dtype: np.dtype,
    pyramid_levels: int,
    mask: str,
    digest: str | None,
) -> zarr.Group:
    """Create (or replace) an empty instance image: an OME-Zarr 0.5 image-label of ``dtype``,
    with the pyramid levels the chunks write, naming its mask (relative) and the mask's digest
    in its ``unet`` attribute. It labels the mask's image: the mask's ``image-label.source``
    holds for it too, since the instance image lies beside the mask."""
    import copy

    import zarr

    from unet.io.omezarr import LABEL_COMPRESSION, create_image
    from unet.io.pyramid import create_chunk_levels
    from unet.io.replace import check_replaceable

    # The plan checked it; checked again where it is replaced, since it may have changed since.
    check_replaceable(location, "instances", what="instance image")
    # Recognisable as an instance image from its first write (unet.io.replace).
    record = {ATTRIBUTE: {"mask": relative_to(location, mask), "digest": digest}}
    create_image(
        location,
        shape,
        dtype,
        chunks,
        axes=("y", "x"),
        name=location.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr"),
        overwrite=True,
        compression=LABEL_COMPRESSION,
        attributes=record,
    )
    group = zarr.open_group(location, mode="r+")
    ome = copy.deepcopy(group.attrs["ome"])
    ome["image-label"] = {"version": ome["version"]}
    source = zarr.open_group(mask, mode="r").attrs.get("ome", {}).get("image-label", {})
    if "source" in source:
        ome["image-label"]["source"] = source["source"]
    group.update_attributes({"ome": ome, **record})
    create_chunk_levels(group, pyramid_levels)
    return group


def _record(group: zarr.Group, record: dict[str, Any]) -> None:

    state = dict(group.attrs.get(ATTRIBUTE, {}))
    state[RECORD] = record
    group.attrs[ATTRIBUTE] = state
