"""structlog, configured once: contextvars first, ISO timestamps, JSON off a tty.

Event names are ``noun_past_verb`` (``push_received``, ``build_failed``). Never log
config values, keys or tokens.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(stream: TextIO | None = None, *, json: bool | None = None,
              level: int = logging.INFO) -> None:
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get(name: str | None = None) -> Any:
    return structlog.get_logger(name)
