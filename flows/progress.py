"""Chunk progress of a running image as a Prefect progress artifact.

The engine calls back with (chunks done, chunks total) as chunks finish, possibly hundreds of
times a second. The artifact is updated at most once per ``interval`` seconds (and always at the
end), so a run costs the API a request a second at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

ProgressCallback = Callable[[int, int], None]


class Throttle:
    """Says when an update is due: at most once per ``interval`` seconds, and at the end."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.last: float | None = None

    def due(self, done: int, total: int) -> bool:
        now = self.clock()
        if done >= total or self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class ProgressArtifact:
    """A Prefect progress artifact (0-100 %) of one image's chunks; call it with (done, total)."""

    def __init__(self, key: str, description: str, throttle: Throttle | None = None):
        from prefect.artifacts import create_progress_artifact

        self.throttle = throttle or Throttle()
        self.artifact_id: UUID = create_progress_artifact(0.0, key=key, description=description)

    def __call__(self, done: int, total: int) -> None:
        if not self.throttle.due(done, total):
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, percent(done, total))


def percent(done: int, total: int) -> float:
    """Progress in percent; an image without chunks to compute is done."""
    return 100.0 if total <= 0 else round(100.0 * min(done, total) / total, 2)


def combine(*callbacks: ProgressCallback | None) -> ProgressCallback:
    """One callback calling every one that is not None."""
    active = [callback for callback in callbacks if callback is not None]

    def call_all(done: int, total: int) -> None:
        for callback in active:
            callback(done, total)

    return call_all
