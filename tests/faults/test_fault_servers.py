"""Servers that do not answer or go away: a Dask scheduler, the Prefect server.

A missing server is one line and exit status 2 within seconds; a Prefect server lost during a
run costs the run nothing but its record on the server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testdata import write_checkpoint, write_image

UNET = str(Path(sys.executable).with_name("unet"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scheduler_where_nothing_listens_is_one_line_exit_2_within_seconds(tmp_path):
    write_image(tmp_path / "in.zarr", (8, 8), (8, 8))
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    scheduler = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [UNET, "segment", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]
        + ["--model", model, "--scheduler", scheduler],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the Dask scheduler at " + scheduler)
    assert seconds < 20, f"{seconds:.0f} s to say the scheduler does not answer"
    assert not (tmp_path / "out.zarr").exists()


def test_dask_client_of_a_silent_scheduler_raises_server_unreachable():
    from unet.engine.cluster import ClusterPlan, dask_client
    from unet.errors import ServerUnreachable

    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="does not answer") as caught:
        with dask_client(ClusterPlan(0, None, 0), f"tcp://127.0.0.1:{free_port()}"):
            pass
    assert time.monotonic() - started < 5 and "\n" not in str(caught.value)
