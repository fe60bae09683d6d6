"""glibc malloc settings that let a process reuse the memory of its forward passes.

A forward pass allocates tens of megabytes per activation and frees them all at its end. glibc
serves every allocation above 32 MiB (the cap of its mmap threshold) with a fresh ``mmap`` and
returns it with ``munmap``, so each pass zero-fills and page-faults its whole activation memory
again: with the bundled model on 2 CPU cores a 1024^2 chunk took far longer, the extra time
mostly in the kernel (benchmarks/README.md). With mmap switched off, one arena and trimming off,
freed activations stay in the heap and the next pass reuses them; the process keeps its peak
(which is flat in the image size) instead of returning memory between passes.

The same settings go to Dask worker processes through their environment
(:data:`ENVIRONMENT`), since glibc reads those variables once, when a process starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: glibc's environment names for the settings, for processes started from here.
ENVIRONMENT = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def reuse_freed_memory() -> bool:
    """Apply :data:`ENVIRONMENT`'s settings to this process, once; False where not glibc.

    Call it before starting threads that allocate (a thread keeps the arena it first used);
    threads started afterwards share the main arena.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)
