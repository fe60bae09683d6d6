"""Prefect settings for this project, as environment defaults set before ``prefect`` is imported.

Prefect reads its settings from the environment once, at import, and the ephemeral server it
starts when no ``PREFECT_API_URL`` is set is a subprocess that inherits this environment: so the
defaults go into ``os.environ`` (never overriding what the user set) before anything imports
``prefect``. ``flows/__init__.py`` applies them, so importing any flow module is enough.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # No telemetry: the SDK honours DO_NOT_TRACK, the (ephemeral) server this setting.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Without PREFECT_API_URL, run against a temporary local server instead of failing.
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    # The ephemeral server migrates its SQLite database at start: 20 s is too short on 2 cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # SQLite contention messages of the server are retried internally; they are not news.
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
    # Flow runs send a heartbeat this often; a run that stops is marked Crashed by the
    # automation of flows.heartbeats (Prefect's default, 180 s, would take 9 minutes).
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}

#: Console level for ``unet segment``: the terminal shows the progress bar and the summary;
#: every log still reaches the Prefect server (its handler has its own level).
QUIET_CONSOLE = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL"}

#: For ``unet segment``: Prefect's client retries a failed request 5 times with exponential
#: back-off, 62 s per request to a server that went away, and the end of a run makes several.
#: One retry (2 s) still rides out a busy server's 503; the run's result never depends on them
#: (flows.recording).
FEW_RETRIES = {"PREFECT_CLIENT_MAX_RETRIES": "1"}


def apply_defaults(extra: dict[str, str] | None = None) -> None:
    """Set the defaults (and ``extra``) in ``os.environ`` where the user has not set them."""
    for name, value in {**DEFAULTS, **(extra or {})}.items():
        os.environ.setdefault(name, value)
