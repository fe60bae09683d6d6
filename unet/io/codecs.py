"""Zarr's codec pipeline: zarrs (Rust) where it is installed, zarr-python's own elsewhere.

zarr-python encodes and decodes chunks in Python around numcodecs, and funnels every call of
its sync API through one event loop. The zarrs pipeline does the same work in Rust, in parallel
and outside the GIL: writing a 1024^2 mask chunk, and its two pyramid levels, took a fraction
of the time (``benchmarks/chunk_profile.py`` on 2 CPU cores; figures in benchmarks/README.md). The
bytes written are the same Zarr format. Arrays zarrs cannot handle fall back to zarr-python's
pipeline by themselves.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zarr

ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
#: zarr-python's own codec pipeline. It writes through the store (a local chunk file is written
#: beside and renamed into place, where zarrs writes it in place) and honours
#: ``write_empty_chunks``: arrays opened with it where either matters more than speed.
STORE_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
#: The same setting for processes started from here (zarr reads ZARR_* variables at import).
ENVIRONMENT = {"ZARR_CODEC_PIPELINE__PATH": ZARRS_PIPELINE}


@functools.cache
def use_fast_codecs() -> bool:
    """Make arrays opened from now on in this process use zarrs; False where it is missing."""
    if importlib.util.find_spec("zarrs") is None:
        return False
    import zarr

    zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE})
    # A store or codec that zarrs does not support falls back to zarr-python, with a warning
    # that tells the user nothing they can act on.
    warnings.filterwarnings("ignore", message="Array is unsupported by ZarrsCodecPipeline")
    return True


def with_store_pipeline(array: zarr.Array, *, write_empty_chunks: bool = False) -> zarr.Array:
    """The same array, read and written through zarr-python's own codec pipeline
    (:data:`STORE_PIPELINE`) whatever the others of this process use.

    ``zarr.config.set({"codec_pipeline.path": ...})`` cannot do this safely: it is one setting of
    the whole process, so every array another thread opened meanwhile (a stream's mask, say)
    took that pipeline too, for good. ``write_empty_chunks``: store chunks equal to the fill
    value too (zarr-python's pipeline honours it; zarrs leaves them out anyway).
    """
    import dataclasses

    from zarr.core.codec_pipeline import BatchedCodecPipeline

    config = dataclasses.replace(array.config, write_empty_chunks=write_empty_chunks)
    copy = array.with_config(config)
    metadata = copy.metadata
    if hasattr(metadata, "codecs"):
        codecs = metadata.codecs
    else:  # a Zarr v2 array: its filters and compressor, as zarr wraps them
        from zarr.codecs._v2 import V2Codec

        codecs = [V2Codec(filters=metadata.filters, compressor=metadata.compressor)]
    # zarr sets the pipeline of a new array this way too (its arrays are frozen dataclasses).
    pipeline = BatchedCodecPipeline.from_codecs(codecs)
    object.__setattr__(copy.async_array, "codec_pipeline", pipeline)
    return copy
