"""unet.runs.run_jobs: several images in flight on one cluster, results in order, one failure
stops no other, the caller's context in every image's steps."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from unet.config import SegmentParameters
from unet.engine.report import SegmentReport
from unet.runs import IMAGES_IN_FLIGHT, ImageJob, Steps, run_jobs

CALLER = contextvars.ContextVar("caller", default=None)


def jobs_in(tmp_path, count: int) -> list[ImageJob]:
    """Jobs whose outputs do not exist (so none is skipped as finished) and need no ingest."""
    return [
        ImageJob(f"in/{i}.zarr", f"in/{i}.zarr", str(tmp_path / f"{i}.zarr"), needs_ingest=False)
        for i in range(count)
    ]


class Recorder:
    """Steps that take ``seconds`` per image and record how many images were in flight."""

    def __init__(self, seconds: float = 0.05, failing: tuple[str, ...] = ()):
        self.seconds, self.failing = seconds, failing
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.clients, self.callers, self.finished = set(), set(), []

    def segment(self, job, parameters, client, progress, plan) -> SegmentReport:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.clients.add(id(client))
            self.callers.add(CALLER.get())
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        if job.output.endswith(self.failing):
            raise ValueError(f"{job.output} is broken")
        progress(1, 1)
        return SegmentReport(job.zarr_input, job.output, (1, 8, 8), 1, 1)

    def steps(self) -> Steps:
        return Steps(
            ingest=lambda job: None,
            segment=self.segment,
            finish=lambda job, parameters: self.finished.append(job.output),
        )


def test_images_run_concurrently_and_come_back_in_order_with_failures_in_place(tmp_path):
    jobs = jobs_in(tmp_path, 10)
    recorder = Recorder(failing=("3.zarr",))
    seen = []
    CALLER.set("the caller")
    outcomes = run_jobs(
        jobs,
        SegmentParameters(),
        client=object(),
        steps=recorder.steps(),
        progress=lambda output, done, total: seen.append(output),
    )
    assert recorder.most == IMAGES_IN_FLIGHT
    assert [getattr(o, "output", None) for o in outcomes] == [
        None if i == 3 else job.output for i, job in enumerate(jobs)
    ]
    assert isinstance(outcomes[3], ValueError)
    assert (
        sorted(recorder.finished) == sorted(seen) == sorted(j.output for j in jobs[:3] + jobs[4:])
    )
    assert recorder.callers == {"the caller"}  # each image thread runs in the caller's context


def test_one_image_in_flight_runs_in_the_callers_thread(tmp_path):
    threads = set()
    recorder = Recorder(seconds=0)
    steps = Steps(
        ingest=lambda job: None,
        segment=lambda *args: threads.add(threading.get_ident()) or recorder.segment(*args),
        finish=lambda job, parameters: None,
    )
    run_jobs(jobs_in(tmp_path, 3), SegmentParameters(), client=1, steps=steps, images_in_flight=1)
    assert threads == {threading.get_ident()}


def test_the_cluster_starts_once_at_the_first_image_that_needs_it(tmp_path, monkeypatch):
    import contextlib

    import unet.engine.cluster

    started = []

    @contextlib.contextmanager
    def fake_client(plan, scheduler=None):
        started.append(plan)
        time.sleep(0.1)  # the other image threads ask for it meanwhile
        yield object()
        started.append("closed")

    monkeypatch.setattr(unet.engine.cluster, "dask_client", fake_client)
    recorder = Recorder()
    outcomes = run_jobs(
        jobs_in(tmp_path, 6), SegmentParameters(device="cpu"), steps=recorder.steps()
    )
    assert len(outcomes) == 6 and len(recorder.clients) == 1
    assert len(started) == 2 and started[-1] == "closed"


def test_a_failing_cluster_start_fails_each_image_not_the_run(tmp_path, monkeypatch):
    import unet.engine.cluster

    def no_cluster(plan, scheduler=None):
        raise OSError("no ports left")

    monkeypatch.setattr(unet.engine.cluster, "dask_client", no_cluster)
    outcomes = run_jobs(
        jobs_in(tmp_path, 3), SegmentParameters(device="cpu"), steps=Recorder().steps()
    )
    assert all(isinstance(o, OSError) for o in outcomes)


@pytest.mark.parametrize("count", [0, 1])
def test_no_or_one_image(tmp_path, count):
    outcomes = run_jobs(
        jobs_in(tmp_path, count), SegmentParameters(), client=1, steps=Recorder().steps()
    )
    assert len(outcomes) == count
