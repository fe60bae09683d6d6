"""Where a chunk's host time goes inside a real run: the worker's stages, timed in the worker.

:class:`StageTimesPlugin` wraps the stages of a streamed chunk in every Dask worker process
(the functions :func:`unet.engine.stream.run_chunk_batch` and :func:`unet.engine.worker.run_chunk`
look up when they run) and sums, per stage, the wall seconds and the CPU seconds of the calling
thread. Zarr runs its reads and writes in its own event-loop thread and zarrs encodes in its own
Rust threads: their CPU counts in the worker process's total (see
:func:`unet.bench.measure.process_seconds`), not in a stage's thread CPU.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed import WorkerPlugin

#: (module, attribute, stage name) of what is timed; inner stages are part of outer ones.
STAGES = (
    ("unet.engine.stream", "prepare_chunk", "prepare: read, decode, mirror, no-data"),
    ("unet.engine.worker", "read_window", "  read window: cache, decode, assemble, mirror"),
    ("unet.engine.stream", "infer_chunk", "infer: tiles, device step, paste, crop"),
    ("unet.predict", "device_step", "  device step"),
    ("unet.engine.stream", "finish_chunk", "finish: write, then mark"),
    ("unet.engine.worker", "write_chunk_levels", "  write mask and pyramid levels"),
    ("unet.engine.worker", "mark_finished", "  ledger"),
)

PLUGIN_NAME = "unet-stage-times"


class StageTimes:
    """Seconds (wall and thread CPU) and calls per stage, summed over threads."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                with self._lock:
                    self.wall[name] = self.wall.get(name, 0.0) + wall
                    self.cpu[name] = self.cpu.get(name, 0.0) + cpu
                    self.calls[name] = self.calls.get(name, 0) + 1

        wrapper.unwrapped = function  # type: ignore[attr-defined]
        return wrapper

    def reset(self) -> None:
        with self._lock:
            self.wall.clear()
            self.cpu.clear()
            self.calls.clear()


class StageTimesPlugin(WorkerPlugin):
    """Wraps :data:`STAGES` in a worker's process with one :class:`StageTimes`; register it
    after :class:`unet.bench.simulate.SimulatedDevicePlugin` to time the stand-in."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        import importlib

        self.times = StageTimes()
        worker.unet_stage_times = self.times
        for module_name, attribute, stage in STAGES:
            module = importlib.import_module(module_name)
            setattr(module, attribute, self.times.timed(stage, getattr(module, attribute)))

    def teardown(self, worker: Any) -> None:
        import importlib

        for module_name, attribute, _ in STAGES:
            module = importlib.import_module(module_name)
            function = getattr(module, attribute)
            setattr(module, attribute, getattr(function, "unwrapped", function))


def _worker_times(dask_worker: Any) -> dict[str, Any]:
    times = dask_worker.unet_stage_times
    return {"wall": dict(times.wall), "cpu": dict(times.cpu), "calls": dict(times.calls)}


def _reset(dask_worker: Any) -> None:
    dask_worker.unet_stage_times.reset()


def reset_stage_times(client: Any) -> None:
    """Zero the stage times of every worker (e.g. after a warm-up)."""
    client.run(_reset)


def collect_stage_times(client: Any) -> dict[str, dict[str, float]]:
    """Per stage, summed over the workers: ``{"wall_ms": ..., "cpu_ms": ...}`` per chunk (per
    call of the stage, which each chunk makes once) and ``calls``."""
    summed: dict[str, dict[str, float]] = {}
    for times in client.run(_worker_times).values():
        for name, calls in times["calls"].items():
            entry = summed.setdefault(name, {"wall": 0.0, "cpu": 0.0, "calls": 0})
            entry["wall"] += times["wall"][name]
            entry["cpu"] += times["cpu"][name]
            entry["calls"] += calls
    return {
        name: {
            "wall_ms": round(1000 * entry["wall"] / entry["calls"], 3),
            "cpu_ms": round(1000 * entry["cpu"] / entry["calls"], 3),
            "calls": int(entry["calls"]),
        }
        for name, entry in sorted(summed.items(), key=lambda item: _order(item[0]))
    }


def _order(name: str) -> int:
    return [stage for _, _, stage in STAGES].index(name)
