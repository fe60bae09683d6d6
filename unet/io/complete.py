"""Whether a mask that ``unet segment`` wrote is finished: every reader refuses one that is not.

A run writes its chunks in place and marks the mask ``{"unet": {"complete": true}}`` only once
every chunk and pyramid level is written; until then a chunk may be missing (read as 0) or
partial. Its instance image is finished when the mask records it (``unet.instances``) with the
same run's digest. Stores without the ``unet`` attribute (other tools' labels, ground truth)
are read as they are.
"""

from __future__ import annotations

import posixpath

from unet.errors import InvalidImage
from unet.io.locations import read_json, resolve_location

#: The project's attribute on its stores (groups and arrays); every module that reads or writes
#: it takes the name from here.
ATTRIBUTE = "unet"


def check_finished(location: str, *, reader: str = "read") -> None:
    """Refuse an unfinished mask (or instance image) of ``unet segment`` at ``location``: the
    store itself, or a level array inside it (``mask.zarr/0``).

    Raises
    ------
    InvalidImage: naming the store and the fix (rerun the segment command to finish it)
    """
    place = resolve_location(location).rstrip("/")
    for store in (place, posixpath.dirname(place)):
        state = _state(store)
        if state is None:
            continue
        if ("fingerprint" in state or "complete" in state) and not state.get("complete"):
            raise InvalidImage(
                f"{store} is an unfinished unet segment run (not marked complete: chunks may be "
                f"missing or partial): rerun the same segment command to finish it, then {reader}"
            )
        if "mask" in state and not _instances_recorded(store, state):
            raise InvalidImage(
                f"{store} is an instance image that its mask does not record as finished (a "
                "killed or later run): rerun the mask's unet segment command with --instances, "
                f"then {reader}"
            )
        return


def _state(store: str) -> dict | None:
    document = read_json(f"{store}/zarr.json")
    attributes = document.get("attributes") if isinstance(document, dict) else None
    state = attributes.get(ATTRIBUTE) if isinstance(attributes, dict) else None
    return state if isinstance(state, dict) else None


def _instances_recorded(store: str, state: dict) -> bool:
    """Whether the mask named by an instance image records a finished pass of the same run."""
    mask = str(state.get("mask", ""))
    if "://" in store:
        scheme, path = store.split("://", 1)
        mask_location = f"{scheme}://{posixpath.normpath(posixpath.join(path, mask))}"
    else:
        mask_location = posixpath.normpath(posixpath.join(store, mask))
    mask_state = _state(mask_location) or {}
    return (
        bool(mask_state.get("complete"))
        and isinstance(mask_state.get("instances"), dict)
        and mask_state.get("digest") == state.get("digest")
    )
