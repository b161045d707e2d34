"""STREAM_LOG_FORMAT: JSON lines with time, level, logger, message and exception; text unchanged."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import orjson
import pytest

from stream import logs
from stream.config import LogFormat

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def root_restored() -> Iterator[None]:
    """`configure` changes the root logger and sys.excepthook: put both back afterwards."""
    import sys

    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook = hook
    logging.captureWarnings(False)


def _line(record: logging.LogRecord) -> dict[str, object]:
    parsed = orjson.loads(logs.JsonLineFormatter().format(record))
    assert isinstance(parsed, dict)
    return parsed


def test_logs_json_line_has_time_level_logger_message_only() -> None:
    record = logging.LogRecord("stream.runtime.worker", logging.WARNING, __file__, 1, "batch of %d failed", (3,), None)
    record.created = 1_764_321_300.25  # 2025-11-28T09:15:00.250Z
    record.payload = {"text": "never logged"}  # an extra attribute: left out of the line
    line = _line(record)
    assert line == {
        "time": "2025-11-28T09:15:00.250Z",
        "level": "WARNING",
        "logger": "stream.runtime.worker",
        "message": "batch of 3 failed",
    }
    assert list(line) == ["time", "level", "logger", "message"]


def test_logs_json_line_carries_the_exception_text() -> None:
    try:
        raise ValueError("broker refused the feed record")
    except ValueError:
        import sys

        record = logging.LogRecord("stream", logging.ERROR, __file__, 1, "batch failed", (), sys.exc_info())
    line = _line(record)
    assert RFC3339_UTC.match(str(line["time"]))
    exception = str(line["exception"])
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.rstrip().endswith("ValueError: broker refused the feed record")


def test_logs_faust_config_is_json_to_stderr_and_none_for_text() -> None:
    assert logs.faust_logging_config("info", LogFormat.TEXT) is None
    config = logs.faust_logging_config("warning", LogFormat.JSON)
    assert config is not None
    assert config["root"] == {"level": "WARNING", "handlers": ["stderr"]}
    assert config["handlers"]["stderr"]["stream"] == "ext://sys.stderr"
    assert config["formatters"]["json"]["()"] is logs.JsonLineFormatter


def test_logs_configure_json_writes_every_logger_and_warning_as_json(
    root_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    logs.configure("info", LogFormat.JSON)
    logging.getLogger("aiokafka.consumer").info("joined group %s", "g")
    logging.getLogger("faust.worker").debug("below the level: not written")
    warnings.warn("deprecated option", DeprecationWarning, stacklevel=1)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("aiokafka.consumer", "INFO"),
        ("py.warnings", "WARNING"),
    ]
    assert lines[0]["message"] == "joined group g"
    assert "deprecated option" in lines[1]["message"]


def test_logs_configure_json_logs_uncaught_exceptions_as_json(
    root_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    logs.configure("info", LogFormat.JSON)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    (line,) = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert line["level"] == "CRITICAL" and line["message"] == "uncaught exception"
    assert "RuntimeError: boom" in line["exception"]


def test_logs_configure_text_keeps_the_text_format(root_restored: None) -> None:
    logs.configure("info", LogFormat.TEXT)
    (handler,) = logging.getLogger().handlers
    assert handler.formatter is not None
    record = logging.LogRecord("stream", logging.INFO, __file__, 1, "hello", (), None)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO stream: hello$", handler.formatter.format(record))


def test_logs_json_error_line_is_one_json_error() -> None:
    line = orjson.loads(logs.json_error_line("STREAM_PARTITIONS='x': expected an integer"))
    assert line["level"] == "ERROR" and line["logger"] == "stream"
    assert line["message"] == "STREAM_PARTITIONS='x': expected an integer"


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_logs_aiokafka_connection_logger_stays_at_info_at_debug_level(root_restored: None, fmt: LogFormat) -> None:
    conn = logging.getLogger("aiokafka.conn")
    level = conn.level
    try:
        logs.configure("debug", fmt)
        assert logging.getLogger().isEnabledFor(logging.DEBUG)
        assert not conn.isEnabledFor(logging.DEBUG)  # its debug lines carry whole records
        assert conn.isEnabledFor(logging.INFO)
    finally:
        conn.setLevel(level)


def test_logs_faust_config_holds_the_payload_loggers_at_info() -> None:
    config = logs.faust_logging_config("debug", LogFormat.JSON)
    assert config is not None
    assert config["loggers"] == {"aiokafka.conn": {"level": "INFO"}}
