"""Prefect flows over the ``unet`` engine: when images are segmented, and what is recorded.

Importing this package sets Prefect's environment defaults (see :mod:`flows.settings`) before
any of its modules imports ``prefect``.
"""

from flows.settings import apply_defaults

apply_defaults()
