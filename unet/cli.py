"""The ``unet`` command: parses, calls the library, prints. No pixel arithmetic here.

Errors a user can cause (:class:`~unet.errors.UNetError`, invalid parameters) print one line on
stderr and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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
def segment(
    input: Annotated[str, typer.Argument(help="Zarr/OME-Zarr image, TIFF/PNG/JPEG, or a folder")],
    output: Annotated[str, typer.Argument(help="output OME-Zarr (a folder when INPUT is one)")],
    model: Annotated[str, typer.Option(help="checkpoint .safetensors or bundled name")] = "nuclei",
    tile_size: Annotated[int | None, typer.Option(help="model tile side (valid size)")] = None,
    batch_size: Annotated[int, typer.Option(help="tiles per forward pass")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16, fp16 or auto")] = "fp32",
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="existing Dask scheduler, tcp://HOST:PORT")
    ] = None,
    skip_background: Annotated[
        bool, typer.Option(help="label 0 for chunks without tissue")
    ] = False,
    nodata: Annotated[float | None, typer.Option(help="pixel value meaning no data")] = None,
    probabilities: Annotated[bool, typer.Option(help="also write float16 softmax")] = False,
    channels_last: Annotated[bool, typer.Option(help="input array is (Y, X, C)")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace outputs of other runs")] = False,
    report: Annotated[Path | None, typer.Option(help="write a JSON report here")] = None,
) -> None:
    """Segment an image, or every image of a folder, into OME-Zarr label masks."""
    from unet.config import SegmentParameters

    parameters = SegmentParameters(
        model=model,
        tile_size=tile_size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        workers=workers,
        scheduler=scheduler,
        skip_background=skip_background,
        nodata=nodata,
        probabilities=probabilities,
        channels_last=channels_last,
        overwrite=overwrite,
    )
    from flows.runner import run_segment
    from unet.errors import ChunksFailed

    try:
        reports = run_segment(input, output, parameters, progress=_show_progress())
    except ChunksFailed as error:
        if report is not None:  # the report names the failed chunks
            report.write_text(json.dumps(error.report.to_dict(), indent=2))
        raise
    for item in reports:
        _print_summary(item)
    if report is not None:
        data = [r.to_dict() for r in reports]
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
    typer.echo(f"{output}: {source.shape[0]} channel(s), {source.shape[1]}x{source.shape[2]} px")


@app.command()
def export(
    mask: Annotated[str, typer.Argument(help="label mask written by unet segment")],
    output: Annotated[Path, typer.Argument(help="Cloud-Optimized GeoTIFF to write (.tif)")],
    vector: Annotated[
        Path | None, typer.Option(help="also polygons: .gpkg, .geojson or .parquet")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--class", help="polygonize only this class (name or value)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
) -> None:
    """Write a label mask as a Cloud-Optimized GeoTIFF (and polygons) for GIS tools."""
    from unet.results.export import export as run_export

    result = run_export(mask, output, vector=vector, label=label, overwrite=overwrite)
    typer.echo(f"{result.cog}: Cloud-Optimized GeoTIFF")
    if result.vector is not None:
        typer.echo(f"{result.vector}: {result.polygons} polygons")


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="folder with images/ and masks/ (same stems)")],
    out: Annotated[Path, typer.Option("--out", help="checkpoint to write (.safetensors)")],
    base_channels: Annotated[int, typer.Option(help="channels of the first level")] = 64,
    depth: Annotated[int, typer.Option(help="number of poolings")] = 4,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 1000,
    batch_size: Annotated[int, typer.Option(help="tiles per step")] = 4,
    tile_size: Annotated[int | None, typer.Option(help="input tile side (valid size)")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (SGD 0.01, Adam 0.001)")] = None,
    seed: Annotated[int, typer.Option(help="random seed (deterministic on CPU)")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16")] = "fp32",
    val_fraction: Annotated[float, typer.Option(help="share of images held out")] = 0.2,
    optimizer: Annotated[str, typer.Option(help="sgd (momentum 0.99, the paper) or adam")] = "sgd",
    class_map: Annotated[
        str | None, typer.Option(help="mask value to class, e.g. 10:1,20:2")
    ] = None,
    class_names: Annotated[
        str | None, typer.Option(help="comma-separated names, label 0 first")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing checkpoint")] = False,
) -> None:
    """Train the U-Net the paper's way on annotated images."""
    from unet.training.train import train as run_train

    result = run_train(
        data_dir,
        out,
        base_channels=base_channels,
        depth=depth,
        steps=steps,
        batch_size=batch_size,
        tile_size=tile_size,
        lr=lr,
        seed=seed,
        device=device,
        precision=precision,
        val_fraction=val_fraction,
        optimizer=optimizer,
        class_map=class_map,
        class_names=class_names.split(",") if class_names else None,
        overwrite=overwrite,
        progress=_show_progress(),
    )
    dice = "n/a" if result.val_dice is None else f"{result.val_dice:.3f}"
    typer.echo(
        f"{result.path}: {result.steps} steps in {result.seconds:.0f} s, "
        f"final loss {result.final_loss:.4f}, validation Dice {dice}"
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


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16, fp16 or auto")] = "auto",
    tile_size: Annotated[int | None, typer.Option(help="model tile side (valid size)")] = None,
    batch_size: Annotated[int, typer.Option(help="tiles per forward pass")] = 4,
    model: Annotated[
        str | None, typer.Option(help="checkpoint (default the bundled nuclei model)")
    ] = None,
    base_channels: Annotated[
        int | None, typer.Option(help="random model of this width instead")
    ] = None,
    depth: Annotated[int | None, typer.Option(help="random model of this depth instead")] = None,
    paper: Annotated[bool, typer.Option(help="random paper U-Net (base 64, depth 4)")] = False,
    sides: Annotated[str, typer.Option(help="pipeline image sides, comma-separated")] = "2048,4096",
    monai: Annotated[bool, typer.Option(help="compare with MONAI sliding_window_inference")] = True,
    monai_side: Annotated[
        int | None, typer.Option(help="MONAI image side (default the largest side)")
    ] = None,
    tile_sweep: Annotated[
        str | None, typer.Option(help="raw-model tile sizes, comma-separated")
    ] = None,
    tissue_fraction: Annotated[
        float | None, typer.Option(help="also time --skip-background at this tissue share")
    ] = None,
    quick: Annotated[bool, typer.Option(help="tiny sizes, in-process (smoke test)")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a PNG plot here")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="write JSON here")] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="keep generated images here between runs")
    ] = None,
    rounds: Annotated[
        int, typer.Option(help="run it all this many times; targets on the medians")
    ] = 1,
) -> None:
    """Benchmark the raw model, the full pipeline and MONAI on the same device and settings."""
    from unet.bench import run_rounds

    def numbers(text: str | None) -> tuple[int, ...] | None:
        return None if text is None else tuple(int(v) for v in text.split(",") if v.strip())

    run_rounds(
        rounds,
        device=device,
        precision=precision,
        tile_size=tile_size,
        batch_size=batch_size,
        model=model,
        base_channels=base_channels,
        depth=depth,
        paper=paper,
        sides=numbers(sides) or (2048, 4096),
        monai=monai,
        monai_side=monai_side,
        tile_sweep=numbers(tile_sweep),
        tissue_fraction=tissue_fraction,
        quick=quick,
        plot=plot,
        json_path=json_file,
        workdir=workdir,
        echo=typer.echo,
    )


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="where the demo writes")] = Path("demo-output"),
) -> None:
    """Segment generated images with the bundled model and show where the results are."""
    from flows.demo import run_demo

    run_demo(output, progress=_show_progress())


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _print_summary(report) -> None:
    fractions = ", ".join(f"{k} {v:.1%}" for k, v in report.class_fractions.items())
    typer.echo(
        f"{report.output}: {report.shape[1]}x{report.shape[2]} px, "
        f"{report.chunks_computed} chunks computed, {report.chunks_skipped} skipped, "
        f"{report.chunks_resumed} resumed, {report.megapixels_per_second:.3g} Mpx/s"
        + (f" ({fractions})" if fractions else "")
    )


def main() -> None:
    """Entry point of the ``unet`` console script."""
    from pydantic import ValidationError

    from unet.errors import UNetError

    try:
        app(standalone_mode=False)
    except (UNetError, ValidationError) as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {_one_line(error)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as error:  # click's usage errors and the unexpected
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Exit):
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(1)
        if _state["debug"]:
            raise
        typer.echo(
            f"error: {type(error).__name__}: {_one_line(error)} (rerun with --debug)", err=True
        )
        sys.exit(1)


def _one_line(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()
        ]
        return "; ".join(parts)
    return " ".join(str(error).split())
