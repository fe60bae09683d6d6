"""Runs whose process died are marked Crashed on the server, not left Running forever.

Prefect's flow engine sends a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds while a flow run is running (30 unless set: :mod:`flows.settings`). A process that is killed, or a machine that dies, stops sending them, and
nothing else on a self-hosted server notices. Prefect's documented remedy ("Detect zombie
flows") is an automation: a run that sent a heartbeat and then, within
``MISSED_HEARTBEATS`` periods, neither another heartbeat nor a final state, is set to Crashed.
:func:`ensure_crash_automation` creates that automation on the server once; ``unet segment``
(with a server) and ``unet serve`` call it, best-effort.
"""

from __future__ import annotations

#: Heartbeat periods without a heartbeat after which a running flow run counts as crashed.
MISSED_HEARTBEATS = 3


def crash_automation_name(window: int) -> str:
    return f"unet: crash flow runs without a heartbeat for {window} s"


def ensure_crash_automation() -> str | None:
    """Create the automation that marks silent flow runs Crashed, unless the server has it;
    return its name (None where the server could not be asked, or heartbeats are off)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import get_current_settings

    from flows.recording import best_effort

    frequency = get_current_settings().flows.heartbeat_frequency
    if frequency is None:  # heartbeats switched off: nothing to watch
        return None
    window = frequency * MISSED_HEARTBEATS
    name = crash_automation_name(window)

    def exists() -> bool:
        with get_client(sync_client=True) as client:
            return bool(client.read_automations_by_name(name))

    found = best_effort(exists)
    if found is None:
        return None
    if found:
        return name
    automation = Automation(
        name=name,
        description=(
            "Set by unet: a flow run whose process stopped sending heartbeats (killed, or its "
            "machine died) is marked Crashed instead of staying Running."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {window} s: the process running it is gone",
            )
        ],
    )
    return name if best_effort(automation.create) is not None else None
