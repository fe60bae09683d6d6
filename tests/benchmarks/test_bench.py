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


@pytest.mark.slow  # about 19 s: the raw model, the pipeline and MONAI, each in a process
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


def test_simulated_targets_take_the_one_device_run_of_the_largest_side():
    from bench_simulated import simulated_targets

    def entry(devices, side, pipeline, device=100.0):
        efficiency = None if device is None else pipeline / (device * devices)
        return {
            "simulated_devices": devices,
            "side": side,
            "pipeline_mpx_per_s": pipeline,
            "feeder_efficiency": efficiency,
        }

    entries = [entry(1, 512, 50.0), entry(1, 1024, 95.0), entry(2, 1024, 180.0)]
    ratios, targets = simulated_targets(entries, 100.0)
    assert ratios["feeder_efficiency"] == 0.95 and ratios["two_devices_over_one"] == 1.8947
    assert targets["feeder efficiency >= 0.9 at 100 Mpx/s"]["met"]
    assert targets["2 simulated devices >= 1.8 x 1"]["met"]
    ceiling = [entry(1, 1024, 240.0, device=None)]
    ratios, targets = simulated_targets(ceiling, float("inf"))
    assert "feeder_efficiency" not in ratios
    assert targets["data path ceiling >= 250 Mpx/s"] == {
        "value": 240.0,
        "target": 250.0,
        "higher": True,
        "met": False,
        "side": 1024,
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_simulated_device_runs_the_pipeline_with_the_gpu_plan(tmp_path):
    """``unet bench --simulate-device``: the real pipeline in a fresh process with a worker
    process per simulated device; only the device step is simulated."""
    from bench import run_rounds

    summary = run_rounds(
        1,
        device="cpu",
        quick=True,
        simulate_device=400.0,
        simulated_devices=(1, 2),
        sides=(512,),
        json_path=tmp_path / "bench.json",
        workdir=tmp_path / "work",
        echo=None,
    )
    one, two = summary["simulated"]
    assert (one["simulated_devices"], two["simulated_devices"]) == (1, 2)
    assert summary["device_mpx_per_s"] == 400.0 and two["device_mpx_per_s"] == 800.0
    assert summary["feeder_efficiency"] == pytest.approx(  # rounded to 4 decimals
        summary["pipeline_mpx_per_s"] / 400.0, rel=1e-3, abs=1e-4
    )
    assert 0 < summary["feeder_efficiency"] <= 1.0
    stages = one["stage_cpu_ms_per_chunk"]
    assert stages["  device step"]["calls"] == 4  # 512^2 in 256-pixel chunks, one tile each
    assert set(one["cpu_ms_per_chunk"]) == {"driver", "workers"}
    assert "2 simulated devices >= 1.8 x 1" in summary["targets"]
    assert (tmp_path / "bench.json").is_file()
