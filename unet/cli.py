"""The ``unet`` command: parses, calls the library, prints. No pixel arithmetic here.

Errors a user can cause (:class:`~unet.errors.UNetError`, invalid parameters) print one line on
stderr and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from unet.config import SegmentParameters
from unet.options import with_options
from unet.training.config import TrainParameters

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Exact overlap-tile U-Net segmentation of huge images (Zarr, Dask, Prefect).",
)
_state = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
@with_options(SegmentParameters)
def segment(
    input: Annotated[str, typer.Argument(help="Zarr/OME-Zarr image, TIFF/PNG/JPEG, or a folder")],
    output: Annotated[
        str | None,
        typer.Argument(help="output OME-Zarr (a folder when INPUT is one); none with --labels"),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="write a JSON report here")] = None,
    **options: Any,
) -> None:
    """Segment an image, or every image of a folder, into OME-Zarr label masks."""
    from flows.runner import run_segment
    from unet.config import validated
    from unet.engine.destination import mask_location
    from unet.errors import ChunksFailed, writing

    parameters = validated(SegmentParameters, options)
    output = mask_location(input, output, parameters.labels)
    if report is not None:
        _check_report(report, input, output)
    try:
        reports = run_segment(input, output, parameters, progress=_show_progress())
    except ChunksFailed as error:
        if report is not None:  # the report names the failed chunks
            with writing(f"--report {report}"):
                report.write_text(json.dumps(error.report.to_dict(), indent=2))
        raise
    for item in reports:
        _print_summary(item)
    if report is not None:
        data = [r.to_dict() for r in reports]
        with writing(f"--report {report}"):
            report.write_text(json.dumps(data[0] if len(data) == 1 else data, indent=2))


@app.command()
def ingest(
    input: Annotated[Path, typer.Argument(help="TIFF, BigTIFF, SVS, GeoTIFF/COG, PNG or JPEG")],
    output: Annotated[str, typer.Argument(help="OME-Zarr 0.5 image to write")],
    chunk_size: Annotated[int, typer.Option(help="chunk side in pixels")] = 1024,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Convert an image file into an OME-Zarr 0.5 image with a pyramid."""
    from unet.io.ingest import ingest as run_ingest

    source = run_ingest(
        input,
        output,
        chunks=(chunk_size, chunk_size),
        overwrite=overwrite,
        progress=_show_progress(),
    )
    from unet.sizes import shape_label

    typer.echo(f"{output}: {shape_label(source.shape)}, {source.shape[0]} channel(s)")


@app.command()
def export(
    mask: Annotated[str, typer.Argument(help="label mask written by unet segment")],
    output: Annotated[
        Path,
        typer.Argument(
            help="Cloud-Optimized GeoTIFF to write (.tif), or polygons alone (.gpkg, .geojson, "
            ".parquet; GeoJSON of a mask without georeferencing is QuPath's); with --instances "
            "one polygon per object"
        ),
    ],
    vector: Annotated[
        Path | None, typer.Option(help="also polygons: .gpkg, .geojson or .parquet")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--class", help="polygonize only this class (name or value)")
    ] = None,
    object_type: Annotated[
        str, typer.Option(help="QuPath objectType in GeoJSON: detection or annotation")
    ] = "detection",
    instances: Annotated[
        bool,
        typer.Option(
            help="one polygon per object of the instance labels (unet segment --instances)"
        ),
    ] = False,
    min_area: Annotated[
        float | None,
        typer.Option(
            help="leave out polygons (fill holes) smaller than this: map units of the mask's CRS "
            "(m² for a projected one), or pixels without georeferencing; default 9 pixels; "
            "0 keeps every region"
        ),
    ] = None,
    simplify: Annotated[
        float,
        typer.Option(
            metavar="TOLERANCE",
            help="simplify polygons by this tolerance (map units, or pixels); 0 keeps the "
            "pixel outlines",
        ),
    ] = 0.0,
    level: Annotated[
        int, typer.Option(help="polygonize and write this pyramid level (0: full resolution)")
    ] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
) -> None:
    """Write a label mask as a Cloud-Optimized GeoTIFF and polygons for GIS tools, or as
    objects QuPath imports."""
    from unet.errors import InvalidParameter
    from unet.results.export import export as run_export
    from unet.results.export import export_instances

    if instances:
        if vector is not None:
            raise InvalidParameter(
                "with --instances OUTPUT is the polygons file: leave out --vector"
            )
        if level:
            raise InvalidParameter(
                "--instances exports the objects of level 0 (as the object table counts them): "
                "leave out --level"
            )
        result = export_instances(
            mask,
            output,
            label=label,
            overwrite=overwrite,
            object_type=object_type,
            min_area=min_area,
            simplify=simplify,
        )
        typer.echo(f"{output}: {result.polygons} objects{_specks(result.dropped)}")
        return
    result = run_export(
        mask,
        output,
        vector=vector,
        label=label,
        overwrite=overwrite,
        object_type=object_type,
        min_area=min_area,
        simplify=simplify,
        level=level,
    )
    if result.cog is not None:
        typer.echo(f"{result.cog}: Cloud-Optimized GeoTIFF")
    if result.vector is not None:
        typer.echo(f"{result.vector}: {result.polygons} polygons{_specks(result.dropped)}")


def _specks(dropped: int) -> str:
    return f" ({dropped} smaller than --min-area left out)" if dropped else ""


@app.command()
@with_options(TrainParameters)
def train(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="folder with images/ and masks/ (same stems), or a Zarr image with labels/"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="checkpoint to write (.safetensors)")],
    **options: Any,
) -> None:
    """Train the U-Net the paper's way on annotated images, or fine-tune one (--init).

    An interrupted run resumes when the same command is given again.
    """
    from unet.training.train import train as run_train

    result = run_train(data_dir, out, progress=_show_progress(), **options)
    dice = "n/a" if result.val_dice is None else f"{result.val_dice:.3f}"
    resumed = f" (resumed at step {result.resumed[-1]})" if result.resumed else ""
    typer.echo(
        f"{result.path}: {result.steps} steps in {result.seconds:.0f} s{resumed}, "
        f"final loss {result.final_loss:.4f}, validation Dice {dice}; plot {result.plot}"
    )


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="predicted labels: Zarr/OME-Zarr, TIFF or PNG")],
    gt: Annotated[Path, typer.Argument(help="ground-truth labels, same formats")],
    instances: Annotated[bool, typer.Option(help="also object-level F1 (IoU >= 0.5)")] = False,
    num_classes: Annotated[int | None, typer.Option(help="number of classes")] = None,
) -> None:
    """Dice and IoU per class (and object F1) of a predicted mask against ground truth."""
    from unet.results.evaluate import evaluate_paths

    typer.echo(
        json.dumps(evaluate_paths(pred, gt, num_classes=num_classes, instances=instances), indent=2)
    )


@app.command()
def serve(
    pipelines: Annotated[Path, typer.Argument(help="deployments file")] = Path("pipelines.yaml"),
    pool: Annotated[
        str | None, typer.Option(help="register with this work pool instead of serving")
    ] = None,
    image: Annotated[str | None, typer.Option(help="container image for a Docker pool")] = None,
) -> None:
    """Serve the deployments of PIPELINES on the Prefect server at PREFECT_API_URL."""
    import flows  # noqa: F401  (Prefect settings before prefect is imported)
    from flows.serve import deploy
    from flows.serve import serve as serve_pipelines

    if pool is None:
        serve_pipelines(pipelines)
    else:
        ids = deploy(pipelines, pool, image)
        typer.echo(f"registered {len(ids)} deployment(s) with work pool {pool}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(context: typer.Context) -> None:
    """Benchmark the raw model, the full pipeline and MONAI (the harness in benchmarks/)."""
    import subprocess

    harness = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not harness.is_file():
        from unet.errors import InputNotFound

        raise InputNotFound(
            f"unet bench runs {harness}, which this installation lacks: run it from a clone of "
            "the repository installed with pip install -e"
        )
    finished = subprocess.run([sys.executable, str(harness), *context.args], check=False)
    raise typer.Exit(finished.returncode)


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="where the demo writes")] = Path("demo-output"),
) -> None:
    """Segment generated images with the bundled model and show where the results are."""
    from flows.demo import run_demo

    run_demo(output, progress=_show_progress())


def _check_report(path: Path, input: str, output: str) -> None:
    """Refuse, before the run, a report that would replace an input, the output or a file that
    is not JSON (:mod:`unet.io.replace`), or that cannot be written."""
    from unet.errors import OutputWriteError
    from unet.io.replace import check_apart, check_replaceable

    check_apart(path, [input], what="--report")
    check_apart(path, [output], what="--report", role="output")
    check_replaceable(path, "json", what="--report")
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as error:
        raise OutputWriteError(
            f"--report {path} cannot be written ({error.strerror or error}): choose a writable "
            "path for the report"
        ) from None
    if not existed:
        path.unlink()


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _print_summary(report) -> None:
    from unet.sizes import shape_label

    fractions = ", ".join(f"{k} {v:.1%}" for k, v in report.class_fractions.items())
    objects = ""
    if report.objects_per_class is not None:
        counts = ", ".join(f"{k} {n}" for k, n in report.objects_per_class.items())
        objects = f"; objects: {counts}"
    typer.echo(
        f"{report.output}: {shape_label(report.shape)}, "
        f"{report.chunks_computed} chunks computed, {report.chunks_skipped} skipped, "
        f"{report.chunks_resumed} resumed, {report.megapixels_per_second:.3g} Mpx/s"
        + (f" ({fractions})" if fractions else "")
        + objects
    )
    if report.input_chunks_missing:
        typer.echo(
            f"warning: {report.input_chunks_missing} stored chunk(s) of {report.input} are "
            "missing and were read as its fill value (Zarr leaves out chunks equal to it): if "
            "chunks were lost, restore them and rerun with --overwrite",
            err=True,
        )


#: The exit status of a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def main() -> None:
    """Entry point of the ``unet`` console script."""
    from pydantic import ValidationError

    from unet.errors import UNetError

    usage_error, click_error = _click_errors()
    try:
        # Without standalone mode click returns an Exit's code instead of raising it.
        code = app(standalone_mode=False)
    except (UNetError, ValidationError, click_error) as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {_one_line(error, usage_error)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(INTERRUPTED)
    except typer.Exit as error:
        sys.exit(error.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # the unexpected
        if _state["debug"]:
            raise
        typer.echo(
            f"error: {type(error).__name__}: {_one_line(error, usage_error)} (rerun with --debug)",
            err=True,
        )
        sys.exit(1)
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code
        typer.echo("interrupted: rerun the same command to resume", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """The usage error and base exception classes of the click that typer runs on (typer 0.2x
    carries its own copy of click, earlier versions use click itself)."""
    lineage = typer.BadParameter.__mro__
    usage = next(kind for kind in lineage if kind.__name__ == "UsageError")
    base = next(kind for kind in lineage if kind.__name__ == "ClickException")
    return usage, base


def _one_line(error: Exception, usage_error: type[Exception]) -> str:
    from pydantic import ValidationError

    from unet.config import describe

    if isinstance(error, ValidationError):
        return describe(error)
    if hasattr(error, "format_message"):  # click's errors
        text = " ".join(error.format_message().split())
        context = getattr(error, "ctx", None)
        if isinstance(error, usage_error) and context is not None:
            return f"{text} (see {context.command_path} --help)"
        return text
    return " ".join(str(error).split())
