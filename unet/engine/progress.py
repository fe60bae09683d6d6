"""A run's progress as lines a person can follow: its settings when it starts, how far it got
while it runs, its result at the end.

The engine calls a run's progress callback with ``(chunks done, chunks total)`` as chunks
finish, and, where the callback has a ``started`` method, with the run's resolved
:class:`RunSettings` once it knows what it will compute (:func:`announce`). A
:class:`ProgressLog` turns these calls into lines for a logger or a terminal:

- at the start, the settings: device, precision, tile, batch, workers, chunks to compute,
  skipped and resumed;
- while it runs, a line each time another :data:`STEP` of the chunks is done, and at least every
  :data:`INTERVAL` seconds: chunks done of the total, Mpx/s, and the time left;
- with ``--instances``, the same for the instance pass's two rounds of chunks
  (:meth:`ProgressLog.instances`: labelling, then writing the instance image);
- at the end, the result (:meth:`ProgressLog.finished`, :func:`result_line`).

Pure Python; the lines go wherever ``say`` sends them (a Prefect run logger, stderr).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.sizes import size_label

if TYPE_CHECKING:
    from unet.engine.cluster import ClusterPlan
    from unet.engine.plan import RunPlan
    from unet.engine.report import SegmentReport

#: A progress line each time this share of the chunks more is done.
STEP = 0.1
#: ... and at least this often, in seconds, while the run goes on.
INTERVAL = 60.0
#: The instance pass's rounds of chunks, as its progress lines name them.
INSTANCE_ROUNDS = ("round 1 of 2 (labelling)", "round 2 of 2 (writing)")
#: A round of the instance pass says its tenths only once it has lasted this many seconds: a
#: pass of a second or two gets its one start line, not twenty.
INSTANCE_QUIET = 10.0


@dataclass(frozen=True)
class RunSettings:
    """What a run resolved before its chunks start: ``auto`` values made concrete, and the work.

    ``device``, ``workers``: as said to a person (``cpu``, ``cuda, 2 GPUs``; ``1 worker in this
    process, 2 torch threads``); ``megapixels``: the pixels of the chunks to compute.
    """

    width: int
    height: int
    device: str
    precision: str
    tile_size: int
    batch_size: int
    workers: str
    chunks_total: int
    chunks_to_compute: int
    chunks_skipped: int
    chunks_resumed: int
    megapixels: float

    def line(self) -> str:
        """``8192 × 8192 px (width × height); device cpu, precision bf16, tile 1116, batch 4,
        1 worker in this process (2 torch threads); 64 chunks: 60 to compute, 4 skipped
        (background), 0 resumed``."""
        return (
            f"{size_label(self.width, self.height)}; device {self.device}, "
            f"precision {self.precision}, tile {self.tile_size}, batch {self.batch_size}, "
            f"{self.workers}; {_count(self.chunks_total, 'chunk')}: {self.chunks_to_compute} to compute, "
            f"{self.chunks_skipped} skipped (background), {self.chunks_resumed} resumed"
        )


def run_settings(
    plan: RunPlan,
    cluster: ClusterPlan,
    pending: Sequence[tuple[int, int]] | np.ndarray,
    report: SegmentReport,
    found: Sequence[Any] | None = None,
) -> RunSettings:
    """The :class:`RunSettings` of ``plan`` run on ``cluster``; ``pending``: its chunks to
    compute, as chunk indices ``(i, j)`` or a bool grid of the chunk grid's shape; ``report``:
    its counts so far (skipped, resumed); ``found``: the workers as they described themselves
    (:class:`unet.engine.dispatch.WorkerInfo`), when the run asked them."""
    parameters = plan.parameters
    todo = np.zeros(plan.grid.counts, dtype=bool)
    if isinstance(pending, np.ndarray) and pending.dtype == bool:
        todo |= pending
    elif len(pending):
        todo[tuple(np.asarray(pending).T)] = True
    # Chunk (i, j) has rows[i] x cols[j] pixels (the last row and column are cut short).
    (height_px, width_px), (chunk_rows, chunk_cols) = plan.grid.shape, plan.grid.chunks
    rows = np.minimum(chunk_rows, height_px - chunk_rows * np.arange(todo.shape[0]))
    cols = np.minimum(chunk_cols, width_px - chunk_cols * np.arange(todo.shape[1]))
    pixels = int((np.outer(rows, cols) * todo).sum())
    _, height, width = plan.source.shape
    return RunSettings(
        width=width,
        height=height,
        device=describe_device(parameters.device, cluster, parameters.scheduler, found),
        precision=parameters.precision,
        tile_size=plan.tile_size,
        batch_size=parameters.batch_size,
        workers=describe_workers(cluster, parameters.scheduler, found),
        chunks_total=plan.grid.total,
        chunks_to_compute=int(todo.sum()),
        chunks_skipped=report.chunks_skipped,
        chunks_resumed=report.chunks_resumed,
        megapixels=pixels / 1e6,
    )


def announce(progress: Any, settings: Callable[[], RunSettings]) -> None:
    """Give ``progress`` the run's settings when it takes them (has a ``started`` method);
    ``settings`` is called only then."""
    started = getattr(progress, "started", None)
    if started is not None:
        started(settings())


def describe_device(
    device: str, cluster: ClusterPlan, scheduler: str | None, found: Sequence[Any] | None = None
) -> str:
    """The device the chunks run on: ``cpu``, ``cuda, 2 GPUs``; on a scheduler's workers what
    they resolved ``device`` to (``cuda, cpu`` on a mixed cluster), or the device asked for."""
    if found:
        return ", ".join(sorted({worker.device.split(":")[0] for worker in found}))
    if scheduler is not None:
        return f"auto (each worker of {scheduler} resolves it)" if device == "auto" else device
    if cluster.gpus and device != "cpu":
        return f"{device if device.startswith('cuda') else 'cuda'}, {_count(cluster.gpus, 'GPU')}"
    return "cpu"


def describe_workers(
    cluster: ClusterPlan, scheduler: str | None, found: Sequence[Any] | None = None
) -> str:
    """The workers computing the chunks, as a person would say it."""
    if found and scheduler is not None:
        streaming = sum(1 for worker in found if worker.streams)
        where = f"of {scheduler}"
        if streaming == len(found):
            return f"{_count(len(found), 'worker')} {where}, streaming to their devices"
        if not streaming:
            return f"{_count(len(found), 'worker')} {where}, on their CPUs"
        return (
            f"{_count(len(found), 'worker')} {where}: {streaming} streaming to a device, "
            f"{len(found) - streaming} on CPUs"
        )
    if scheduler is not None:
        return f"the workers of {scheduler}"
    threads = f"{_count(cluster.torch_threads, 'torch thread')}" if cluster.torch_threads else ""
    if not cluster.processes:
        return f"1 worker in this process ({threads})" if threads else "1 worker in this process"
    workers = _count(cluster.workers, "worker process", "worker processes")
    if cluster.streams:
        return f"{workers}, {cluster.threads_per_worker} streams each"
    return f"{workers} ({threads} each)" if threads else workers


def result_line(report: SegmentReport, name: str) -> str:
    """The one-line result of a run of image ``name``: ``a: done in 12.3 s, 60 chunks computed,
    4 skipped, 0 resumed of 64, 4.10 Mpx/s``."""
    return (
        f"{name}: done in {report.seconds:.1f} s, "
        f"{_count(report.chunks_computed, 'chunk')} computed, {report.chunks_skipped} skipped, "
        f"{report.chunks_resumed} resumed of {report.chunks_total}, "
        f"{report.megapixels_per_second:.3g} Mpx/s"
    )


class Callbacks:
    """Several progress callbacks as one: each call, :meth:`started`, :meth:`finished` and
    :meth:`close` goes to every one that has it."""

    def __init__(self, *callbacks: Any) -> None:
        self.callbacks = [callback for callback in callbacks if callback is not None]

    def __call__(self, done: int, total: int) -> None:
        for callback in self.callbacks:
            callback(done, total)

    def started(self, settings: RunSettings) -> None:
        self._each("started", settings)

    def instances(self, round: int, done: int, total: int) -> None:
        self._each("instances", round, done, total)

    def finished(self, report: SegmentReport) -> None:
        self._each("finished", report)

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args: Any) -> None:
        for callback in self.callbacks:
            function = getattr(callback, method, None)
            if function is not None:
                function(*args)


def combine(*callbacks: Any) -> Callbacks:
    """One callback calling every one of ``callbacks`` that is not None."""
    return Callbacks(*callbacks)


class ProgressLog:
    """Says a run's settings, its progress and its result in lines, through ``say``.

    Call it with ``(chunks done, chunks total)`` as the engine does; :meth:`started` with the
    run's settings (the engine calls it through :func:`announce`); :meth:`finished` with the
    report; :meth:`close` when the run ends, whatever its end. A progress line is said when
    another ``step`` of the chunks is done, and at least every ``interval`` seconds (from a
    thread of its own, so that a run whose chunks take long still says where it is).
    Mpx/s and the time left count only the chunks computed since the start (resumed and
    skipped chunks cost nothing).
    """

    def __init__(
        self,
        name: str,
        say: Callable[[str], Any],
        *,
        step: float = STEP,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
    ) -> None:
        self.name, self.say, self.step, self.interval, self.clock = name, say, step, interval, clock
        self.settings: RunSettings | None = None
        self._lock = threading.Lock()
        self._start: tuple[float, int] | None = None  # (time, chunks done) at the first call
        self._latest: tuple[int, int] | None = None
        self._said_at = 0.0
        self._said_steps = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = heartbeat
        self._round: int | None = None  # of the instance pass, once it began

    def started(self, settings: RunSettings) -> None:
        """Say the run's settings; from now on progress lines are due."""
        self.settings = settings
        self.say(f"{self.name}: {settings.line()}")
        with self._lock:
            self._said_at = self.clock()
        if self._heartbeat and self._thread is None:
            import contextvars

            # In this context: a Prefect run logger finds its run there.
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._beat,), name="unet-progress-log", daemon=True
            )
            self._thread.start()

    def __call__(self, done: int, total: int) -> None:
        self._progress(done, total)

    def instances(self, round: int, done: int, total: int) -> None:
        """``done`` of ``total`` chunks of the instance pass's ``round`` (1: labelling, 2:
        writing) are done: lines as for the run's chunks, each round timed on its own."""
        with self._lock:
            begins = self._round is None
            if self._round != round:
                self._round, self._start = round, None
        if begins:
            self.say(
                f"{self.name}: instances: 2 rounds of {total} chunks (labelling the objects, then "
                "writing the instance image and the object table)"
            )
        self._progress(done, total)

    def _progress(self, done: int, total: int) -> None:
        now = self.clock()
        with self._lock:
            if self._start is None:
                self._start = (now, done)
                self._said_steps = self._steps(done, total)
            self._latest = (done, total)
            steps = self._steps(done, total)
            due = steps > self._said_steps or now - self._said_at >= self.interval
            quiet = self._round is not None and now - self._start[0] < INSTANCE_QUIET
            if not due or done == self._start[1] or quiet:
                return
            self._said_steps, self._said_at = steps, now
            line = self.line(done, total, now)
        self.say(line)

    def tick(self) -> None:
        """Say the latest progress when no line was said for ``interval`` seconds."""
        now = self.clock()
        with self._lock:
            if self._latest is None or now - self._said_at < self.interval:
                return
            self._said_at = now
            line = self.line(*self._latest, now)
        self.say(line)

    def finished(self, report: SegmentReport) -> None:
        """Say the run's result."""
        self.close()
        self.say(result_line(report, self.name))

    def close(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def line(self, done: int, total: int, now: float) -> str:
        """``a: 410 of 4096 chunks (10%), 4.1 Mpx/s, about 5 min 20 s left``; in the instance
        pass ``a: instances, round 1 of 2 (labelling): 410 of 4096 chunks (10%), about 1 min
        left``."""
        share = done / total if total else 1.0
        what = "" if self._round is None else f"instances, {INSTANCE_ROUNDS[self._round - 1]}: "
        text = f"{self.name}: {what}{done} of {total} chunks ({math.floor(100 * share)}%)"
        if self._start is None:
            return text
        started, first = self._start
        seconds, computed = now - started, done - first
        if computed <= 0 or seconds <= 0:
            return f"{text}, waiting for the first chunks"
        left = (total - done) * seconds / computed
        if self._round is not None:
            return f"{text}, about {duration(left)} left"
        rate = computed * self._megapixels_per_chunk(total) / seconds
        return f"{text}, {rate:.3g} Mpx/s, about {duration(left)} left"

    def _megapixels_per_chunk(self, total: int) -> float:
        settings = self.settings
        if settings is not None and settings.chunks_to_compute:
            return settings.megapixels / settings.chunks_to_compute
        if settings is not None and total:
            return settings.width * settings.height / 1e6 / total
        return 0.0

    def _steps(self, done: int, total: int) -> int:
        return math.floor((done / total if total else 1.0) / self.step + 1e-9)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            self.tick()


def duration(seconds: float) -> str:
    """``42 s``, ``5 min 20 s``, ``15 min``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "")
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number} {one if number == 1 else (many or one + 's')}"
