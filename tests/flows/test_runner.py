"""`unet segment`'s runner without a Prefect server: the engine's jobs, no Prefect at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from testdata import write_checkpoint, write_image

RUN = """
import json, sys
from flows.runner import run_segment
from unet.config import SegmentParameters

parameters = SegmentParameters(model=sys.argv[3], tile_size=204, device="cpu")
reports = run_segment(sys.argv[1], sys.argv[2], parameters)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "prefect")
print(json.dumps({"prefect": loaded, "computed": [r.chunks_computed for r in reports]}))
"""


def test_a_run_without_a_server_imports_no_prefect_and_says_so_once(tmp_path):
    model = write_checkpoint(tmp_path / "m.safetensors")
    folder = tmp_path / "in"
    write_image(folder / "a.zarr", (64, 64), (32, 32))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48), np.uint8)).save(
        folder / "b.png"
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}  # no profile there
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILES_PATH", None)
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(folder), str(tmp_path / "masks"), model],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"prefect": [], "computed": [4, 1]}
    assert result.stderr.count("not tracked") == 1, result.stderr
    assert "prefect server start" in result.stderr
    assert (tmp_path / "masks" / "b.preview.png").is_file()
