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

    from unet.engine.plan import RunPlan


def open_output(plan: RunPlan) -> zarr.Group:
    """The output group of ``plan``: resumed when the fingerprint matches, created (or
    replaced with ``overwrite``) otherwise.

    Raises
    ------
    OutputExists: something that ``unet segment`` did not write is there, without ``overwrite``
    FingerprintMismatch: another run's output is there, without ``overwrite``
    """
    import zarr

    output, fingerprint, checkpoint = plan.output, plan.fingerprint, plan.checkpoint
    parameters, chunks, shape = plan.parameters, plan.chunks, plan.source.shape[1:]

    from unet.engine.worker import PROBABILITIES_PATH
    from unet.io.locations import remove_location, resolve_location
    from unet.io.omezarr import create_label_image, image_calibration, set_label_listed
    from unet.io.pyramid import chunk_levels, create_chunk_levels

    existing = existing_group(output)
    if existing is not None:
        stored = existing.attrs.get(ATTRIBUTE)
        if stored is None and not parameters.overwrite:
            raise OutputExists(
                f"{output} exists and was not written by unet segment: "
                "use --overwrite to replace it, or choose another output"
            )
        if stored is not None and not parameters.overwrite:
            fingerprint.check_against(stored.get("fingerprint"), output)
            if not stored.get("complete") and LEDGER_PATH not in existing:
                create_ledger(existing, plan.grid.counts)  # lost: redo every chunk
            return existing
        remove_location(resolve_location(output))

    destination = plan.destination
    if destination.inside_image:
        set_label_listed(destination.image, destination.label_name, listed=False)
    pixel_size, unit = image_calibration(destination.image)
    create_label_image(
        output,
        shape,
        chunks,
        class_names=list(checkpoint.class_names),
        colours=[tuple(c) for c in checkpoint.colours],
        pixel_size=pixel_size,
        unit=unit,
        name=Path(str(output).rstrip("/")).stem,
        source=destination.source_reference,
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
    # NGFF: a label image inside an image has as many levels as the image.
    image_levels = len(plan.source.level_paths) if destination.inside_image else None
    levels = chunk_levels(shape, chunks, levels_wanted=image_levels)
    create_chunk_levels(group, levels)
    create_ledger(group, plan.grid.counts)
    group.attrs[ATTRIBUTE] = {
        "fingerprint": fingerprint.components,
        "digest": fingerprint.digest,
        "complete": False,
        "chunks": list(chunks),
        "chunk_levels": levels,
        "levels": image_levels,
    }
    return group


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
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ):
        if is_url(output):
            return None
        raise OutputExists(
            f"{output} exists and is not a Zarr group: use --overwrite to replace it, "
            "or choose another output"
        ) from None


def finish_output(plan: RunPlan) -> None:
    """Build the pyramid's levels that the chunks did not write, mark the run complete, delete
    the ledger and, for a mask inside its image, list it in the image's ``labels`` group.

    Each step is repeated safely, so a run killed between them finishes on its rerun.
    """
    import zarr

    from unet.io.omezarr import set_label_listed
    from unet.io.pyramid import build_pyramid

    output = plan.output
    group = zarr.open_group(output, mode="r+")
    state = dict(group.attrs[ATTRIBUTE])
    if not state.get("complete"):
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
