"""What ``unet segment`` hands the flows beside their parameters: the terminal's progress bars
and the plans it already made.

Flow parameters must stay plain data (they are stored on the server and make the UI's form), so
these reach the segment task through context variables that the runner sets around the flow
call. A flow started from elsewhere (a deployment, Python) finds them empty and does without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unet.config import SegmentParameters
    from unet.engine.plan import RunPlan

PlanKey = tuple[str, str, "SegmentParameters"]

ProgressCallback = Callable[[int, int], None]
#: Given an output's name, a callback drawing its bar (or None).
ProgressFactory = Callable[[str], ProgressCallback | None]

_terminal_progress: ContextVar[ProgressFactory | None] = ContextVar(
    "unet_terminal_progress", default=None
)
_plans: ContextVar[dict[PlanKey, RunPlan] | None] = ContextVar("unet_plans", default=None)


@contextlib.contextmanager
def terminal_progress(factory: ProgressFactory) -> Iterator[None]:
    """Within this block, segment tasks also report to ``factory(output name)``."""
    token = _terminal_progress.set(factory)
    try:
        yield
    finally:
        _terminal_progress.reset(token)


def terminal_callback(name: str) -> ProgressCallback | None:
    """The terminal's callback for output ``name``, when a runner installed one."""
    factory = _terminal_progress.get()
    return factory(name) if factory else None


@contextlib.contextmanager
def planned(plans: list[RunPlan], parameters: SegmentParameters) -> Iterator[None]:
    """Within this block, a segment task of a plan's input and output with ``parameters`` (as
    the runner was given them) runs that plan instead of planning again."""
    token = _plans.set({(plan.input, plan.output, parameters): plan for plan in plans})
    try:
        yield
    finally:
        _plans.reset(token)


def plan_for(input: str, output: str, parameters: SegmentParameters) -> RunPlan | None:
    """The plan the runner made for ``input`` into ``output`` with ``parameters``, if any."""
    plans = _plans.get() or {}
    return plans.get((input, output, parameters))
