"""A run's progress as lines: its resolved settings at the start, a line per tenth of the chunks
and at least one a minute with Mpx/s and the time left, its result at the end."""

from __future__ import annotations

import time

import numpy as np

from unet.config import SegmentParameters
from unet.engine.cluster import ClusterPlan
from unet.engine.progress import (
    ProgressLog,
    RunSettings,
    combine,
    describe_device,
    describe_workers,
    duration,
    result_line,
)
from unet.engine.report import SegmentReport


def settings(**changes) -> RunSettings:
    values = dict(
        width=2048,
        height=1024,
        device="cpu",
        precision="bf16",
        tile_size=1116,
        batch_size=4,
        workers="1 worker in this process (2 torch threads)",
        chunks_total=20,
        chunks_to_compute=16,
        chunks_skipped=2,
        chunks_resumed=2,
        megapixels=16.0,
    )
    return RunSettings(**{**values, **changes})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_start_line_names_every_resolved_setting_and_the_counts():
    lines: list[str] = []
    log = ProgressLog("slide", lines.append, heartbeat=False)
    log.started(settings())
    assert lines == [
        "slide: 2048 × 1024 px (width × height); device cpu, precision bf16, tile 1116, batch 4, "
        "1 worker in this process (2 torch threads); 20 chunks: 16 to compute, 2 skipped "
        "(background), 2 resumed"
    ]


def test_a_line_each_tenth_of_the_chunks_with_speed_and_time_left():
    clock, lines = Clock(), []
    log = ProgressLog("slide", lines.append, clock=clock, heartbeat=False)
    log.started(settings())
    log(4, 20)  # the first call: resumed and skipped, before any chunk is computed
    for done in range(5, 21):
        clock.now += 2.0  # a 1 Mpx chunk every 2 s
        log(done, 20)
    progress = lines[1:]
    # 4 of 20 is 20 %: a line at 30 % (6), 40 % (8), ... 100 % (20), none in between.
    assert [line.split(" chunks")[0] for line in progress] == [
        f"slide: {done} of 20" for done in range(6, 21, 2)
    ]
    assert progress[0] == "slide: 6 of 20 chunks (30%), 0.5 Mpx/s, about 28 s left"
    assert progress[-1] == "slide: 20 of 20 chunks (100%), 0.5 Mpx/s, about 0 s left"


def test_at_least_a_line_a_minute_while_chunks_take_long():
    clock, lines = Clock(), []
    log = ProgressLog("slide", lines.append, clock=clock, heartbeat=False)
    log.started(settings(chunks_total=1000, chunks_to_compute=1000, megapixels=1000.0))
    log(0, 1000)
    clock.now += 59.0
    log.tick()
    assert len(lines) == 1  # no line within the minute
    clock.now += 1.0
    log.tick()
    assert lines[-1] == "slide: 0 of 1000 chunks (0%), waiting for the first chunks"
    clock.now += 30.0
    log(1, 1000)  # not another tenth, not a minute since the last line
    assert len(lines) == 2
    clock.now += 30.0
    log(2, 1000)  # a minute since the last line
    assert lines[-1] == "slide: 2 of 1000 chunks (0%), 0.0167 Mpx/s, about 16 h 38 min left"


def test_the_instance_pass_says_each_round_as_the_chunks_were_said():
    """With --instances the run goes on after its last chunk: the pass says what it does, and
    each of its two rounds, once it has lasted INSTANCE_QUIET, says its tenths timed from its own
    start; the heartbeat repeats the round's latest."""
    clock, lines = Clock(), []
    log = ProgressLog("slide", lines.append, clock=clock, heartbeat=False)
    log.started(settings(chunks_resumed=0, chunks_skipped=0))
    log(0, 20)
    clock.now += 40.0
    log(20, 20)
    calls = combine(log)  # as the engine finds it: through the run's callbacks
    for round, seconds in ((1, 1.0), (2, 6.0)):  # round 1: 20 s in all; round 2: 120 s
        for done in range(1, 21):
            clock.now += seconds
            calls.instances(round, done, 20)
    assert lines[2] == (
        "slide: instances: 2 rounds of 20 chunks (labelling the objects, then writing the "
        "instance image and the object table)"
    )
    first, second = (
        "slide: instances, round 1 of 2 (labelling): ",
        "slide: instances, round 2 of 2 (writing): ",
    )
    # Each round is quiet for its first 10 s (from its first chunk), then says its tenths.
    assert lines[3:9] == [
        first + f"{done} of 20 chunks ({5 * done}%), about {20 - done} s left"
        for done in (11, 12, 14, 16, 18, 20)
    ]
    assert lines[9] == second + "3 of 20 chunks (15%), about 1 min 42 s left"
    assert lines[10] == second + "4 of 20 chunks (20%), about 1 min 36 s left"
    assert len(lines) == 19 and lines[-1] == second + "20 of 20 chunks (100%), about 0 s left"
    clock.now += 60.0
    log.tick()
    assert lines[-1].startswith(second + "20 of 20 chunks (100%)")


def test_the_heartbeat_thread_says_the_progress_of_a_run_that_is_stuck():
    lines: list[str] = []
    log = ProgressLog("slide", lines.append, interval=0.05)
    try:
        log.started(settings())
        log(4, 20)
        deadline = time.monotonic() + 5
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        log.close()
    assert lines[1].startswith("slide: 4 of 20 chunks (20%), waiting for the first chunks")


def test_the_result_line_and_callbacks_that_pass_everything_on():
    report = SegmentReport(
        input="in.zarr",
        output="out.zarr",
        shape=(1, 1024, 2048),
        chunks_total=20,
        chunks_computed=16,
        chunks_skipped=2,
        chunks_resumed=2,
        seconds=4.0,
    )
    assert result_line(report, "slide") == (
        "slide: done in 4.0 s, 16 chunks computed, 2 skipped, 2 resumed of 20, 0.524 Mpx/s"
    )
    seen: list = []
    log = ProgressLog("slide", seen.append, heartbeat=False)
    calls = combine(None, lambda done, total: seen.append((done, total)), log)
    calls.started(settings())
    calls(20, 20)
    calls.finished(report)
    calls.close()
    assert seen[1] == (20, 20) and seen[-1] == result_line(report, "slide")
    assert duration(42.4) == "42 s" and duration(320) == "5 min 20 s"
    assert duration(900) == "15 min" and duration(7500) == "2 h 05 min"


def test_devices_and_workers_as_a_person_says_them():
    cpu = ClusterPlan(workers=1, torch_threads=2, gpus=0, processes=False)
    assert describe_device("auto", cpu, None) == "cpu"
    assert describe_workers(cpu, None) == "1 worker in this process (2 torch threads)"
    processes = ClusterPlan(workers=2, torch_threads=1, gpus=0)
    assert describe_workers(processes, None) == "2 worker processes (1 torch thread each)"
    gpus = ClusterPlan(workers=2, torch_threads=1, gpus=2, threads_per_worker=4, streams=True)
    assert describe_device("auto", gpus, None) == "cuda, 2 GPUs"
    assert describe_workers(gpus, None) == "2 worker processes, 4 streams each"
    remote = ClusterPlan(workers=0, torch_threads=None, gpus=0)
    assert describe_device("auto", remote, "tcp://h:8786") == (
        "auto (each worker of tcp://h:8786 resolves it)"
    )
    assert describe_device("cuda", remote, "tcp://h:8786") == "cuda"
    assert describe_workers(remote, "tcp://h:8786") == "the workers of tcp://h:8786"


def test_the_settings_count_the_pixels_of_the_chunks_to_compute_given_either_way():
    """Chunks as indices (the driver's list) or as a bool grid (its numpy grid), the last row
    and column cut short."""
    from types import SimpleNamespace

    from unet.engine.progress import run_settings
    from unet.tiling import ChunkGrid

    plan = SimpleNamespace(
        parameters=SegmentParameters(precision="bf16", batch_size=2),
        grid=ChunkGrid((250, 300), (100, 100)),  # 3 x 3 chunks, the last ones 50 high
        source=SimpleNamespace(shape=(1, 250, 300)),
        tile_size=204,
    )
    cluster = ClusterPlan(workers=1, torch_threads=2, gpus=0, processes=False)
    report = SegmentReport(input="i", output="o", shape=(1, 250, 300), chunks_total=9)
    report.chunks_resumed = 1
    listed = run_settings(plan, cluster, [(0, 0), (2, 2)], report)
    grid = np.zeros((3, 3), bool)
    grid[0, 0] = grid[2, 2] = True
    assert run_settings(plan, cluster, grid, report) == listed
    assert listed.megapixels == (100 * 100 + 50 * 100) / 1e6
    assert (listed.chunks_to_compute, listed.chunks_resumed, listed.chunks_total) == (2, 1, 9)
    assert (listed.width, listed.height, listed.tile_size, listed.batch_size) == (300, 250, 204, 2)
