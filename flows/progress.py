"""Chunk progress of a running image as a Prefect progress artifact.

The engine calls back with (chunks done, chunks total) as chunks finish, possibly hundreds of
times a second. The artifact is updated at most once per ``interval`` seconds (and always at the
end), so a run costs the API a request a second at most, and never waits for one.
"""

from __future__ import annotations

import threading
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
    """A Prefect progress artifact (0-100 %) of one image's chunks; call it with (done, total).

    Best-effort (see :mod:`flows.recording`): the artifact is created and updated by a
    background thread, so a slow or lost server never holds up the chunks; updates that pile up
    meanwhile collapse into the latest. :meth:`close` sends the last one.
    """

    def __init__(self, key: str, description: str, throttle: Throttle | None = None):
        import contextvars

        from flows.recording import current

        self.key, self.description = key, description
        self.throttle = throttle or Throttle()
        self.record = current()
        self.artifact_id: UUID | None = None
        self._latest: float | None = None
        self._closed = False
        self._wake = threading.Condition()
        # The thread runs in this run's context: Prefect finds the run (and its client) there.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._send,), daemon=True
        )
        self._thread.start()

    def __call__(self, done: int, total: int) -> None:
        if not self.throttle.due(done, total):
            return
        with self._wake:
            self._latest = percent(done, total)
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Send the last update and stop; waits ``timeout`` seconds at most."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def _send(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        self.artifact_id = self.record.call(
            create_progress_artifact, 0.0, key=self.key, description=self.description
        )
        while True:
            with self._wake:
                while self._latest is None and not self._closed:
                    self._wake.wait()
                latest, self._latest = self._latest, None
                closed = self._closed
            if latest is not None and self.artifact_id is not None:
                self.record.call(update_progress_artifact, self.artifact_id, latest)
            if closed:
                return


def percent(done: int, total: int) -> float:
    """Progress in percent; an image without chunks to compute is done."""
    return 100.0 if total <= 0 else round(100.0 * min(done, total) / total, 2)
