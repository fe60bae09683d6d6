"""What runs, task runs and artifacts are called, so that a user can tell them apart.

A flow run is named after its input and output (``cells-a → masks``), a task run after its step
and image (``segment cells-a``), and an artifact key says which output it belongs to, readably
and uniquely: two outputs both named ``cells-c`` in ``out1/`` and ``out2/`` get different keys.
Pure functions of paths; ``prefect`` is not imported here.
"""

from __future__ import annotations

import hashlib
import os
import re

from unet.runs import image_name

#: The tag of every flow and task run of this project (runs also carry their origin's tags:
#: ``cli`` for ``unet segment``, a deployment's own).
RUN_TAG = "unet"

#: Hex digits of the output location's hash in an artifact key.
KEY_HASH_DIGITS = 6

#: Characters of an error kept in a table cell (the UI does not wrap cells); the whole text is
#: in the run's log and state message.
FAILURE_CHARACTERS = 100

#: An absolute or home-relative path, or a URL, as a word of its own (not ``bf16/fp16``).
_PATH = re.compile(r"(?<![\w.])(?:[a-z][a-z0-9+.-]*://|~?/)[^\s'\"]+")


def output_name(output: str) -> str:
    """``masks/a.zarr`` -> ``a``."""
    name = str(output).rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def display_name(location: str) -> str:
    """The last part of a path or URL without ``.zarr`` or an image file's suffix."""
    return image_name(location)


def flow_run_name(input: str, output: str) -> str:
    """``images → masks``; the output's folder is added when both have the same name
    (``cells-a.png`` into ``masks/cells-a.zarr``: ``cells-a → masks/cells-a``)."""
    source, target = display_name(input), display_name(output)
    if source == target:
        parent = display_name(_parent(output))
        target = f"{parent}/{target}" if parent else target
    return f"{source} → {target}"


def task_run_name(step: str, image: str) -> str:
    """``segment cells-a``: the step and the image (``scans/cells-a.png``)."""
    return f"{step} {display_name(image)}"


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) naming ``name``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "image"


def output_key(output: str, kind: str) -> str:
    """The key of the ``kind`` artifact of ``output``: the output's folder and name, a short
    hash of its whole location, and the kind (``out1-cells-c-3f09a2-preview``).

    The same output always gets the same key, so a rerun's artifact is the next version of the
    last run's; another output gets another key, even when its name is the same.
    """
    location = _location(output)
    readable = artifact_key(f"{display_name(_parent(location))} {output_name(location)}")
    digest = hashlib.sha256(location.encode()).hexdigest()[:KEY_HASH_DIGITS]
    return f"{readable}-{digest}-{artifact_key(kind)}"


def summarized(error: BaseException, characters: int = FAILURE_CHARACTERS) -> str:
    """``ErrorType: message`` on one line for a table cell: paths shortened to their last part,
    cut at a word to about ``characters``."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    text = _PATH.sub(_last_part, text)
    if len(text) <= characters:
        return text
    cut = text[:characters].rsplit(" ", 1)[0]
    return f"{cut} …"


def _last_part(match: re.Match[str]) -> str:
    path = match.group(0)
    kept = path.rstrip(".,;:)")
    return kept.rstrip("/").rsplit("/", 1)[-1] + path[len(kept) :]


def _location(output: str) -> str:
    """``output`` as one string per location: a URL as given, a path absolute."""
    text = str(output).rstrip("/")
    return text if "://" in text else os.path.abspath(text)


def _parent(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[0] if "/" in str(location) else ""
