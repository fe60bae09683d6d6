"""Chunks to Dask tasks: which workers have a device, how many chunks a task carries, which
worker gets which chunks.

A Dask task costs the driver, the scheduler and the worker a few milliseconds of CPU each (on
the driver about 3 ms: the submission and the client's event loop; benchmarks/README.md), as
much as a chunk's whole host side when a GPU computes it. So a task carries as many chunks as
make it last :data:`TARGET_TASK_SECONDS` on its worker: the driver measures each worker's
seconds per chunk from the tasks it ran (:class:`TaskSizer`) and sizes its next task by them.
The first tasks are small (:func:`first_task_size`), and tasks shrink again towards the end of a
run, so that no worker is left with a backlog while another idles.

Each worker streams its own stretch of the pending chunks (:class:`ChunkQueue`), in
:func:`unet.tiling.strip_order`, so consecutive chunks share the input chunks it keeps decoded;
a worker whose stretch is done takes from the end of the longest one left. Whether a worker
runs its chunks as a stream (a device computes while its threads read and write) or one after
the other (a CPU computes with every core) is the worker's own decision
(:func:`unet.engine.task.streams_here`); the driver asks every worker once
(:func:`describe_workers`), to size the first tasks and to say what it runs on.

The driver holds coordinates and counts only: the pending chunks are one ``int32 (n, 2)`` array
and each task's chunks a slice of it, so its memory stays flat whatever the chunk count.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from unet.errors import InputReadError

#: How long a task should last on its worker: Dask's few milliseconds of CPU per task then
#: cost well under 1 % of it.
TARGET_TASK_SECONDS = 1.0
#: The most chunks a task carries (a task's chunks are recomputed whole if its worker dies).
MAX_CHUNKS_PER_TASK = 256
#: Chunks of a worker's first tasks, before its speed is measured: a CPU computes a chunk in
#: about a quarter of a second; a device's stream needs a few chunks to overlap anything.
FIRST_CPU_TASK = 1
FIRST_STREAM_TASK = 8
#: Tasks queued on a worker beyond those it runs, so that it never waits for the driver.
QUEUED_PER_WORKER = 1
#: A chunk task that fails (a worker died, a read timed out) is retried this many times.
TASK_RETRIES = 3
#: After a failure, seconds to wait at most for the tasks in flight to end.
DRAIN_SECONDS = 300
#: Items of the first tasks of :func:`run_items`, before their cost is measured.
FIRST_ITEM_TASK = 4


@dataclass(frozen=True)
class WorkerInfo:
    """A Dask worker as the driver sees it: its address, the tasks it runs at once, and whether
    it streams chunks to a device (a GPU, or a stand-in for one)."""

    address: str
    threads: int
    streams: bool
    device: str


def cluster_workers(client: Any) -> dict[str, dict[str, Any]]:
    """The scheduler's workers now: ``{address: info}`` (``info["nthreads"]`` and more).

    Asked of the scheduler directly: ``client.scheduler_info(n_workers=-1)`` returns the
    client's cached answer, which its own periodic refresh (every 2 s, without workers) can
    replace between the fetch and the return, so a cluster with workers then seems to have none.
    """
    return dict(client.sync(client.scheduler.identity, n_workers=-1).get("workers", {}))


def describe_workers(client: Any, device: str, stream: bool | None = None) -> list[WorkerInfo]:
    """Ask every worker of ``client`` what it runs a run's chunks on (``device`` as given to
    ``unet segment``, resolved by each worker for itself); ``stream`` overrides its answer.

    Workers of a cluster may differ: GPU machines beside CPU ones.
    """
    from unet.engine.task import worker_device

    workers = cluster_workers(client)
    answers = client.run(worker_device, device) if workers else {}
    described = []
    for address, info in workers.items():
        resolved, streams = answers.get(address, ("cpu", False))
        described.append(
            WorkerInfo(
                address=address,
                threads=int(info.get("nthreads", 1)),
                streams=streams if stream is None else stream,
                device=resolved,
            )
        )
    return described


def first_task_size(worker: WorkerInfo) -> int:
    """Chunks of a worker's first tasks, before any is measured."""
    return FIRST_STREAM_TASK if worker.streams else FIRST_CPU_TASK


class ChunkQueue:
    """The pending chunks, ``int32 (n, 2)`` in strip order, cut into one stretch per worker.

    :meth:`take` hands a worker the next chunks of its own stretch; a worker whose stretch is
    done takes from the end of the longest stretch left, which its owner reaches last. A worker
    that joins later has no stretch and so only takes from others.
    """

    def __init__(self, order: np.ndarray, workers: list[str]) -> None:
        self.order = order
        count = max(1, len(workers))
        keys: list[str | None] = list(workers) or [None]
        total = len(order)
        self.stretches: dict[str | None, list[int]] = {
            key: [k * total // count, (k + 1) * total // count] for k, key in enumerate(keys)
        }

    @property
    def left(self) -> int:
        """Chunks not handed out yet."""
        return sum(stop - start for start, stop in self.stretches.values())

    def take(self, worker: str | None, size: int) -> np.ndarray | None:
        """Up to ``size`` chunks for ``worker``, ``int32 (m, 2)``; None when none is left."""
        own = self.stretches.get(worker)
        if own is not None and own[1] > own[0]:
            start = own[0]
            own[0] = min(own[1], start + size)
            return self.order[start : own[0]]
        longest = max(self.stretches.values(), key=lambda span: span[1] - span[0])
        if longest[1] <= longest[0]:
            return None
        stop = longest[1]
        longest[1] = max(longest[0], stop - size)
        return self.order[longest[1] : stop]


class TaskSizer:
    """Chunks per task, from each worker's measured seconds per chunk.

    A task lasts about :data:`TARGET_TASK_SECONDS` on its worker, within 1 and
    :data:`MAX_CHUNKS_PER_TASK` chunks; towards the end of a run a task takes at most a share
    of what is left per task in flight (``left / (2 * slots)``).
    """

    def __init__(self, first: dict[str, int], slots: int) -> None:
        self.first = first
        self.slots = max(1, slots)
        self.seconds_per_chunk: dict[str, float] = {}

    def observe(self, worker: str, chunks: int, seconds: float) -> None:
        """A task of ``chunks`` chunks took ``seconds`` on ``worker``."""
        if chunks < 1 or seconds <= 0:
            return
        measured = seconds / chunks
        known = self.seconds_per_chunk.get(worker)
        self.seconds_per_chunk[worker] = measured if known is None else (known + measured) / 2

    def size(self, worker: str | None, left: int) -> int:
        """Chunks of ``worker``'s next task, with ``left`` chunks not handed out yet."""
        measured = self.seconds_per_chunk.get(worker) if worker is not None else None
        if measured is None:
            size = self.first.get(worker, FIRST_CPU_TASK) if worker is not None else 1
        else:
            size = math.ceil(TARGET_TASK_SECONDS / max(measured, 1e-6))
        size = min(size, MAX_CHUNKS_PER_TASK, -(-left // (2 * self.slots)))
        return max(1, size)


def run_chunk_tasks(
    client: Any,
    job: Any,
    order: np.ndarray,
    workers: list[WorkerInfo],
) -> Iterator[Any]:
    """:class:`~unet.engine.task.TaskResult` of every task, as they complete, for the chunks
    ``order`` (``int32 (n, 2)``, in strip order) of ``job``.

    A chunk whose input cannot be read is run again alone, with a task's retries, and then
    comes back as a :class:`~unet.engine.report.ChunkFailure` in its result; the others go on.
    Any other failure (the output cannot be written, the device fails) ends the run, once the
    tasks in flight have ended: a task still running after the run released the output's lock
    could write into the output of the next run.
    """
    from distributed import as_completed

    from unet.engine.task import TaskResult, run_chunk_task

    if len(order) == 0:
        return
    if not workers:
        from unet.errors import ServerUnreachable

        raise ServerUnreachable(
            "the Dask cluster has no workers: start some (dask worker SCHEDULER_ADDRESS) and "
            "rerun the same command"
        )
    # A key of its own (hash=False): a job equal to an earlier one (a rerun on the same client)
    # would share that one's content-hashed key, and the earlier future's release could then
    # drop the data from under this run's tasks.
    job_future = client.scatter(job, broadcast=True, hash=False)
    addresses = [worker.address for worker in workers]
    queue = ChunkQueue(order, addresses)
    slots = {worker.address: worker.threads + QUEUED_PER_WORKER for worker in workers}
    sizer = TaskSizer({w.address: first_task_size(w) for w in workers}, sum(slots.values()))
    in_flight: dict[str, tuple[Any, np.ndarray, str | None]] = {}

    def submit(worker: str | None, chunks: np.ndarray | None = None) -> Any:
        if chunks is None:
            chunks = queue.take(worker, sizer.size(worker, queue.left))
            if chunks is None:
                return None
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        future = client.submit(
            run_chunk_task, job_future, chunks, retries=TASK_RETRIES, pure=False, **where
        )
        in_flight[future.key] = (future, chunks, worker)
        return future

    # The first tasks: in turns, until every worker has its slots filled.
    first, given = [], dict.fromkeys(addresses, 0)
    for _ in range(max(slots.values())):
        for address in addresses:
            if given[address] < slots[address]:
                future = submit(address)
                if future is not None:
                    first.append(future)
                    given[address] += 1
    futures = as_completed(first)
    try:
        for future in futures:
            _, chunks, worker = in_flight.pop(future.key)
            try:
                result = future.result()
            except InputReadError as error:  # a lone chunk whose read failed in every retry
                result = TaskResult.failed(chunks, str(error))
            ran_on = result.worker or worker
            sizer.observe(ran_on, len(chunks), result.seconds)
            retry = [f for f in result.failures if len(chunks) > 1]
            if retry:
                result = result.without_failures()
                for failure in retry:  # alone, with a task's retries
                    futures.add(submit(worker, np.asarray([failure.index], np.int32)))
            yield result
            following = submit(ran_on if ran_on in slots else worker)
            if following is not None:
                futures.add(following)
    except BaseException as error:
        if not isinstance(error, KeyboardInterrupt):
            drain([future for future, _, _ in in_flight.values()])
        raise


def drain(futures: list[Any], seconds: float = DRAIN_SECONDS) -> None:
    """Wait (at most ``seconds``) for ``futures`` to end, whatever they end with."""
    from distributed import wait

    with contextlib.suppress(TimeoutError):
        wait(futures, timeout=seconds)


def run_items(
    client: Any, job: Any, items: list[Any], task: Callable[[Any, Any], Any]
) -> Iterator[Any]:
    """Results of ``task(job, item)`` for every item, as they complete, for passes whose work
    per item is a chunk's own (the instance pass).

    Items travel in tasks of several (:func:`run_item_batch`), sized as chunk tasks are: the
    first of :data:`FIRST_ITEM_TASK` items, the next to last :data:`TARGET_TASK_SECONDS` by the
    seconds per item measured so far, smaller again towards the end. A task is retried whole on
    failure (``task`` must be safe to run twice); a failure ends the pass once the tasks in
    flight have ended.
    """
    from distributed import as_completed

    if not items:
        return
    workers = cluster_workers(client)
    slots = sum(int(info.get("nthreads", 1)) + QUEUED_PER_WORKER for info in workers.values())
    slots = max(1, slots)
    job_future = client.scatter(job, broadcast=True, hash=False)
    taken = 0
    per_item: float | None = None
    in_flight: dict[str, Any] = {}

    def submit() -> Any:
        nonlocal taken
        left = len(items) - taken
        if left <= 0:
            return None
        size = FIRST_ITEM_TASK if per_item is None else math.ceil(TARGET_TASK_SECONDS / per_item)
        size = max(1, min(size, MAX_CHUNKS_PER_TASK, -(-left // (2 * slots))))
        batch, taken = items[taken : taken + size], taken + size
        future = client.submit(
            run_item_batch, task, job_future, batch, retries=TASK_RETRIES, pure=False
        )
        in_flight[future.key] = future
        return future

    futures = as_completed([f for f in (submit() for _ in range(slots)) if f is not None])
    try:
        for future in futures:
            in_flight.pop(future.key)
            results, seconds = future.result()
            measured = max(seconds, 1e-6) / len(results)
            per_item = measured if per_item is None else (per_item + measured) / 2
            following = submit()  # before the driver takes the results: no worker waits
            if following is not None:
                futures.add(following)
            yield from results
    except BaseException as error:
        if not isinstance(error, KeyboardInterrupt):
            drain(list(in_flight.values()))
        raise


def run_item_batch(
    task: Callable[[Any, Any], Any], job: Any, batch: list[Any]
) -> tuple[list[Any], float]:
    """On a worker: ``task(job, item)`` for each item of ``batch``, in order, and the seconds
    they took together."""
    import time

    started = time.perf_counter()
    results = [task(job, item) for item in batch]
    return results, time.perf_counter() - started
