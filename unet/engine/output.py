"""The output store of a run: created with its levels, ledger and fingerprint, resumed when the
fingerprint matches, refused or replaced otherwise, and marked complete at the end."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unet.engine.ledger import ATTRIBUTE, create_ledger
from unet.errors import OutputExists

if TYPE_CHECKING:
    import zarr

    from unet.engine.levels import UpperLevels
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
    from unet.io.omezarr import create_label_image
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
    create_ledger(group, plan.grid.counts)
    group.attrs[ATTRIBUTE] = {
        "fingerprint": fingerprint.components,
        "digest": fingerprint.digest,
        "complete": False,
        "chunks": list(chunks),
        "chunk_levels": levels,
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


def finish_output(output: str, levels: UpperLevels | None = None) -> None:
    """Build the pyramid's levels that the chunks did not write, and mark the run complete.

    ``levels``: those levels, built while the run went on (:class:`unet.engine.levels.UpperLevels`);
    only what is left of them is built here.
    """
    import zarr

    from unet.io.pyramid import build_pyramid

    group = zarr.open_group(output, mode="r+")
    keep = group.attrs[ATTRIBUTE].get("chunk_levels", 0)
    if levels is not None:
        levels.finish()
    else:
        build_pyramid(output, reduction="nearest", keep_levels=keep)
    group = zarr.open_group(output, mode="r+")
    state = dict(group.attrs[ATTRIBUTE])
    state["complete"] = True
    group.attrs[ATTRIBUTE] = state
