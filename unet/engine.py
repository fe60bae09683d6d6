"""Segment a Zarr image chunk by chunk on Dask into an OME-Zarr label image.

The driver plans (chunk grid, fingerprint, which chunks are finished or background), submits one
task per pending output chunk and gathers small statistics; workers read, infer and write
(:mod:`unet.worker`). The driver never holds the image or the mask, so its memory does not grow
with the image. See ``DESIGN.md`` for the data flow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet.config import SegmentParameters
from unet.errors import (
    ChannelMismatch,
    ChunksFailed,
    InputReadError,
    InvalidParameter,
    OutputExists,
    writing,
)
from unet.ledger import ATTRIBUTE, Fingerprint, create_ledger, finished_chunks, mark_finished
from unet.tiling import strip_order

#: Output chunk side when the input is not chunked.
DEFAULT_CHUNK = 1024
#: Tasks in flight per worker: enough to keep workers busy, few enough to keep the driver flat.
IN_FLIGHT_PER_WORKER = 4
#: A chunk task that fails (a worker died, a read timed out) is retried this many times.
TASK_RETRIES = 3
#: After a failure, seconds to wait at most for the chunks in flight to end.
DRAIN_SECONDS = 300

ProgressCallback = Callable[[int, int], None]


@dataclass
class SegmentReport:
    """What a run did; ``to_dict`` gives the JSON written by ``--report``."""

    input: str
    output: str
    shape: tuple[int, int, int]
    chunks_total: int
    chunks_computed: int = 0
    chunks_skipped: int = 0
    chunks_resumed: int = 0
    chunks_failed: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    class_names: list[str] = field(default_factory=list)
    class_pixels: list[int] = field(default_factory=list)

    @property
    def megapixels(self) -> float:
        return self.shape[1] * self.shape[2] / 1e6

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def class_fractions(self) -> dict[str, float]:
        """Fraction of the pixels of the chunks counted this run, per class."""
        total = sum(self.class_pixels)
        return {
            name: (count / total if total else 0.0)
            for name, count in zip(self.class_names, self.class_pixels, strict=False)
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            megapixels=round(self.megapixels, 6),
            megapixels_per_second=round(self.megapixels_per_second, 6),
            seconds=round(self.seconds, 6),
            class_fractions=self.class_fractions,
        )
        return data


@dataclass(frozen=True)
class RunPlan:
    """A checked run: what segment() will read, with which model, and the result's identity."""

    source: Any
    checkpoint: Any
    parameters: SegmentParameters
    tile_size: int
    chunks: tuple[int, int]
    fingerprint: Fingerprint
    georeference: Any = None

    @property
    def chunk_counts(self) -> tuple[int, int]:
        (height, width), (ch, cw) = self.source.shape[1:], self.chunks
        return -(-height // ch), -(-width // cw)


def plan_run(
    input: str, output: str, parameters: SegmentParameters, *, checkpoint: Any = None
) -> RunPlan:
    """Open the input and the checkpoint and check everything a run depends on; write nothing.

    Raises the same errors as :func:`segment` would at its start (missing input or checkpoint,
    channel or band mismatch, invalid tile size, output inside the input).
    """
    from unet.io.geo import check_bands, read_georeference
    from unet.io.source import open_image

    source = open_image(input, channels_last=parameters.channels_last)
    checkpoint = checkpoint or _load_in_one_thread(parameters.model)
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
    chunks = source.chunks or (DEFAULT_CHUNK, DEFAULT_CHUNK)
    tile_size = _tile_size(parameters, model.geometry, chunks)
    if parameters.precision == "auto":
        from unet.predict import resolve_precision

        # Resolved on the driver, so that the fingerprint names the precision actually used.
        parameters = parameters.model_copy(
            update={"precision": resolve_precision("auto", parameters.device)}
        )
    _check_output_location(source.url, output)
    fingerprint = Fingerprint.of(
        source.identity(), checkpoint.digest, parameters.result_fields(tile_size)
    )
    return RunPlan(
        source=source,
        checkpoint=checkpoint,
        parameters=parameters,
        tile_size=tile_size,
        chunks=chunks,
        fingerprint=fingerprint,
        georeference=georeference,
    )


def _load_in_one_thread(model: str) -> Any:
    """``load_checkpoint(model)`` with torch on one thread in this thread, then torch's setting
    restored.

    Loading runs a few multi-threaded copies, and OpenMP keeps a team of threads for every
    thread that ever ran one. The driver's team beside the one of the thread running the chunks
    made one more thread than cores on a 2-core machine, so libgomp stopped letting idle threads
    spin between operations: chunk forward passes took 5% longer (8192^2, three alternated
    runs: 3.82 / 3.71 / 4.00 against 3.99 / 4.11 / 4.08 Mpx/s).
    """
    import torch

    from unet.checkpoint import load_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_checkpoint(model)
    finally:
        torch.set_num_threads(threads)


def segment(
    input: str,
    output: str,
    parameters: SegmentParameters,
    *,
    client: Any = None,
    progress: ProgressCallback | None = None,
) -> SegmentReport:
    """Segment the image at ``input`` into an OME-Zarr label image at ``output``.

    Parameters
    ----------
    input: Zarr array or OME-Zarr image (path or fsspec URL)
    output: path or URL of the OME-Zarr 0.5 group to write; resumed when it holds an unfinished
        run with the same fingerprint
    parameters: the run's settings
    client: a ``distributed.Client`` to use; when None one is made from ``parameters``
    progress: called with (chunks done, chunks total) as chunks finish

    Returns
    -------
    SegmentReport

    Raises
    ------
    OutputLocked: another run is writing ``output``
    ChunksFailed: some chunks' input could not be read; the others are written, the output is
        left incomplete and the error's ``report`` lists ``chunks_failed``
    OutputWriteError: the output cannot be written (read-only, disk full)
    """
    from unet.io.codecs import use_fast_codecs
    from unet.lock import output_lock

    started = time.perf_counter()
    use_fast_codecs()
    plan = plan_run(input, output, parameters)
    with output_lock(output):
        return _segment(plan, input, output, client, progress, started)


def _segment(
    plan: RunPlan,
    input: str,
    output: str,
    client: Any,
    progress: ProgressCallback | None,
    started: float,
) -> SegmentReport:
    """The body of :func:`segment`, run while this process holds the output's lock."""
    source, checkpoint, parameters = plan.source, plan.checkpoint, plan.parameters
    tile_size, chunks, counts = plan.tile_size, plan.chunks, plan.chunk_counts
    shape = source.shape[1:]
    fingerprint, georeference = plan.fingerprint, plan.georeference
    with writing(output):
        group = _open_output(output, fingerprint, checkpoint, shape, chunks, counts, parameters)

    report = SegmentReport(
        input=input,
        output=output,
        shape=source.shape,
        chunks_total=counts[0] * counts[1],
        class_names=list(checkpoint.class_names),
        class_pixels=[0] * len(checkpoint.class_names),
    )
    finished = finished_chunks(group)
    report.chunks_resumed = int(finished.sum())
    pending = [(int(i), int(j)) for i, j in zip(*np.nonzero(~finished), strict=True)]
    # In strips, so that consecutive chunks share the input chunks the workers keep decoded.
    pending = strip_order(pending)
    if parameters.skip_background and pending:
        pending = _skip_background(source, group, pending, shape, chunks, report)

    from unet.cluster import plan_cluster
    from unet.worker import ChunkJob

    cluster_plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
    job = ChunkJob(
        source=source,
        output=output,
        checkpoint=checkpoint.path,
        checkpoint_digest=checkpoint.digest,
        chunks=chunks,
        tile_size=tile_size,
        batch_size=parameters.batch_size,
        device=parameters.device,
        precision=parameters.precision,
        probabilities=parameters.probabilities,
        nodata=parameters.nodata,
        torch_threads=cluster_plan.torch_threads,
        pyramid_levels=group.attrs[ATTRIBUTE].get("chunk_levels", 0),
    )
    done = report.chunks_resumed + report.chunks_skipped
    reasons: list[str] = []
    if progress:
        progress(done, report.chunks_total)
    if pending:
        with _client_or(client, cluster_plan, parameters.scheduler) as active:
            for result in _run_chunks(active, job, pending):
                if isinstance(result, ChunkFailure):
                    report.chunks_failed.append(list(result.index))
                    reasons.append(result.reason)
                    continue
                done += 1
                if result.skipped:
                    report.chunks_skipped += 1
                else:
                    report.chunks_computed += 1
                report.class_pixels = [
                    a + b for a, b in zip(report.class_pixels, result.class_counts, strict=False)
                ]
                if progress:
                    progress(done, report.chunks_total)
    if report.chunks_failed:
        report.chunks_failed.sort()
        report.seconds = time.perf_counter() - started
        raise _chunks_failed(report, reasons[0])
    if pending or not group.attrs[ATTRIBUTE].get("complete"):
        with writing(output):
            _finish(output)
    if georeference is not None:
        from unet.io.geo import write_georeference

        write_georeference(output, georeference.for_labels(parameters.nodata is not None))
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk whose input could not be read, even after retries: reported, never marked done."""

    index: tuple[int, int]
    reason: str


def _run_chunks(client: Any, job: Any, pending: list[tuple[int, int]]) -> Iterator[Any]:
    """Results of ``run_chunk`` for every pending chunk, as they complete (retried on failure).

    A chunk whose input cannot be read yields a :class:`ChunkFailure` and the others go on; any
    other failure (the output cannot be written, the device fails) ends the run, once the chunks
    in flight have ended: a task still running after the run released the output's lock could
    write into the output of the next run.
    """
    from distributed import as_completed, wait

    from unet.worker import run_chunk

    if not pending:
        return
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = IN_FLIGHT_PER_WORKER * workers
    job_future = client.scatter(job, broadcast=True)
    queue = iter(pending)

    in_flight: dict[str, tuple[Any, tuple[int, int]]] = {}

    def submit(index: tuple[int, int]) -> Any:
        future = client.submit(run_chunk, job_future, index, retries=TASK_RETRIES, pure=False)
        in_flight[future.key] = (future, index)
        return future

    futures = as_completed([submit(index) for _, index in zip(range(limit), queue, strict=False)])
    try:
        for future in futures:
            _, index = in_flight.pop(future.key)
            try:
                result = future.result()
            except InputReadError as error:
                result = ChunkFailure(index, str(error))
            yield result
            following = next(queue, None)
            if following is not None:
                futures.add(submit(following))
    except BaseException as error:
        if not isinstance(error, KeyboardInterrupt):
            with contextlib.suppress(TimeoutError):
                wait([future for future, _ in in_flight.values()], timeout=DRAIN_SECONDS)
        raise


def _chunks_failed(report: SegmentReport, first_reason: str) -> ChunksFailed:
    failed = report.chunks_failed
    listed = ", ".join(f"({i}, {j})" for i, j in failed[:8]) + (", ..." if len(failed) > 8 else "")
    error = ChunksFailed(
        f"{len(failed)} of {report.chunks_total} chunks of {report.output} could not be computed "
        f"and are not marked done (chunks {listed}; first error: {first_reason}): the output is "
        "incomplete; repair the input and rerun the same command to compute only these chunks"
    )
    error.report = report
    return error


def _client_or(client: Any, plan: Any, scheduler: str | None):
    import contextlib

    from unet.cluster import dask_client

    if client is not None:
        return contextlib.nullcontext(client)
    return dask_client(plan, scheduler)


def _tile_size(parameters: SegmentParameters, geometry, chunks: tuple[int, int]) -> int:
    from unet.predict import default_tile_size

    if parameters.tile_size is None:
        return default_tile_size(geometry, max(chunks))
    return geometry.check_tile_size(parameters.tile_size)


def _check_output_location(input_url: str, output: str) -> None:
    from unet.io.source import is_url, resolve_location

    if is_url(output) or is_url(input_url):
        return
    source, target = Path(input_url), Path(resolve_location(output))
    if target == source or source in target.parents:
        raise InvalidParameter(
            f"output {output} lies inside the input {input_url}: choose an output outside it"
        )


def _open_output(output, fingerprint, checkpoint, shape, chunks, counts, parameters):
    """The output group: resumed when the fingerprint matches, created (or replaced) otherwise."""
    import zarr

    from unet.io.omezarr import create_label_image
    from unet.io.pyramid import chunk_levels, create_chunk_levels
    from unet.io.source import remove_location, resolve_location
    from unet.worker import PROBABILITIES_PATH

    existing = _existing_group(output)
    if existing is not None:
        stored = existing.attrs.get(ATTRIBUTE)
        if stored is None and not parameters.overwrite:
            raise OutputExists(
                f"{output} exists and was not written by unet segment: "
                "use --overwrite to replace it, or choose another output"
            )
        if stored is not None and not parameters.overwrite:
            fingerprint.check_against(stored.get("fingerprint"), output)
            return existing
        remove_location(resolve_location(output))

    create_label_image(
        output,
        shape,
        chunks,
        class_names=list(checkpoint.class_names),
        colours=[tuple(c) for c in checkpoint.colours],
        name=Path(str(output).rstrip("/")).stem,
    )
    group = zarr.open_group(output, mode="r+")
    if parameters.probabilities:
        num = checkpoint.model.num_classes
        group.create_array(
            PROBABILITIES_PATH,
            shape=(num, *shape),
            chunks=(num, *chunks),
            dtype="float16",
            fill_value=0,
            dimension_names=("c", "y", "x"),
        )
    levels = chunk_levels(shape, chunks)
    create_chunk_levels(group, levels)
    create_ledger(group, counts)
    group.attrs[ATTRIBUTE] = {
        "fingerprint": fingerprint.components,
        "digest": fingerprint.digest,
        "complete": False,
        "chunks": list(chunks),
        "chunk_levels": levels,
    }
    return group


def _existing_group(output: str):
    """The Zarr group at ``output``; None when nothing is there."""
    import zarr

    from unet.io.source import is_url, location_exists, resolve_location

    if not location_exists(resolve_location(output)):
        return None
    try:
        return zarr.open_group(output, mode="r+")
    except (
        FileNotFoundError,
        FileExistsError,  # a plain file where the store would be
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ):
        if is_url(output):
            return None
        raise OutputExists(
            f"{output} exists and is not a Zarr group: use --overwrite to replace it, "
            "or choose another output"
        ) from None


def _skip_background(source, group, pending, shape, chunks, report):
    """Mark chunks without tissue finished (label 0 is the fill value); return the rest."""
    from unet.background import chunks_with_tissue, tissue_mask
    from unet.ledger import LEDGER_PATH

    low, factor = source.low_resolution()
    # One low-resolution pixel of margin: tissue seen only between the strided samples still counts.
    tissue = chunks_with_tissue(tissue_mask(low, dilation=1), factor, shape, chunks)
    ledger = group[LEDGER_PATH]
    remaining = []
    for index in pending:
        if tissue[index]:
            remaining.append(index)
        else:
            mark_finished(ledger, index)
            report.chunks_skipped += 1
            rows = min(chunks[0], shape[0] - index[0] * chunks[0])
            cols = min(chunks[1], shape[1] - index[1] * chunks[1])
            report.class_pixels[0] += rows * cols
    return remaining


def _finish(output: str) -> None:
    """Build the pyramid's levels that the chunks did not write, and mark the run complete."""
    import zarr

    from unet.io.pyramid import build_pyramid

    group = zarr.open_group(output, mode="r+")
    keep = group.attrs[ATTRIBUTE].get("chunk_levels", 0)
    build_pyramid(output, reduction="nearest", keep_levels=keep)
    group = zarr.open_group(output, mode="r+")
    state = dict(group.attrs[ATTRIBUTE])
    state["complete"] = True
    group.attrs[ATTRIBUTE] = state
