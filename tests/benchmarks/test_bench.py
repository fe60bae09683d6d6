"""Smoke test of the benchmark harness (``unet bench --quick``): the keys of the result and the
plot, never timings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(HARNESS))


def test_quick_bench_returns_results_and_writes_plot(tmp_path):
    from bench import run_bench

    has_monai = importlib.util.find_spec("monai") is not None
    results = run_bench(
        device="cpu",
        precision="bf16",
        quick=True,
        monai=has_monai,
        plot=tmp_path / "bench.png",
        json_path=tmp_path / "bench.json",
        workdir=tmp_path / "work",
        echo=None,
    )

    assert {
        "machine",
        "settings",
        "raw",
        "pipeline",
        "monai",
        "agreement",
        "ratios",
        "targets",
    } <= set(results)
    assert results["settings"]["device"] == "cpu"
    tile = results["settings"]["tile_size"]
    assert any(r["tile_size"] == tile for r in results["raw"])
    for entry in [*results["raw"], *results["pipeline"]]:
        assert entry["mpx_per_s"] > 0 and entry["peak_rss_mib"] > 0
    assert [p["side"] for p in results["pipeline"]] == results["settings"]["sides"]
    largest = results["pipeline"][-1]
    # Against the raw model's sustained speed just before and after, on the pipeline's worker, as
    # the pipeline's speed is taken.
    before, after = largest["raw_adjacent_sustained_mpx_per_s"]
    assert results["ratios"]["pipeline_over_raw"] == pytest.approx(
        largest["mpx_per_s"] / ((before + after) / 2), rel=1e-3
    )
    before, after = largest["raw_adjacent_mpx_per_s"]
    assert results["ratios"]["pipeline_over_raw_best_pass"] == pytest.approx(
        largest["mpx_per_s"] / ((before + after) / 2), rel=1e-3
    )
    before, after = largest["raw_separate_sustained_mpx_per_s"]  # in processes of their own
    assert results["ratios"]["pipeline_over_raw_separate"] == pytest.approx(
        largest["mpx_per_s"] / ((before + after) / 2), rel=1e-3
    )
    for raw in results["raw"]:
        assert 0 < raw["sustained_mpx_per_s"] <= raw["mpx_per_s"]
    # The worker runs in this process: the forward passes' share of the run's wall time is known.
    assert 0 < largest["forward_share"] < 1
    assert results["ratios"]["pipeline_forward_share"] == largest["forward_share"]
    if has_monai:
        monai = results["monai"]
        assert monai["mpx_per_s"] > 0
        # The pipeline ran again right after MONAI; the speed ratio takes the mean of both runs.
        runs = [largest["mpx_per_s"], monai["pipeline_after"]["mpx_per_s"]]
        assert results["ratios"]["pipeline_over_monai_mpx_per_s"] == pytest.approx(
            sum(runs) / 2 / monai["mpx_per_s"], rel=1e-2
        )
    assert 0.0 <= results["agreement"]["equal_fraction"] <= 1.0
    assert all(isinstance(t["met"], bool) for t in results["targets"].values())
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "bench.json").is_file()


def test_rounds_take_each_ratio_and_target_on_the_median(tmp_path):
    from bench import run_rounds

    summary = run_rounds(
        3,
        device="cpu",
        precision="fp32",
        quick=True,
        monai=False,
        json_path=tmp_path / "bench.json",
        workdir=tmp_path / "work",
        echo=None,
    )

    assert len(summary["rounds"]) == 3 and summary["settings"]["rounds"] == 3
    per_round = sorted(r["ratios"]["pipeline_over_raw"] for r in summary["rounds"])
    assert summary["ratios"]["pipeline_over_raw"] == per_round[1]
    assert summary["ratio_ranges"]["pipeline_over_raw"] == [per_round[0], per_round[2]]
    target = summary["targets"]["pipeline >= 0.9 x raw model"]
    assert target["value"] == pytest.approx(per_round[1], abs=1e-3)
    assert target["met"] == (target["value"] >= 0.9)
    assert target["rounds_met"] == sum(v >= 0.9 for v in per_round)
    assert (tmp_path / "bench.json").is_file()


def test_a_measurement_in_its_own_process_reports_its_high_water_mark(tmp_path):
    """What the real benchmark runs: a fresh interpreter, its peak RSS from the kernel's VmHWM."""
    from bench import measure_in_subprocess

    from unet.bench.inputs import bench_checkpoint

    checkpoint = bench_checkpoint(tmp_path, quick=True)
    spec = {
        "kind": "raw",
        "device": "cpu",
        "precision": "fp32",
        "batch_size": 1,
        "checkpoint": checkpoint,
        "channels_last": True,
        "tile_size": 92,
        "repeats": 2,
    }
    result = measure_in_subprocess(spec)

    assert "high_water_mib" not in result and "worker_high_water_mib" not in result
    assert 50 < result["peak_rss_mib"] < 4096  # torch alone takes more than 50 MiB
    assert 0 < result["sustained_mpx_per_s"] <= result["mpx_per_s"]


def test_unet_bench_runs_the_harness_with_its_options():
    """``unet bench`` is the harness's command line: one set of options, one help."""
    unet = Path(sys.executable).with_name("unet")
    shown = subprocess.run([str(unet), "bench", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "--rounds" in shown.stdout and "--tile-sweep" in shown.stdout
    wrong = subprocess.run([str(unet), "bench", "--sides", "a,b"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "comma-separated list of integers" in wrong.stderr
