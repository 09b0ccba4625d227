"""Structured logs: one line per event, as JSON (``kfabric serve --log-format json``) or as text.

An *event* is a log record made by :func:`event`: a dotted name (``job.admit``, ``backend.call``) and flat fields
(``job_id``, ``backend``, ...). Every line also carries the time, the level and the logger, and, inside an API
request, the request's id (``X-Request-ID``, set by :mod:`kfabric.api.metrics` through :data:`REQUEST_ID`). Plain
``logging`` calls (``log.warning("...")``) come out as lines with a ``message`` and no event name, so third-party
logs (uvicorn's) share the format.

JSON line keys: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, then ``event`` and its fields, or
``message``; ``request_id`` when known; ``error`` (the traceback) when the record has one.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

#: the id of the API request being served in this context (None outside requests)
REQUEST_ID: ContextVar[str | None] = ContextVar("kfabric_request_id", default=None)
#: the attributes of a log record that hold an event's fields and the request id when it was made
FIELDS = "kf_fields"
RECORD_REQUEST_ID = "kf_request_id"
#: keys every line has; event fields may not use them
RESERVED = frozenset({"ts", "level", "logger", "event", "message", "request_id", "error"})
FORMATS = ("json", "text")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log the event ``name`` with ``fields`` (flat values: numbers, strings, booleans, None, short lists). A field
    named like a key every line has (:data:`RESERVED`) gets a ``_`` appended: logging never fails its caller."""
    if logger.isEnabledFor(level):
        if not RESERVED.isdisjoint(fields):
            fields = {f"{key}_" if key in RESERVED else key: value for key, value in fields.items()}
        logger.log(level, name, extra={FIELDS: fields, RECORD_REQUEST_ID: REQUEST_ID.get()})


def _fields(record: logging.LogRecord) -> dict[str, Any] | None:
    found = getattr(record, FIELDS, None)
    return found if isinstance(found, dict) else None


def _request_id(record: logging.LogRecord) -> str | None:
    """The request id of an event (stamped when it was made), else of the context the record is formatted in
    (plain log calls are formatted by the handler at once, in the request's context)."""
    stamped = getattr(record, RECORD_REQUEST_ID, None)
    return stamped if isinstance(stamped, str) else REQUEST_ID.get()


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside values are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name}
        fields = _fields(record)
        if fields is not None:
            out["event"] = record.msg
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        request_id = _request_id(record)
        if request_id is not None:
            out["request_id"] = request_id
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LOGGER LEVEL EVENT key=value ...`` (values that need it are quoted as JSON strings)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = dict(_fields(record) or {})
        request_id = _request_id(record)
        if request_id is not None:
            pairs["request_id"] = request_id
        return " ".join([line, *(f"{key}={_text_value(value)}" for key, value in pairs.items())])


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and all(c.isalnum() or c in "._-:/@+" for c in text) else json.dumps(text)


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a daemon or a test may replace it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


#: uvicorn's loggers: made to propagate to the root logger's one handler (one format for every line)
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure(
    fmt: str = "json", level: str | int = "INFO", stream: TextIO | None = None, force: bool = False
) -> logging.Handler | None:
    """Send every log record (kfabric's, and uvicorn's, which propagate to the root logger when uvicorn is started
    with ``log_config=None``) to ``stream`` (default: stderr) in format ``fmt``, at ``level`` and above; returns the
    handler. Like ``logging.basicConfig``, it leaves a root logger that someone else equipped with handlers alone
    (returns None: the host, e.g. pytest, decides) unless ``force``; it replaces its own earlier handler."""
    chosen = formatter(fmt)
    root = logging.getLogger()
    theirs = [h for h in root.handlers if not getattr(h, "kf_logs", False)]
    if theirs and not force:
        return None
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.kf_logs = True  # type: ignore[attr-defined]
    handler.setFormatter(chosen)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _UVICORN:  # an earlier uvicorn in this process may have given them handlers of their own
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.disabled = False
        logger.setLevel(logging.NOTSET)  # the root logger's level decides
    return handler
