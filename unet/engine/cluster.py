"""Where chunks run: a Dask LocalCluster sized to the machine, or an existing scheduler.

On a GPU machine the LocalCluster has one worker process per GPU, each started with
``CUDA_VISIBLE_DEVICES`` set to its own GPU, so ``cuda`` in a worker means that worker's GPU.
Each GPU worker runs ``GPU_THREADS`` tasks at once, each a stream of chunks
(:mod:`unet.engine.stream`; :mod:`unet.engine.dispatch` sizes the tasks): one chunk at a time holds the GPU (see
:func:`unet.predict.device_lock`) while the others are read, decoded, encoded and written.

On a CPU machine the default is one worker in this very process (threads, no worker process)
running one chunk at a time with torch on every core: one process holds torch once, which
halved the pipeline's peak memory (README, Benchmarks). ``--workers N`` starts N worker
processes instead, splitting the cores between them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from unet.engine.allocator import ENVIRONMENT, reuse_freed_memory
from unet.io.codecs import ENVIRONMENT as CODEC_ENVIRONMENT
from unet.io.codecs import use_fast_codecs

SPAWN_KEY = "distributed.nanny.pre-spawn-environ"
#: Port of a scheduler address without one (Dask's default).
DEFAULT_SCHEDULER_PORT = 8786
#: Seconds to wait for a scheduler's port to accept a connection, and for its handshake.
CONNECT_SECONDS = 3.0
HANDSHAKE_SECONDS = 30
#: Dask's periodic housekeeping, slowed or switched off for the clusters unet starts. Every
#: wake-up of these takes the GIL and a core from the chunk running beside it; the worker's
#: profiler samples the task's thread every 10 ms. With the defaults a forward pass of the
#: bundled model inside a task was slower than outside any cluster; with these, no slower
#: (2 CPU cores, benchmarks/README.md). The dashboard's profile page stays empty.
QUIET = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.scheduler.work-stealing-interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
}


#: Tasks a GPU worker runs at once, each a stream of chunks (one chunk on the GPU, the others
#: reading and writing); the environment variable UNET_GPU_THREADS overrides it. 1, 2 and 4
#: streams fed a simulated device alike within the noise of a shared 2-core machine
#: (benchmarks/README.md); 4 kept the most work ready when the cores were contended.
GPU_THREADS = 4
#: Chunks a CPU worker runs at once. One: the forward pass uses every core, and a second
#: chunk's reading and writing beside it only preempted those threads (measured slower).
CPU_THREADS = 1


@dataclass(frozen=True)
class ClusterPlan:
    """Worker processes, chunks each runs at once, and torch threads per chunk (None: default).

    ``processes`` False: one worker of threads inside this process (the CPU default).
    ``streams``: each task is a stream of chunks (:func:`unet.engine.stream.run_chunk_batch`),
    as GPU workers run them, whatever device the workers find.
    """

    workers: int
    torch_threads: int | None
    gpus: int
    threads_per_worker: int = 1
    processes: bool = True
    streams: bool = False


#: Memory a worker process needs at least (torch, the model, a chunk's buffers): ``--workers``
#: asks for no more processes than the machine's memory holds at this much each.
WORKER_MEMORY = 2**30


def plan_cluster(device: str, workers: int | None, scheduler: str | None) -> ClusterPlan:
    """Size the LocalCluster for ``device`` (ignored when ``scheduler`` is given).

    ``workers`` is capped by what the machine has: a core and :data:`WORKER_MEMORY` per worker
    process (a warning says so).
    """
    cores = os.cpu_count() or 1
    gpus = 0
    if device != "cpu":
        import torch

        gpus = torch.cuda.device_count()
    if scheduler is not None:
        return ClusterPlan(workers=0, torch_threads=None, gpus=gpus)
    if workers is not None:
        workers = capped_workers(workers, cores)
    if gpus and device != "cpu":
        return gpu_plan(gpus, workers)
    count = workers or 1
    return ClusterPlan(
        workers=count,
        torch_threads=max(1, cores // count),
        gpus=0,
        threads_per_worker=CPU_THREADS,
        processes=workers is not None,
    )


def capped_workers(workers: int, cores: int) -> int:
    """``workers``, or fewer when the machine has fewer cores, or less memory than
    :data:`WORKER_MEMORY` for each (with a warning naming the limit)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 0
    fits = max(1, min(cores, memory // WORKER_MEMORY if memory else cores))
    if workers > fits:
        logging.getLogger(__name__).warning(
            "--workers %d is more than this machine holds (%d cores, %.0f GiB): starting %d",
            workers,
            cores,
            memory / 2**30,
            fits,
        )
        return fits
    return workers


def gpu_plan(gpus: int, workers: int | None = None) -> ClusterPlan:
    """The plan of a machine with ``gpus`` GPUs: ``workers`` worker processes (default one per
    GPU, pinned to GPU ``i % gpus``), each running ``GPU_THREADS`` streams of chunks with one
    torch thread each.

    Public so that a benchmark can plan simulated GPUs on a machine without any
    (:mod:`unet.bench.simulate`).
    """
    # Torch does next to no CPU work in a GPU worker, and each chunk thread that asks for
    # N intra-op threads gets its own pool of N: with 4 chunk threads at 16 each, 64 threads
    # spun on 16 cores (on an H100 machine the pipeline got slower with every thread added).
    return ClusterPlan(
        workers=workers or gpus,
        torch_threads=1,
        gpus=gpus,
        threads_per_worker=_gpu_threads(),
        streams=True,
    )


def _gpu_threads() -> int:
    """Chunks a GPU worker runs at once: ``UNET_GPU_THREADS`` if set, else ``GPU_THREADS``."""
    from unet.errors import InvalidParameter

    text = os.environ.get("UNET_GPU_THREADS", str(GPU_THREADS))
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise InvalidParameter(
            f"UNET_GPU_THREADS must be a whole number of chunks per GPU worker, at least 1; "
            f"got {text!r}: unset it for the default of {GPU_THREADS}"
        )
    return threads


@contextlib.contextmanager
def dask_client(plan: ClusterPlan, scheduler: str | None = None) -> Iterator[object]:
    """A ``distributed.Client`` on ``scheduler``, or on a LocalCluster built from ``plan``.

    The LocalCluster (scheduler, workers, dashboard) binds to 127.0.0.1: nothing is exposed on
    the network.
    """
    import dask
    from distributed import Client

    for name in ("distributed", "distributed.core", "distributed.worker", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_unretrieved_timeouts()
    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=f"{HANDSHAKE_SECONDS}s")
        except Exception as error:  # refused, timed out, or a peer that speaks no Dask
            raise _unreachable(scheduler, error) from None
        with client:
            yield client
        return
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which also freezes glibc's
    # mmap threshold: every large tensor is then mmapped and unmapped again, and a 1024^2 chunk
    # of the bundled model took far longer (benchmarks/README.md). Workers get
    # unet.engine.allocator's settings instead, and an in-process worker gets them here, before
    # its threads start.
    environ = {
        f"{SPAWN_KEY}.{name}": value for name, value in {**ENVIRONMENT, **CODEC_ENVIRONMENT}.items()
    }
    if not plan.processes:
        reuse_freed_memory()
    use_fast_codecs()
    # Kept set while the cluster runs: some of these are read again after start.
    with dask.config.set({**environ, **QUIET}), _local_cluster(plan) as cluster:
        with Client(cluster) as client:
            yield client


class _UnretrievedTimeouts(logging.Filter):
    """Drops asyncio's \"Future exception was never retrieved\" for a timeout or a closed
    comm: Dask's own futures at a cluster's shutdown on a loaded machine, which said nothing to
    act on and came after a run's last line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.comm import CommClosedError

        error = record.exc_info[1] if record.exc_info else None
        unretrieved = str(record.msg).startswith("Future exception was never retrieved")
        return not (unretrieved and isinstance(error, TimeoutError | CommClosedError))


def quiet_unretrieved_timeouts() -> None:
    """Install :class:`_UnretrievedTimeouts` on the ``asyncio`` logger (once)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedTimeouts) for f in logger.filters):
        logger.addFilter(_UnretrievedTimeouts())


def check_scheduler(address: str) -> None:
    """Raise :class:`~unet.errors.ServerUnreachable` at once when nothing listens at the
    ``tcp://`` or ``tls://`` address of a Dask scheduler (other protocols are not probed).

    Dask's client retries a refused connection until its timeout; a probe of the port answers
    in milliseconds, or in ``CONNECT_SECONDS`` where packets are dropped.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        port = parts.port or DEFAULT_SCHEDULER_PORT
        with socket.create_connection((parts.hostname or "127.0.0.1", port), CONNECT_SECONDS):
            pass
    except (OSError, ValueError) as error:
        raise _unreachable(address, error) from None


def _unreachable(address: str, error: BaseException):
    from unet.errors import ServerUnreachable

    reason = " ".join(str(error).split()) or type(error).__name__
    return ServerUnreachable(
        f"the Dask scheduler at {address} does not answer ({reason}): start it "
        "(dask scheduler) or fix --scheduler"
    )


def _local_cluster(plan: ClusterPlan):
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    if plan.gpus:
        workers = {
            str(i): {
                "cls": Nanny,
                "options": {
                    "nthreads": plan.threads_per_worker,
                    "env": {"CUDA_VISIBLE_DEVICES": str(i % plan.gpus)},
                    "host": "127.0.0.1",
                },
            }
            for i in range(plan.workers)
        }
        scheduler_spec = {
            "cls": Scheduler,
            "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        }
        cluster = SpecCluster(workers=workers, scheduler=scheduler_spec, silence_logs=logging.ERROR)
    else:
        # In-process workers talk to the scheduler over inproc://, which takes no host.
        where = {"host": "127.0.0.1"} if plan.processes else {}
        cluster = LocalCluster(
            n_workers=plan.workers,
            threads_per_worker=plan.threads_per_worker,
            processes=plan.processes,
            dashboard_address="127.0.0.1:0",
            **where,
            silence_logs=logging.ERROR,
        )
    return cluster
