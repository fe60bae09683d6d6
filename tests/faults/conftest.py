"""The fault tests' fixtures: a depth-2 checkpoint and a Dask cluster inside the test process
(the CPU default of ``unet segment``), one of each per module."""

from __future__ import annotations

import pytest
from testdata import write_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A small random depth-2 checkpoint (``.safetensors``), its path."""
    return write_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", depth=2)


@pytest.fixture(scope="module")
def client():
    """A Dask client of one worker in this process (threads), as ``unet segment`` starts on a
    CPU; a module that needs worker processes defines its own."""
    from unet.engine.cluster import ClusterPlan, dask_client

    with dask_client(ClusterPlan(workers=1, torch_threads=1, gpus=0, processes=False)) as dask:
        yield dask
