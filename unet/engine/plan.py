"""Plan a run: open the input and the checkpoint, check everything the run depends on, and
compute the result's fingerprint, before anything is written."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unet.config import SegmentParameters
from unet.engine.destination import Destination
from unet.engine.ledger import Fingerprint
from unet.errors import ChannelMismatch, UnsupportedInput
from unet.tiling import ChunkGrid, Geometry, default_tile_size

if TYPE_CHECKING:
    from unet.io.geo import Georeference
    from unet.io.source import ImageSource
    from unet.network.checkpoint import Checkpoint

#: Output chunk side when the input is not chunked.
DEFAULT_CHUNK = 1024
#: Smallest output chunk side: a chunk's fixed costs (a task's share, its window's halo, the
#: files it writes) dwarf the work of a smaller one (a 32 x 32 image stored in 1 x 1 chunks
#: took minutes). Smaller input chunks are grouped by whole multiples. Inputs written by
#: imaging tools have chunks of 256 to 1024 px; this only catches pathological ones.
MIN_CHUNK = 32


@dataclass(frozen=True)
class RunPlan:
    """A checked run: what segment() will read, with which model, and the result's identity."""

    input: str
    output: str
    source: ImageSource
    checkpoint: Checkpoint
    parameters: SegmentParameters
    tile_size: int
    chunks: tuple[int, int]
    fingerprint: Fingerprint
    destination: Destination
    georeference: Georeference | None = None

    @property
    def grid(self) -> ChunkGrid:
        """The output chunks (the input's chunking, or ``DEFAULT_CHUNK`` when it has none)."""
        return ChunkGrid(self.source.shape[1:], self.chunks)


def plan_run(
    input: str, output: str, parameters: SegmentParameters, *, check_values: bool = True
) -> RunPlan:
    """Open the input and the checkpoint and check everything a run depends on; write nothing.

    The checkpoint is loaded once per process (:func:`driver_checkpoint`), so planning the images
    of a folder one after the other loads it once.

    Raises the same errors as :func:`unet.engine.run.segment` would at its start (missing input
    or checkpoint, channel or band mismatch, invalid tile size, an output that is, holds or lies
    inside the input, something there that unet did not write (:mod:`unet.io.replace`), labels
    for an input that is not an OME-Zarr image group, a ``scheduler`` where nothing listens, and
    with ``check_values`` an image on another scale than the model's training data:
    :func:`unet.engine.valuerange.check_value_range`).
    """
    from unet.io.geo import check_bands, read_georeference
    from unet.io.source import open_image

    if parameters.scheduler is not None:
        from unet.engine.cluster import check_scheduler

        check_scheduler(parameters.scheduler)
    else:
        from unet.predict.device import resolve_device

        # The local cluster's workers have this machine's devices: a GPU it lacks is refused
        # here, before the output exists (a remote cluster's workers may have one).
        resolve_device(parameters.device)
    source = open_image(input, channels_last=parameters.channels_last)
    checkpoint = driver_checkpoint(parameters.model)
    model = checkpoint.model
    georeference = read_georeference(source)
    if georeference is not None:
        check_bands(
            input, source.shape[0], georeference.band_names, checkpoint.metadata.get("band_names")
        )
        if parameters.nodata is None and georeference.nodata is not None:
            # The input's own nodata value changes the mask: it enters the fingerprint as if given.
            parameters = parameters.model_copy(update={"nodata": georeference.nodata})
    if source.shape[0] != model.in_channels:
        raise ChannelMismatch(
            f"{input} has {source.shape[0]} channels but model {parameters.model!r} takes "
            f"{model.in_channels}: use a model trained on {source.shape[0]}-channel images"
            + ("" if parameters.channels_last else " (or --channels-last for (Y, X, C) arrays)")
        )
    if check_values:
        from unet.engine.valuerange import check_value_range

        check_value_range(source, checkpoint, parameters.model, parameters.nodata)
    chunks = output_chunks(source.chunks)
    tile_size = _tile_size(parameters, model.geometry, chunks)
    if parameters.precision == "auto":
        from unet.predict.device import resolve_precision

        # Resolved on the driver, so that the fingerprint names the precision actually used.
        parameters = parameters.model_copy(
            update={"precision": resolve_precision("auto", parameters.device)}
        )
    destination = Destination.of(input, output, parameters.labels)
    if destination.inside_image:
        _check_holds_labels(input, source)
    _check_outputs(destination, source, parameters)
    fingerprint = Fingerprint.of(
        source.identity(), checkpoint.digest, parameters.result_fields(tile_size)
    )
    return RunPlan(
        input=input,
        output=output,
        source=source,
        checkpoint=checkpoint,
        parameters=parameters,
        tile_size=tile_size,
        chunks=chunks,
        fingerprint=fingerprint,
        destination=destination,
        georeference=georeference,
    )


def output_chunks(input_chunks: tuple[int, int] | None) -> tuple[int, int]:
    """The mask's chunk shape: the input's, grown to whole multiples of at least
    :data:`MIN_CHUNK` a side; ``DEFAULT_CHUNK`` a side for an input without chunks."""
    if input_chunks is None:
        return (DEFAULT_CHUNK, DEFAULT_CHUNK)
    rows, cols = (side * -(-MIN_CHUNK // side) for side in input_chunks)
    return (rows, cols)


def driver_checkpoint(model: str) -> Checkpoint:
    """The checkpoint ``model`` (a path or a bundled name) as the driver uses it: loaded once per
    process and file version (path, size and modification time), with torch on one thread.

    Loading runs a few multi-threaded copies, and OpenMP keeps a team of threads for every
    thread that ever ran one. The driver's team beside the one of the thread running the chunks
    made one more thread than cores on a 2-core machine, so libgomp stopped letting idle threads
    spin between operations and chunk forward passes took longer.
    """
    from unet.network.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(model)
    status = os.stat(path)
    return _load_in_one_thread(str(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_in_one_thread(path: str, size: int, modified: int) -> Checkpoint:
    import torch

    from unet.network.checkpoint import load_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_checkpoint(path)
    finally:
        torch.set_num_threads(threads)


def _tile_size(parameters: SegmentParameters, geometry: Geometry, chunks: tuple[int, int]) -> int:
    if parameters.tile_size is None:
        # Checked as a given size is: a tile the chunk tasks would refuse must fail here,
        # before the output exists.
        return geometry.check_tile_size(default_tile_size(geometry, max(chunks)))
    return geometry.check_tile_size(parameters.tile_size)


def _check_holds_labels(input: str, source: ImageSource) -> None:
    """A mask goes inside an image only when the image is an OME-Zarr image group (its levels
    directly inside it), the one place where NGFF readers look for its labels."""
    if not source.level_paths or "/" in source.level_paths[0]:
        raise UnsupportedInput(
            f"--labels writes the mask into an OME-Zarr image group, and {input} is not one "
            "(a plain array, or a collection of images): give the image group itself "
            "(e.g. IMAGE.zarr/0 of a bioformats2raw store), or OUTPUT instead"
        )
    if source.axes.index("x") < source.axes.index("y"):
        # Its label images would have to store x before y too; masks are written (y, x).
        raise UnsupportedInput(
            f"{input} stores its axes {source.axes} with x before y, and --labels writes a "
            "(y, x) mask into it: give OUTPUT instead (a mask of its own, axes named y, x)"
        )


def _check_outputs(
    destination: Destination, source: ImageSource, parameters: SegmentParameters
) -> None:
    """Refuse outputs that would replace the input or what this project did not write: the
    mask, and with ``instances`` its instance image and object table (see
    :mod:`unet.io.replace`). A mask inside its image lies there by design."""
    from unet.engine.instances.location import instances_location, objects_location
    from unet.io.replace import check_apart, check_replaceable

    inside = destination.inside_image
    image = destination.image if inside else None
    check_apart(destination.mask, [source.url], inside_allowed=inside)
    check_replaceable(destination.mask, "mask")
    if parameters.instances:
        instances = instances_location(destination.mask, image)
        objects = objects_location(destination.mask, image)
        check_apart(instances, [source.url], what="instance image", inside_allowed=inside)
        check_apart(objects, [source.url], what="object table")
        check_replaceable(instances, "instances", what="instance image")
        check_replaceable(objects, "parquet", what="object table")
