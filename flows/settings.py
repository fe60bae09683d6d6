"""Prefect settings for this project, as environment defaults set before ``prefect`` is imported.

Prefect reads its settings from the environment once, at import, and the ephemeral server it
starts when no ``PREFECT_API_URL`` is set is a subprocess that inherits this environment: so the
defaults go into ``os.environ`` (never overriding what the user set) before anything imports
``prefect``. ``flows/__init__.py`` applies them, so importing any flow module is enough.

:func:`configured_api_url` tells whether a Prefect server is configured without importing
``prefect``: ``unet segment`` without one runs without Prefect at all.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

DEFAULTS = {
    # No telemetry: the SDK honours DO_NOT_TRACK, the (ephemeral) server this setting.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A flow called from Python without PREFECT_API_URL runs against a temporary local server
    # instead of failing (`unet segment` runs without Prefect then, see flows.runner).
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    # The ephemeral server migrates its SQLite database at start: 20 s is too short on 2 cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # SQLite contention messages of the server are retried internally; they are not news.
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
    # Flow runs send a heartbeat this often; a run that stops is marked Crashed by the
    # automation of flows.heartbeats (Prefect's default, 180 s, would take 9 minutes).
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}

#: How users start a Prefect server, everywhere the project tells them to: without the setting
#: the server tries to send telemetry and logs "Failed to send telemetry" where it cannot.
START_SERVER = "PREFECT_SERVER_ANALYTICS_ENABLED=false prefect server start"

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


def configured_api_url() -> str | None:
    """The Prefect API URL the user configured, or None; ``prefect`` is not imported.

    The two places Prefect's users set it: the environment (``PREFECT_API_URL``) and the active
    profile of Prefect's ``profiles.toml`` (``prefect config set PREFECT_API_URL=...``), found
    as Prefect finds it (``PREFECT_PROFILES_PATH``, else ``$PREFECT_HOME/profiles.toml``, else
    ``~/.prefect/profiles.toml``; the profile ``PREFECT_PROFILE`` names, else the file's
    ``active`` one). An empty value means not set, as it does for Prefect.
    """
    if "PREFECT_API_URL" in os.environ:
        return os.environ["PREFECT_API_URL"].strip() or None
    profiles = _profiles_path()
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):  # no file, or one Prefect itself warns about
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(active, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return (url.strip() or None) if isinstance(url, str) else None


def _profiles_path() -> Path:
    if os.environ.get("PREFECT_PROFILES_PATH"):
        return Path(os.environ["PREFECT_PROFILES_PATH"]).expanduser()
    home = os.environ.get("PREFECT_HOME") or "~/.prefect"
    return Path(home).expanduser() / "profiles.toml"
