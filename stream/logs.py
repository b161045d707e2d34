"""Log lines for people (`text`) or for a log pipeline (`json`), chosen by STREAM_LOG_FORMAT.

JSON is one object per line on stderr: `time` (RFC 3339, UTC, milliseconds, `Z`),
`level`, `logger`, `message`, and `exception` (the traceback's text) when there is
one. python-json-logger (with orjson) writes it; a line carries the same facts as the
text line and nothing more: a record's extra attributes are left out, so nothing a
library attaches to a record (a payload, say) reaches the log by this path.

Every command configures the root logger with `configure`. The worker's Faust host
(mode's `Worker`) sets logging up again when it starts: `faust_logging_config` is the
same configuration as a `logging.config.dictConfig` dictionary for it, so Faust's,
mode's and aiokafka's lines come out in the same format. In JSON mode uncaught
exceptions and Python's warnings are logged too, instead of going to stderr as text.
In both formats, and at any level, aiokafka's connection logger stays at INFO or above:
at DEBUG it writes out the records of every request and response.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import sys
from types import TracebackType
from typing import Any, Final

from pythonjsonlogger.orjson import OrjsonFormatter

from stream.config import LogFormat

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Loggers held at INFO or above whatever the level asked for: aiokafka.conn's DEBUG
# lines carry whole requests and responses, the records in them included (payloads,
# account ids, birth dates), which the logs must never hold.
PAYLOAD_LOGGERS: Final = ("aiokafka.conn",)

# The keys of a JSON line, in this order; `exception` and `stack` only when present.
_RENAMED: Final = {"levelname": "level", "name": "logger", "exc_info": "exception", "stack_info": "stack"}
_KEYS: Final = ("time", "level", "logger", "message", "exception", "stack")


class JsonLineFormatter(OrjsonFormatter):
    """One JSON object per record: time (RFC 3339 UTC), level, logger, message, exception."""

    def __init__(self) -> None:
        super().__init__(["levelname", "name", "message"], rename_fields=_RENAMED, timestamp="time")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """The known keys only, in a fixed order, the time as `2026-11-28T09:15:00.123Z`."""
        stamp = log_data.get("time")
        if isinstance(stamp, dt.datetime):
            log_data["time"] = rfc3339(stamp)
        return {key: log_data[key] for key in _KEYS if log_data.get(key) not in (None, "")}


def rfc3339(moment: dt.datetime) -> str:
    """`moment` in UTC as RFC 3339 with milliseconds and `Z`, the contract's timestamp form."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def faust_logging_config(level: str, fmt: LogFormat) -> dict[str, Any] | None:
    """The root logger's configuration for mode's Worker (`logging_config=`); None keeps mode's own (text)."""
    if fmt is not LogFormat.JSON:
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLineFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"level": _at_least_info(level)} for name in PAYLOAD_LOGGERS},
    }


def configure(level: str, fmt: LogFormat) -> None:
    """The root logger at `level`, writing `fmt` lines to stderr (a command calls this first)."""
    config = faust_logging_config(level, fmt)
    if config is None:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT, force=True)
        # mode's own (text) set-up in the worker leaves these levels as they are.
        for name in PAYLOAD_LOGGERS:
            logging.getLogger(name).setLevel(_at_least_info(level))
        return
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _at_least_info(level: str) -> str:
    """`level`, raised to INFO when it is DEBUG."""
    return "INFO" if level.upper() == "DEBUG" else level.upper()


def json_error_line(message: str) -> str:
    """An ERROR line in the JSON format, for the one message written before logging is set up."""
    record = logging.LogRecord("stream", logging.ERROR, __file__, 0, "%s", (message,), None)
    return JsonLineFormatter().format(record)


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """sys.excepthook in JSON mode: the traceback as a JSON line instead of raw text."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("stream").critical("uncaught exception", exc_info=(kind, error, traceback))
