"""The Prefect tasks of one image: ingest, segment, pyramid check, preview.

Each task is a thin call into the library plus what Prefect records about it (logs, artifacts);
the recording is best-effort (:mod:`flows.recording`): a lost server costs the run its record,
never its result.
Failures a rerun can fix (a worker died, a store timed out) are retried; the engine resumes from
its ledger, so a retry redoes only unfinished chunks. Errors the user must fix
(:class:`~unet.errors.UNetError`: a wrong channel count, another run's output) are not retried.
Nothing is cached by Prefect: the output store and its ledger are the cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.handoff import plan_for, terminal_callback
from flows.names import RUN_TAG, output_key, task_run_name
from flows.progress import ProgressArtifact
from flows.recording import best_effort
from unet.config import SegmentParameters
from unet.engine.progress import ProgressLog, combine
from unet.engine.report import SegmentReport
from unet.errors import UNetError
from unet.runs import image_name
from unet.sizes import shapes_label, size_label

#: Logger whose worker-side records (WARNING and above) reach the run's log.
FORWARDED_LOGGER = "unet"


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry failures a rerun can fix; a :class:`UNetError` needs the user instead."""
    try:
        state.result()
    except UNetError:
        return False
    except Exception:
        return True
    return True


_task_options: dict[str, Any] = dict(
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_unless_user_error,
    tags=[RUN_TAG],
)


def _named(step: str, *candidates: str) -> Any:
    """A ``task_run_name`` callable: ``<step> <image>``, the image named by the first of the
    ``candidates`` parameters that is set (the file the user gave, before its ingested copy or
    the mask)."""

    # Prefect passes the task's parameters by this name.
    def name(parameters: dict[str, Any]) -> str:
        image = next(parameters[c] for c in candidates if parameters.get(c))
        return task_run_name(step, str(image))

    return name


@task(
    name="ingest",
    task_run_name=_named("ingest", "source"),
    retries=2,
    retry_delay_seconds=5,
    **_task_options,
)
def ingest_image(source: str, target: str, overwrite: bool = False) -> str:
    """Convert a TIFF/PNG/JPEG file into an OME-Zarr image at ``target``; return ``target``."""
    from unet.io.ingest import ingest

    get_run_logger().info("ingesting %s into %s", source, target)
    ingest(source, target, overwrite=overwrite, progress=False)
    return target


@task(
    name="segment",
    task_run_name=_named("segment", "source", "input"),
    retries=2,
    retry_delay_seconds=10,
    **_task_options,
)
def segment_chunks(
    input: str,
    output: str,
    parameters: SegmentParameters,
    client: Any = None,
    source: str | None = None,
) -> SegmentReport:
    """Segment ``input`` into ``output`` on the Dask ``client``; log and publish progress and a
    summary.

    The run's log gets its resolved settings at the start, a progress line every tenth of the
    chunks and every minute, and its result (:class:`unet.engine.progress.ProgressLog`); the
    progress artifact follows the chunks as they finish; a table artifact summarises the image
    at the end, naming ``source`` (the file the user gave, when ``input`` is its ingested copy)
    as its input. Worker log records of the ``unet`` loggers (WARNING and above) are forwarded
    into this task's log when the cluster is this run's own.
    """
    from unet.engine.run import segment

    logger = get_run_logger()
    name = image_name(source or input)
    progress = combine(
        ProgressArtifact(
            key=output_key(output, "progress"), description=f"Chunks of {output} segmented"
        ),
        ProgressLog(name, logger.info),
        terminal_callback(name),
    )
    forwarding = (
        forwarded_worker_logs(client, logger)
        if client is not None and parameters.scheduler is None
        else contextlib.nullcontext()
    )
    try:
        with forwarding:
            report = segment(
                input,
                output,
                parameters,
                client=client,
                progress=progress,
                plan=plan_for(input, output, parameters),
            )
    finally:
        progress.close()
    progress.finished(report)
    best_effort(
        create_table_artifact,
        table=report_table(report, source),
        key=output_key(output, "summary"),
        description=f"Segmentation of {source or input} into {output}",
    )
    return report


@task(
    name="pyramid", task_run_name=_named("pyramid", "image", "output"), retries=1, **_task_options
)
def check_pyramid(output: str, image: str | None = None) -> list[list[int]]:
    """The shapes of the mask's pyramid levels; fails when the output is not complete.

    The engine builds the pyramid at the end of a run; this task records what it built.
    ``image``: the image the mask is of, naming the task run.
    """
    import zarr

    from unet.engine.ledger import ATTRIBUTE

    group = zarr.open_group(output, mode="r")
    if not dict(group.attrs.get(ATTRIBUTE, {})).get("complete"):
        raise RuntimeError(f"{output} is not marked complete: rerun to resume it")
    levels = sorted((n for n in group.array_keys() if n.isdigit()), key=int)
    shapes = [list(group[n].shape) for n in levels]
    get_run_logger().info("%s: %d pyramid level(s), %s", output, len(shapes), shapes_label(shapes))
    return shapes


@task(
    name="preview", task_run_name=_named("preview", "source", "input"), retries=1, **_task_options
)
def make_preview(
    input: str, output: str, parameters: SegmentParameters, source: str | None = None
) -> str:
    """Write ``<name>.preview.png`` next to the mask and show the same picture, with its
    caption, in a markdown artifact; ``source``: the file the user gave (names the task run)."""
    from unet.runs import write_preview

    path, preview = write_preview(input, output, parameters)
    best_effort(
        create_markdown_artifact,
        markdown=preview_markdown(preview, path),
        key=output_key(output, "preview"),
        description=f"Preview of {output}",
    )
    get_run_logger().info("preview written to %s", path)
    return path


def preview_markdown(preview: Any, path: str) -> str:
    """The preview artifact: the PNG written to ``path``, embedded, with its caption."""
    from unet.results.preview import data_uri

    return (
        f"### {preview.title}\n\n"
        f"![{preview.title}]({data_uri(preview.png)})\n\n"
        f"{preview.caption} The same picture is beside the mask: `{path}`."
    )


def report_table(report: SegmentReport, source: str | None = None) -> list[dict[str, str]]:
    """The rows of an image's summary table artifact; ``source``: the file the user gave, when
    the report's input is its ingested copy."""
    channels, height, width = report.shape
    ingested = source is not None and source != report.input
    rows = [("input", source if ingested else report.input)]
    if ingested:
        rows.append(("ingested as", report.input))
    rows += [
        ("output", report.output),
        (
            "size",
            f"{size_label(width, height)}, {channels} channel(s), {report.megapixels:.2f} Mpx",
        ),
        ("chunks", str(report.chunks_total)),
        ("computed", str(report.chunks_computed)),
        ("skipped (background)", str(report.chunks_skipped)),
        ("resumed", str(report.chunks_resumed)),
        ("time", f"{report.seconds:.1f} s"),
        ("speed", f"{report.megapixels_per_second:.2f} Mpx/s"),
    ]
    if report.input_chunks_missing:
        rows.append(("input chunks missing (read as fill value)", str(report.input_chunks_missing)))
    rows += [(f"class {name}", f"{share:.2%}") for name, share in report.class_fractions.items()]
    if report.objects_per_class is not None:
        rows += [
            (f"objects {name}", str(count)) for name, count in report.objects_per_class.items()
        ]
    return [{"field": field, "value": value} for field, value in rows]


@contextlib.contextmanager
def forwarded_worker_logs(client: Any, run_logger: Any) -> Iterator[None]:
    """Within this block, WARNING+ records of the workers' ``unet`` loggers go to ``run_logger``.

    distributed re-emits forwarded records on the client's event-loop thread, outside any Prefect
    run context; the handler sends them through the run logger, which carries the run ids.
    Propagation is paused meanwhile so the records are not printed twice.
    """
    local = logging.getLogger(FORWARDED_LOGGER)
    handler = _RunLogHandler(run_logger)
    propagate = local.propagate
    local.addHandler(handler)
    local.propagate = False
    client.forward_logging(FORWARDED_LOGGER, level=logging.WARNING)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            client.unforward_logging(FORWARDED_LOGGER)
        local.removeHandler(handler)
        local.propagate = propagate


class _RunLogHandler(logging.Handler):
    def __init__(self, run_logger: Any):
        super().__init__(level=logging.WARNING)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        worker = getattr(record, "worker", "a worker")
        self.run_logger.log(record.levelno, "[%s] %s: %s", worker, record.name, record.getMessage())
