"""``--log-format json``: every log line of the primary and its workers is one JSON object.

The object: ``time`` (ISO 8601, local time with its offset, to the
millisecond), ``level``, ``logger``, ``message`` (the formatted message: an
access line as uvicorn or ``--access-logformat`` writes it), ``pid``,
``worker`` (the index of the worker that logged it, as ``fastfork.worker_index``;
null in the primary), ``worker_id`` and ``role`` (``"primary"`` or
``"worker"``); ``exc_info``/``stack_info`` as text when the record has them.

``enable()`` in the primary, before any fork, sets it for the processes it
forks: the primary's handler (``fastfork.cli.logs``), uvicorn's loggers in each
worker (``fastfork.web.asgi.log_config``) and the ``--access-logformat`` log
(``fastfork.web.access``) then format with ``JsonFormatter``.
"""

import datetime
import json
import logging
from typing import Any, Dict

from .worker import runtime as _runtime

_enabled = False


def enable(on: bool = True) -> None:
    """Log JSON from now on, here and in the processes forked from here."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring).  Takes and ignores
    ``use_colors``, which uvicorn sets on the formatters of its log config."""

    def __init__(self, *args: Any, use_colors: Any = None, **kwargs: Any) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        worker = _runtime.current()
        entry: Dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created).astimezone()
                    .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "worker": None if worker is None else worker.index,
            "worker_id": None if worker is None else worker.id,
            "role": "primary" if worker is None else "worker",
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(text_format: str) -> logging.Formatter:
    """``JsonFormatter`` when enabled, else a text formatter of ``text_format``."""
    return JsonFormatter() if _enabled else logging.Formatter(text_format)
