"""The output store of a run: created with its levels, ledger and fingerprint, resumed when the
fingerprint matches, refused or replaced otherwise, and marked complete at the end.

Where the store lies (a mask of its own, or ``IMAGE.zarr/labels/NAME``) is the plan's
:class:`~unet.engine.destination.Destination`. A finished store holds the pyramid levels (and
``probabilities`` when asked for) and attributes; the ledger goes once the run is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unet.engine.ledger import ATTRIBUTE, LEDGER_PATH, create_ledger, remove_ledger
from unet.errors import OutputExists

if TYPE_CHECKING:
    import zarr

    from unet.engine.levels import UpperLevels
    from unet.engine.plan import RunPlan


def open_output(plan: RunPlan) -> zarr.Group:
    """The output group of ``plan``: resumed when the fingerprint matches, created (or
    replaced with ``overwrite``) otherwise.

    The store is recognisable as this run's from its first write: a local one is built under a
    hidden sibling name and renamed into place complete (levels, ledger, fingerprint), and the
    group's first metadata of a URL already holds the fingerprint. So a run stopped by a write
    error at any point leaves either nothing or an output the same command resumes.

    Raises
    ------
    OutputExists: something that ``unet segment`` did not write is there, without ``overwrite``
    FingerprintMismatch: another run's output is there, without ``overwrite``
    """
    import zarr

    from unet.io.locations import is_url, location_exists, remove_location, resolve_location
    from unet.io.omezarr import set_label_listed
    from unet.io.staging import (
        remove_staging,
        remove_stale_staging,
        replace_location,
        staging_location,
    )

    output, fingerprint, overwrite = plan.output, plan.fingerprint, plan.parameters.overwrite
    location = resolve_location(output)
    if not is_url(location):
        remove_stale_staging(location)
    existing = None if overwrite else existing_group(output)
    if existing is not None:
        stored = existing.attrs.get(ATTRIBUTE)
        if stored is None:
            raise OutputExists(
                f"{output} exists and was not written by unet segment: "
                "use --overwrite to replace it, or choose another output"
            )
        fingerprint.check_against(stored.get("fingerprint"), output)
        # The ledger is created last and deleted once the run is complete: with neither, the
        # layout of a URL output was cut short, and it is created again.
        if LEDGER_PATH in existing or stored.get("complete"):
            return existing
    destination = plan.destination
    if destination.inside_image:
        set_label_listed(destination.image, destination.label_name, listed=False)
    if is_url(location):
        if location_exists(location):
            remove_location(location)
        _create_layout(location, plan)
    else:
        staging = staging_location(location)
        try:
            _create_layout(staging, plan)
        except BaseException:
            remove_staging(staging)
            raise
        replace_location(staging, location)
    return zarr.open_group(output, mode="r+")


def _create_layout(location: str, plan: RunPlan) -> None:
    """Create the empty output at ``location``: the label image with the run's fingerprint in
    its first metadata, the probabilities and pyramid levels the chunks write, the ledger last."""
    import zarr

    from unet.engine.worker import PROBABILITIES_PATH
    from unet.io.omezarr import create_label_image, image_calibration
    from unet.io.pyramid import chunk_levels, create_chunk_levels

    checkpoint, chunks, shape = plan.checkpoint, plan.chunks, plan.source.shape[1:]
    destination = plan.destination
    # NGFF: a label image inside an image has as many levels as the image.
    image_levels = len(plan.source.level_paths) if destination.inside_image else None
    levels = chunk_levels(shape, chunks, levels_wanted=image_levels)
    nodata = mask_nodata(plan)
    state = {
        "fingerprint": plan.fingerprint.components,
        "digest": plan.fingerprint.digest,
        "complete": False,
        "chunks": list(chunks),
        "chunk_levels": levels,
        "levels": image_levels,
        "nodata": nodata,
    }
    pixel_size, unit = image_calibration(destination.image)
    create_label_image(
        location,
        shape,
        chunks,
        class_names=list(checkpoint.class_names),
        colours=[tuple(c) for c in checkpoint.colours],
        pixel_size=pixel_size,
        unit=unit,
        name=Path(str(plan.output).rstrip("/")).stem,
        source=destination.source_reference,
        attributes={ATTRIBUTE: state},
        nodata=nodata,
    )
    group = zarr.open_group(location, mode="r+")
    if plan.parameters.probabilities:
        num = checkpoint.model.num_classes
        group.create_array(
            PROBABILITIES_PATH,
            shape=(num, *shape),
            chunks=(num, *chunks),
            dtype="float16",
            fill_value=0,
            dimension_names=("c", "y", "x"),
        )
    create_chunk_levels(group, levels)
    create_ledger(group, plan.grid.counts)


def mask_nodata(plan: RunPlan) -> int | None:
    """The label of ``plan``'s no-data pixels in the mask: :data:`~unet.io.omezarr.MASK_NODATA`
    when the run has a no-data value (given, or the input's own), else None (non-finite pixels
    of a float input then get label 0, as background)."""
    from unet.io.omezarr import MASK_NODATA

    return MASK_NODATA if plan.parameters.nodata is not None else None


def existing_group(output: str):
    """The Zarr group at ``output``; None when nothing is there."""
    import zarr

    from unet.io.locations import is_url, location_exists, resolve_location

    if not location_exists(resolve_location(output)):
        return None
    try:
        return zarr.open_group(output, mode="r+")
    except (
        FileNotFoundError,
        FileExistsError,  # a plain file where the store would be
        NotADirectoryError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ):
        if is_url(output):
            return None
        raise OutputExists(
            f"{output} exists and is not a Zarr group: use --overwrite to replace it, "
            "or choose another output"
        ) from None


def finish_output(plan: RunPlan, levels: UpperLevels | None = None) -> None:
    """Build the pyramid's levels that the chunks did not write, mark the run complete, delete
    the ledger and, for a mask inside its image, list it in the image's ``labels`` group.

    ``levels``: those levels, built while the run went on (:class:`unet.engine.levels.UpperLevels`);
    only what is left of them is built here. Each step is repeated safely, so a run killed
    between them finishes on its rerun.
    """
    import zarr

    from unet.io.omezarr import set_label_listed
    from unet.io.pyramid import build_pyramid

    output = plan.output
    group = zarr.open_group(output, mode="r+")
    state = dict(group.attrs[ATTRIBUTE])
    if not state.get("complete"):
        if levels is not None:
            levels.finish()
        else:
            build_pyramid(
                output,
                reduction="nearest",
                keep_levels=state.get("chunk_levels", 0),
                levels=state.get("levels"),
            )
        group = zarr.open_group(output, mode="r+")
        state["complete"] = True
        group.attrs[ATTRIBUTE] = state
    remove_ledger(group)
    destination = plan.destination
    if destination.inside_image:
        set_label_listed(destination.image, destination.label_name, listed=True)
        if plan.parameters.instances:
            instances = f"{destination.label_name}-instances"
            set_label_listed(destination.image, instances, listed=True)
