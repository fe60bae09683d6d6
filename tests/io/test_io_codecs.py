"""Arrays read and written through zarr-python's own pipeline beside arrays using zarrs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

import unet.io.codecs as codecs
from unet.io.codecs import use_fast_codecs

pytestmark = pytest.mark.skipif(not use_fast_codecs(), reason="zarrs is not installed")


def test_store_pipeline_array_leaves_the_process_setting_and_other_arrays_alone(tmp_path):
    from zarr.core.codec_pipeline import BatchedCodecPipeline

    array = zarr.create_array(tmp_path / "a.zarr", shape=(4, 4), chunks=(2, 2), dtype="uint8")
    setting = zarr.config.get("codec_pipeline.path")
    seen = []
    stop = threading.Event()

    def open_others() -> None:  # as a stream's other threads do meanwhile
        while not stop.is_set():
            other = zarr.open_array(tmp_path / "a.zarr", mode="r")
            seen.append(type(other.async_array.codec_pipeline).__name__)

    thread = threading.Thread(target=open_others)
    thread.start()
    try:
        for _ in range(200):
            copy = codecs.with_store_pipeline(array, write_empty_chunks=True)
    finally:
        stop.set()
        thread.join()
    assert isinstance(copy.async_array.codec_pipeline, BatchedCodecPipeline)
    assert copy.config.write_empty_chunks and not array.config.write_empty_chunks
    assert zarr.config.get("codec_pipeline.path") == setting
    assert seen and set(seen) == {type(array.async_array.codec_pipeline).__name__} != {
        "BatchedCodecPipeline"
    }
    copy[0:2, 0:2] = 0  # the fill value, stored all the same
    copy[2:4, 2:4] = 7
    assert (tmp_path / "a.zarr" / "c" / "0" / "0").is_file()
    np.testing.assert_array_equal(
        zarr.open_array(tmp_path / "a.zarr", mode="r")[...],
        np.kron(np.array([[0, 0], [0, 7]], np.uint8), np.ones((2, 2), np.uint8)),
    )
