"""Chunk files written and read without zarr's machinery: what zarr writes and reads, atomic,
and only where they apply."""

from __future__ import annotations

import errno
import uuid

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from unet.io.chunkfiles import ChunkFiles
from unet.io.source import open_image


def make_array(path, shape, chunks, dtype="uint8", fill_value=0, **options):
    options.setdefault("compressors", [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")])
    return zarr.create_array(
        str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value, **options
    )


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("compressors", ["blosc", "zstd", None])
def test_chunks_written_here_are_what_zarr_reads_and_the_reverse(tmp_path, dtype, compressors):
    rng = np.random.default_rng(0)
    shape, chunks = (70, 45), (32, 32)  # edge chunks of 6 rows and 13 columns
    options = {
        "blosc": {},
        "zstd": {"compressors": [ZstdCodec(level=3, checksum=True)]},
        None: {"compressors": None},
    }[compressors]
    ours = make_array(tmp_path / "ours.zarr", shape, chunks, dtype, **options)
    theirs = make_array(tmp_path / "theirs.zarr", shape, chunks, dtype, **options)
    files = ChunkFiles.of(ours)
    assert files is not None and (files.compressor is None) == (compressors is None)
    data = (rng.random(shape) * 200).astype(dtype)
    data[32:64, :32] = 0  # a chunk of the fill value only
    theirs[...] = data
    for i in range(3):
        for j in range(2):
            rows, cols = slice(32 * i, min(32 * i + 32, 70)), slice(32 * j, min(32 * j + 32, 45))
            files.write((i, j), data[rows, cols])
            whole = ChunkFiles.of(theirs).read((i, j))  # zarr's file, read here
            np.testing.assert_array_equal(
                whole[: rows.stop - rows.start, : cols.stop - cols.start], data[rows, cols]
            )
    np.testing.assert_array_equal(ours[...], data)  # our files, read by zarr
    assert not (tmp_path / "ours.zarr" / "c" / "1" / "0").exists(), "zarr leaves it out too"
    files.write((0, 0), np.zeros((32, 32), dtype))  # the fill value: the file goes
    assert not (tmp_path / "ours.zarr" / "c" / "0" / "0").exists() and (ours[:32, :32] == 0).all()
    assert not list((tmp_path / "ours.zarr").rglob("*.partial"))


def test_only_plain_local_v3_arrays_of_blosc_or_raw_bytes_have_chunk_files(tmp_path):
    assert ChunkFiles.of(make_array(tmp_path / "a.zarr", (8, 8), (4, 4))) is not None
    sharded = make_array(tmp_path / "s.zarr", (8, 8), (2, 2), shards=(4, 4))
    v2 = zarr.create_array(
        str(tmp_path / "v2.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint8", zarr_format=2
    )
    gzip = make_array(tmp_path / "z.zarr", (8, 8), (4, 4), compressors=[GzipCodec(level=1)])
    big = zarr.create_array(
        str(tmp_path / "big.zarr"), shape=(8, 8), chunks=(4, 4), dtype=">u2", compressors=None
    )
    memory = zarr.create_array({}, shape=(8, 8), chunks=(4, 4), dtype="uint8")
    for array in (sharded, v2, gzip, big, memory):
        assert ChunkFiles.of(array) is None, array


def test_a_full_disk_fails_the_write_and_keeps_the_chunk_that_was_there(tmp_path, monkeypatch):
    array = make_array(tmp_path / "a.zarr", (8, 8), (8, 8))
    array[...] = 7
    files = ChunkFiles.of(array)
    fixed = uuid.UUID(int=1)
    monkeypatch.setattr("unet.io.chunkfiles.uuid.uuid4", lambda: fixed)
    # The file a write goes to first, before its rename: /dev/full, where a write is ENOSPC.
    temporary = files.path((0, 0)).with_name(f".0.{fixed.hex}.partial")
    temporary.symlink_to("/dev/full")
    with pytest.raises(OSError) as caught:
        files.write((0, 0), np.full((8, 8), 9, np.uint8))
    assert caught.value.errno == errno.ENOSPC
    assert not temporary.exists() and not temporary.is_symlink()
    assert (array[...] == 7).all(), "the old chunk is whole"


@pytest.mark.parametrize(
    "shape, chunks", [((3, 70, 45), (1, 32, 32)), ((2, 70, 45), (2, 32, 32)), ((70, 45), (32, 32))]
)
def test_a_source_reads_a_stored_chunk_as_its_region(tmp_path, shape, chunks):
    data = np.random.default_rng(1).integers(0, 60000, shape).astype(np.uint16)
    array = make_array(tmp_path / "in.zarr", shape, chunks, "uint16")
    array[...] = data
    source = open_image(str(tmp_path / "in.zarr"))
    assert source._chunk_files is not None
    cube = data if data.ndim == 3 else data[None]
    for i in range(3):
        for j in range(2):
            rows, cols = slice(32 * i, min(32 * i + 32, 70)), slice(32 * j, min(32 * j + 32, 45))
            out = np.empty(
                (cube.shape[0], rows.stop - rows.start, cols.stop - cols.start), np.uint16
            )
            np.testing.assert_array_equal(source.read_stored_chunk(i, j, out), cube[:, rows, cols])
