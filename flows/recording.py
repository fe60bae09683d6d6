"""What a run records on the Prefect server is best-effort: progress, artifacts and logs never fail
or slow a segmentation.

Calls to the server go through :meth:`Recording.call`, which does not retry: a call that fails
(the server stopped, restarted, or answers with an error) is dropped, and the run records nothing
more there, so an outage costs at most one failed request. The segmentation goes on; the run's
record on the server is then incomplete, and ``unet segment`` says so once at the end.

Prefect's own deliveries in the background (state-change events, heartbeats, logs) fail in the
same outage; while a :func:`recording` is active, their error reports are not printed but count
as the record's loss.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds Prefect's background services get to send what they hold at the end of a run.
REQUEST_SECONDS = 10.0
#: Reconnections of the events client before an event is given up.
EVENT_RECONNECTIONS = 2

_current: ContextVar[Recording | None] = ContextVar("unet_recording", default=None)


class Recording:
    """The record of one run on the Prefect server: whether part of it was lost, and why.

    ``drop_events``: once the record is lost, Prefect's events (state changes, heartbeats) are
    dropped instead of queued, each to fail after its reconnections (set by :func:`recording`
    for the run's own process).
    """

    def __init__(self, drop_events: bool = False) -> None:
        self.lost: str | None = None
        self.drop_events = drop_events
        self._lock = threading.Lock()

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``function(*args, **kwargs)`` once, without Prefect's retries; None when it failed or
        when an earlier call of this record failed."""
        if self.lost is not None:
            return None
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        try:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
                return function(*args, **kwargs)
        except Exception as error:  # whatever the server or the client raise: not our run's
            self.fail(error)
            return None

    def fail(self, error: BaseException | str) -> None:
        """Note that part of the record was lost (the first reason is kept)."""
        with self._lock:
            if self.lost is not None:
                return
            self.lost = error if isinstance(error, str) else _describe(error)
        if self.drop_events:
            from prefect.events.clients import NullEventsClient
            from prefect.events.worker import EventsWorker

            EventsWorker.set_client_override(NullEventsClient)


def current() -> Recording:
    """The run's :class:`Recording` when a :func:`recording` is active, else a new one (a run
    started by a deployment records each call on its own)."""
    return _current.get() or Recording()


def best_effort(function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``function(*args, **kwargs)`` through the current :class:`Recording`."""
    return current().call(function, *args, **kwargs)


@contextlib.contextmanager
def recording(server: str | None = None) -> Iterator[Recording]:
    """Within this block calls record through one :class:`Recording`, and Prefect's reports of
    background deliveries that failed are counted in it instead of printed.

    ``server``: the API URL of the run's Prefect server, if any. Its events are then sent with
    ``EVENT_RECONNECTIONS`` reconnections instead of Prefect's 10 (7 s an event, one after the
    other, once the server is gone).
    """
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker

    record = Recording(drop_events=server is not None)
    token = _current.set(record)
    quiet = _FailedDeliveries(record)
    internal = logging.getLogger("prefect._internal.concurrency")
    internal.addFilter(quiet)
    # Prefect's log shipper writes "--- Error logging to API ---" to stderr unless this is off.
    raise_exceptions = logging.raiseExceptions
    logging.raiseExceptions = False
    if server is not None:
        EventsWorker.set_client_override(
            PrefectEventsClient, api_url=server, reconnection_attempts=EVENT_RECONNECTIONS
        )
    try:
        yield record
    finally:
        # What Prefect still holds is sent now, with its failures counted, not at exit.
        _deliver_pending()
        if server is not None:
            EventsWorker.set_client_override(None)
        if record.lost is None:
            # Once the server is lost, what Prefect still sends at exit fails too: quietly.
            logging.raiseExceptions = raise_exceptions
            internal.removeFilter(quiet)
        _current.reset(token)


def _deliver_pending() -> None:
    """Let Prefect's background services send what they hold (``REQUEST_SECONDS`` at most)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=REQUEST_SECONDS)


class _FailedDeliveries(logging.Filter):
    """Drops the "Service ... failed to process item" records of Prefect's background services
    (events, logs) and notes the loss."""

    def __init__(self, record: Recording) -> None:
        super().__init__()
        self.record = record

    def filter(self, entry: logging.LogRecord) -> bool:
        if "failed to process item" in str(entry.msg):
            self.record.fail("the server did not take the run's events")
            return False
        return True


def is_server_problem(error: BaseException) -> bool:
    """Whether ``error`` is the Prefect server's (unreachable, timed out, failing), not the
    run's: a transport error, an error status, or Prefect's runner giving up its poll loop."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from unet.errors import UNetError

    if isinstance(error, UNetError):
        return False
    if isinstance(error, RuntimeError) and "exceeded error threshold" in str(error):
        return True
    return isinstance(error, httpx.HTTPError | PrefectHTTPStatusError | ConnectionError)


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
