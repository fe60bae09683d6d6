"""A failure the user must fix reads as one line in a run's log, as it does in the CLI.

Prefect logs a failed flow or task run with the exception's traceback (through Prefect, zarr,
s3fs, ...: ninety lines for a missing credential), in the run's log in the UI and on the
terminal of ``unet serve``. For the project's own errors (:class:`~unet.errors.UNetError`),
whose message already says what is wrong and what to do, :class:`OneLineFailures` rewrites such
a record into ``Flow run failed: MissingCredentials: no credentials to reach ...`` and logs the
traceback at DEBUG, where ``PREFECT_LOGGING_LEVEL=DEBUG`` shows it. Other exceptions (the
unexpected) keep their traceback.
"""

from __future__ import annotations

import logging

from unet.errors import UNetError

#: The loggers Prefect's engines log a failed run to, and what a failure is called there.
RUN_LOGGERS = {"prefect.flow_runs": "Flow run failed", "prefect.task_runs": "Task run failed"}

#: Marks the DEBUG record that carries a rewritten record's traceback.
_TRACEBACK = "unet_traceback"


class OneLineFailures(logging.Filter):
    """Rewrites a record with a :class:`UNetError`'s traceback into one line, the traceback
    going to a DEBUG record of the same logger."""

    def __init__(self, failed: str) -> None:
        super().__init__()
        self.failed = failed

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, UNetError) or getattr(record, _TRACEBACK, False):
            return True
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(logging.DEBUG):
            extra = {key: value for key, value in vars(record).items() if key.endswith("_run_id")}
            logger.debug(
                "traceback of %s",
                type(error).__name__,
                exc_info=record.exc_info,
                extra={**extra, _TRACEBACK: True},
            )
        record.msg = f"{self.failed}: {type(error).__name__}: {' '.join(str(error).split())}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def one_line_failures() -> None:
    """Install :class:`OneLineFailures` on Prefect's run loggers (once per process)."""
    for name, failed in RUN_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineFailures) for f in logger.filters):
            logger.addFilter(OneLineFailures(failed))
