"""Prefect's settings for this project: a server started as the project says sends no telemetry
(and so never logs "Failed to send telemetry")."""

from __future__ import annotations

import re
from pathlib import Path

import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)
from flows.runner import UNTRACKED
from flows.settings import START_SERVER

REPO = Path(__file__).resolve().parents[2]


def test_the_documented_server_command_turns_the_servers_telemetry_off(monkeypatch):
    from prefect.settings import Settings

    assignment, command = START_SERVER.split(" ", 1)
    name, value = assignment.split("=")
    assert command == "prefect server start"
    monkeypatch.setenv(name, value)
    assert Settings().server.analytics_enabled is False  # what the telemetry service checks


def test_everywhere_users_are_told_to_start_a_server_the_setting_comes_with_it():
    texts = {
        path.name: path.read_text() for path in (REPO / "README.md", REPO / "docs" / "prefect.md")
    }
    texts["UNTRACKED"] = UNTRACKED
    for name, text in texts.items():
        told = re.findall(r"(\S+) prefect server start", " ".join(text.split()))
        assert told, name
        assert all(word.endswith("PREFECT_SERVER_ANALYTICS_ENABLED=false") for word in told), told
