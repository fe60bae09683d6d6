"""One exception hierarchy for the whole project.

Every error a user can cause derives from :class:`UNetError` and from the built-in it specialises,
so callers may catch either. Messages say what is wrong and how to fix it, in one line: the CLI
prints ``str(error)`` and exits non-zero (tracebacks only with ``--debug``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UNetError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidTileSize(UNetError, ValueError):
    """A tile or input side that the network cannot take exactly."""


class InvalidInputSize(UNetError, ValueError):
    """An input side for which the valid-padding U-Net has no exact output."""


class InvalidImage(UNetError, ValueError):
    """An image array of the wrong shape, dtype or content."""


class ChannelMismatch(UNetError, ValueError):
    """The image has a different number of channels than the model expects."""


class RangeMismatch(UNetError, ValueError):
    """The image's values lie far outside the range the model was trained on (another scale)."""


class InvalidParameter(UNetError, ValueError):
    """A parameter outside its allowed set (device, precision, batch size, ...)."""


class CheckpointError(UNetError, ValueError):
    """A checkpoint that is not a safetensors file of this project, or does not fit the model."""


class InputNotFound(UNetError, FileNotFoundError):
    """An input path or URL that does not exist."""


class UnsupportedInput(UNetError, ValueError):
    """An input that exists but is not an image this project reads."""


class OutputExists(UNetError, FileExistsError):
    """An output that exists and may not be replaced without ``--overwrite``."""


class FingerprintMismatch(UNetError, ValueError):
    """An output written by a run with other inputs, checkpoint or parameters."""


class OutputLocked(UNetError, RuntimeError):
    """Another run holds the lock on this output."""


class OutputWriteError(UNetError, OSError):
    """The output cannot be written: a read-only location, a full disk."""


class InputReadError(UNetError, OSError):
    """A chunk of the input that cannot be read or decoded (truncated, corrupt)."""


class ChunksFailed(UNetError, RuntimeError):
    """Some chunks could not be computed; the others are written and the output is incomplete.

    ``report`` is the run's :class:`~unet.engine.SegmentReport`, with ``chunks_failed``.
    """


class DeviceOutOfMemory(UNetError, MemoryError):
    """The device ran out of memory even with one tile per forward pass."""


class ConfigError(UNetError, ValueError):
    """A configuration file (e.g. pipelines.yaml) with unknown keys or bad values."""


class ServerUnreachable(UNetError, ConnectionError):
    """A configured server (Prefect API, Dask scheduler, an object store's endpoint) that does
    not answer."""


class MissingCredentials(UNetError, PermissionError):
    """No credentials for a remote store, or credentials the store does not know."""


class AccessDenied(UNetError, PermissionError):
    """A remote store refuses the credentials in use the access a run needs."""


class BucketNotFound(UNetError, FileNotFoundError):
    """A bucket (or container) of a remote location that does not exist at its endpoint."""


@contextlib.contextmanager
def writing(target: str) -> Iterator[None]:
    """Turn an OSError raised while writing ``target`` (disk full, read-only) into a one-line
    :class:`OutputWriteError`; errors of this hierarchy pass through unchanged."""
    try:
        yield
    except UNetError:
        raise
    except (OSError, RuntimeError) as error:
        # The zarrs codec pipeline reports I/O failures as RuntimeError("... (os error 28)").
        if not isinstance(error, OSError) and "(os error " not in str(error):
            raise
        raise OutputWriteError(
            f"writing {target} failed ({type(error).__name__}: {error}): free space or fix "
            "permissions, then rerun the same command to resume"
        ) from error
