"""Prefect flows over the ``unet`` engine: when images are segmented, and what is recorded.

Importing this package sets Prefect's environment defaults (see :mod:`flows.settings`) before
any of its modules imports ``prefect``, and makes the project's errors one line in a run's log
(:mod:`flows.failures`).
"""

from flows.failures import one_line_failures
from flows.settings import apply_defaults

apply_defaults()
one_line_failures()
