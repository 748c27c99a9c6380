"""structlog set-up shared by every service: one event name per line, key-value context, never secrets.

Context bound with ``structlog.contextvars`` lands on every line logged in that task: the region's request
dispatch and rack-power's command handling bind the ``system_id`` of the machine a request is about, so with
``json_lines`` each line concerning a machine carries its ``system_id``.
"""

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    level: str = "info", *, json_lines: bool = False, stream: TextIO | None = None, cache_loggers: bool = True
) -> None:
    """Log at ``level`` and above to ``stream`` (standard error); ``cache_loggers=False`` lets a later call
    (a test's) reconfigure loggers already used."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    output = stream if stream is not None else sys.stderr
    logging.basicConfig(level=numeric, stream=output, format="%(message)s")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=cache_loggers,
    )
