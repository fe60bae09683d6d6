"""Whole chunks of local Zarr v3 arrays read and written as files, without zarr's machinery per
call.

A chunk task reads its input and writes its mask a whole stored chunk at a time: the chunk is
one file of a known codec chain (the ``bytes`` codec, then Blosc, Zstd or nothing), and the work that
matters is the codec itself. Through zarr-python's indexing and codec pipeline, each such call
cost the worker about as much CPU again as the codec (benchmarks/README.md); here it is a file
read or an atomic write (a temporary file renamed into place, as zarr's own ``LocalStore``
writes) and one call of the same Blosc library (``numcodecs``), which releases the GIL.

:meth:`ChunkFiles.of` answers None for anything else (object stores, sharded arrays, Zarr v2,
other codecs, big-endian data), and callers then go through zarr as before. The bytes written
are what zarr writes for that codec chain, and zarr reads them (tests/io/test_io_chunkfiles.py);
a chunk equal to the fill value everywhere is not stored, as zarr leaves it out.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import zarr

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class ChunkFiles:
    """The chunk files of one local Zarr v3 array.

    Attributes
    ----------
    folder: the array's folder
    shape, chunks: the array's shape and chunk shape
    dtype: its data type (native byte order)
    fill_value: what an absent chunk holds
    compressor: a ``numcodecs.Blosc`` or ``numcodecs.Zstd`` of the array's own settings, or
        None (raw bytes)
    keys: the array's chunk key encoding (``encode_chunk_key``)
    """

    folder: Path
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    compressor: Any
    keys: Any

    @classmethod
    def of(cls, array: zarr.Array) -> ChunkFiles | None:
        """The chunk files of ``array``, or None when it is not a plain local Zarr v3 array of
        the ``bytes`` codec and Blosc, Zstd (zarr's default) or no compressor."""
        from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
        from zarr.storage import LocalStore

        store = array.store_path.store
        metadata = array.metadata
        if not isinstance(store, LocalStore) or metadata.zarr_format != 3 or array.shards:
            return None
        codecs = list(metadata.codecs)
        if not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        dtype = np.dtype(array.dtype)
        if not dtype.isnative:
            return None
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.itemsize > 1 and endian not in (None, sys.byteorder):
            return None
        compressor = None
        if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
            from numcodecs import Blosc

            blosc = codecs[1]
            compressor = Blosc(
                cname=str(getattr(blosc.cname, "value", blosc.cname)),
                clevel=int(blosc.clevel),
                shuffle=_SHUFFLE[str(getattr(blosc.shuffle, "value", blosc.shuffle))],
                blocksize=int(blosc.blocksize or 0),
            )
        elif len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
            from numcodecs import Zstd

            compressor = Zstd(level=int(codecs[1].level), checksum=bool(codecs[1].checksum))
        elif len(codecs) != 1:
            return None
        path = array.store_path.path
        return cls(
            folder=Path(store.root, path) if path else Path(store.root),
            shape=tuple(int(n) for n in array.shape),
            chunks=tuple(int(n) for n in array.chunks),
            dtype=dtype,
            fill_value=array.fill_value,
            compressor=compressor,
            keys=metadata.chunk_key_encoding,
        )

    def path(self, coords: tuple[int, ...]) -> Path:
        """The file of chunk ``coords``."""
        return self.folder / self.keys.encode_chunk_key(tuple(int(c) for c in coords))

    def read(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``coords`` at its full chunk shape (the fill value where it is absent), into
        ``out`` when given (C-contiguous, of that shape and dtype)."""
        if out is None:
            out = np.empty(self.chunks, self.dtype)
        try:
            data = self.path(coords).read_bytes()
        except FileNotFoundError:
            out[...] = self.fill_value
            return out
        if self.compressor is None:
            out[...] = np.frombuffer(data, self.dtype).reshape(self.chunks)
        else:
            self.compressor.decode(data, out=out)
        return out

    def write(self, coords: tuple[int, ...], block: np.ndarray) -> None:
        """Store chunk ``coords`` holding ``block`` (its part inside the array; the rest of the
        chunk is the fill value), atomically; a chunk of the fill value only is deleted."""
        target = self.path(coords)
        if bool(np.all(block == self.fill_value)):
            self.delete(coords)
            return
        whole = block
        if block.shape != self.chunks:
            whole = np.full(self.chunks, self.fill_value, self.dtype)
            whole[tuple(slice(0, n) for n in block.shape)] = block
        whole = np.ascontiguousarray(whole, dtype=self.dtype)
        data = whole.tobytes() if self.compressor is None else self.compressor.encode(whole)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def delete(self, coords: tuple[int, ...]) -> None:
        """Remove chunk ``coords``'s file (it then reads as the fill value); nothing if absent."""
        self.path(coords).unlink(missing_ok=True)
