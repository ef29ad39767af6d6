"""structlog set-up: JSON events (or a console view), levels that cost nothing when off,
redaction of every configured secret from every event, and the request's fields on every
event logged while it is served.

Redaction is a processor, so it runs only on events that pass the level filter; secrets
are swapped in by the service when a config loads (``Redactor.update``).

The request's fields (``request_id``, then ``route``, ``endpoint`` and ``attempt`` as they
become known) live on one ``RequestContext`` per request, held by a context variable and
added to each event by the ``request_fields`` processor, beside structlog's
``merge_contextvars``. One context variable set per request, where binding each field
with ``structlog.contextvars.bind_contextvars`` and resetting them cost about 42,000
instructions per request under callgrind (8% of a whole request); a hedge's attempt gets
its own copy, so concurrent attempts each log their own endpoint.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}


class Redactor:
    """Replaces any configured secret inside string values with ``***``."""

    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()
        self._encoded: tuple[bytes, ...] = ()

    def update(self, secrets: list[str]) -> None:
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
        self._encoded = tuple(s.encode() for s in self.secrets)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        for s in self._encoded:
            if data.find(s) != -1:  # not ``in``, which tries a bytes operand as an int first
                data = data.replace(s, b"***")
        return data

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.secrets:
            for k, v in event.items():
                if isinstance(v, str):
                    event[k] = self.scrub(v)
                elif isinstance(v, list | dict | tuple):
                    text = orjson.dumps(v, default=str).decode()
                    scrubbed = self.scrub(text)
                    if scrubbed != text:
                        event[k] = orjson.loads(scrubbed)
        return event


REDACTOR = Redactor()


class RequestContext:
    """The fields every event of one request carries; filled in as the request goes."""

    __slots__ = ("attempt", "endpoint", "request_id", "route")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.route: str | None = None
        self.endpoint: str | None = None
        self.attempt: int | None = None

    def end(self) -> None:
        """The request is served: its fields go on no later event."""
        self.request_id = ""

    def fork(self) -> RequestContext:
        """A copy for one of several attempts running at once (a hedging race)."""
        ctx = RequestContext(self.request_id)
        ctx.route = self.route
        return ctx


REQUEST: ContextVar[RequestContext | None] = ContextVar("router_request", default=None)


def bind_request(request_id: str) -> RequestContext:
    """A new request's context, bound for the rest of the task that serves it; ``end`` it
    when the request is served (cheaper than a reset: one context variable set per
    request), so that what the task logs next is not taken for the request's."""
    ctx = RequestContext(request_id)
    REQUEST.set(ctx)
    return ctx


def request_fields(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Processor: the current request's fields, unless the event names them itself."""
    ctx = REQUEST.get()
    if ctx is not None and ctx.request_id:
        event.setdefault("request_id", ctx.request_id)
        if ctx.route is not None:
            event.setdefault("route", ctx.route)
        if ctx.endpoint is not None:
            event.setdefault("endpoint", ctx.endpoint)
            event.setdefault("attempt", ctx.attempt)
    return event


class BufferedLogger:
    """Writes JSON lines in batches: one syscall per 50 ms instead of one per request.

    Info and debug lines wait at most ``FLUSH_S`` (or until 64 KiB pile up); warnings and
    errors go out at once, together with whatever is waiting, so order is kept. Outside a
    running event loop (start-up, CLI) every line is written at once.
    """

    FLUSH_S = 0.05
    LIMIT = 64 * 1024

    def __init__(self, file: Any) -> None:
        self._file = file
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def _later(self, message: bytes) -> None:
        self._buf.append(message + b"\n")
        self._size += len(message) + 1
        if self._size >= self.LIMIT:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.FLUSH_S, self.flush)

    def _now(self, message: bytes) -> None:
        self._buf.append(message + b"\n")
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._size = 0
            try:
                self._file.write(data)
                self._file.flush()
            except (OSError, ValueError):  # stderr closed: nothing left to tell
                pass

    debug = info = msg = log = _later
    warning = warn = error = err = critical = exception = fatal = failure = _now


_SINKS: list[BufferedLogger] = []


def flush() -> None:
    for sink in _SINKS:
        sink.flush()


atexit.register(flush)


_second: list[Any] = [0, ""]


def _now() -> str:
    """ISO 8601 UTC time with microseconds; the date part is formatted once a second."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1e6):06d}Z"


def _timestamp(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["timestamp"] = _now()
    return event


# The JSON sink when info events are on, for ``info_line``; None sends them to structlog.
_direct: list[BufferedLogger | None] = [None]


def info_line(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """One info event written straight to the JSON sink, as structlog would render it.

    For the line logged once per request: structlog's processor chain cost more than
    the rest of the request's bookkeeping. ``fields`` is taken over. With console
    output, or info filtered out, it goes through ``logger`` like any other event.
    """
    sink = _direct[0]
    if sink is None:
        logger.info(event, **fields)
        return
    fields["event"] = event
    fields["level"] = "info"
    fields["timestamp"] = _now()
    data = orjson.dumps(fields, default=str)
    if REDACTOR.secrets:
        data = REDACTOR.scrub_bytes(data)
    sink.info(data)


def level_from_env() -> int:
    return LEVELS.get(os.environ.get("LOG_LEVEL", "info").strip().lower(), 20)


def configure(level: int | None = None, fmt: str | None = None) -> None:
    level = level_from_env() if level is None else level
    fmt = fmt or os.environ.get("LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        request_fields,
        structlog.processors.add_log_level,
        _timestamp,
        structlog.processors.format_exc_info,
        REDACTOR,
    ]
    if fmt == "console":
        _direct[0] = None
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        sink = BufferedLogger(sys.stderr.buffer)
        _SINKS.append(sink)
        _direct[0] = sink if level <= LEVELS["info"] else None
        factory = lambda *args: sink  # noqa: E731 - structlog wants a factory
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(message)s")
