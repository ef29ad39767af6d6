"""A request's row as both stores bind it: the columns in their order, and the record the
event loop builds for every request (``entry``) and queues until a store writes it.

The order and the defaults are the writer's cost model: values most rows of a batch share
come first, so SQLite binds them once per statement (``sqlite.py``); columns that are at
their defaults in most rows come last, and a row may end before them. ``schema.py`` stays
the one definition of the tables; tests keep the columns and types here in step with it.
"""

from __future__ import annotations

import math
from itertools import chain
from operator import itemgetter
from typing import Any

from router.requestlog.records import AttemptRecord, RequestRecord, Usage

# A row starts with the values that most rows of a batch have in common, then has its
# own. SQLite binds the shared ones once per statement (``sqlite._SQLiteInserts``), where a
# bound value costs its writer 250 (a number) to 800 (text, which SQLite copies)
# instructions: most requests of a batch share their route, endpoint, operation,
# stream flag, status, client key and number of attempts.
REQUEST_SHARED = ("route", "endpoint", "operation", "stream", "status", "key_name", "attempts")
REQUEST_COLUMNS = (
    "ts", "request_id", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost",
    "attempt_duration_ms", "attempt_ttft_ms", "hedges", "reasoning_tokens", "cached_tokens",
    "cache_write_tokens", "error", "output_error", "session",
)  # fmt: skip
# Of ``attempt_rows``: the attempts that are not a request's one attempt that served it,
# which its request's row carries (``attempt_*``, revision 0005). Few: they share nothing.
ATTEMPT_COLUMNS = (
    "ts", "request_id", "route", "endpoint", "status", "duration_ms", "ttft_ms", "reason",
    "hedged",
)  # fmt: skip
# Columns that are at these values in most rows come last, and a row may end before
# them: the values it leaves out are these (SQL for both backends). A bound value costs
# the SQLite writer about 400 instructions; leaving these seven out when they are at
# their defaults saves about 1,900 per request and attempt, writer and loop together.
DEFAULTS = {
    "hedges": "0", "reasoning_tokens": "0", "cached_tokens": "0", "cache_write_tokens": "0",
    "error": "NULL", "output_error": "NULL", "session": "NULL", "reason": "NULL",
    "hedged": "FALSE",
}  # fmt: skip
# Rows carry ``ts`` as Unix seconds (SQLite keeps them so, PostgreSQL converts) and NaN
# for NULL: sqlite3 binds a float NaN as NULL directly, where None takes its adapter
# path (below), and orjson writes NaN as null.
# How PostgreSQL reads each column back out of the JSON batch; a test checks these
# against the column types in ``schema.py``.
PG_TYPES = {
    "ts": "timestamptz", "request_id": "text", "key_name": "text", "route": "text",
    "endpoint": "text", "operation": "text", "stream": "boolean", "status": "integer",
    "attempts": "integer", "hedges": "integer", "latency_ms": "float8", "ttft_ms": "float8",
    "prompt_tokens": "bigint", "completion_tokens": "bigint", "reasoning_tokens": "bigint",
    "cached_tokens": "bigint", "cache_write_tokens": "bigint", "cost": "float8",
    "error": "text", "output_error": "text", "session": "text", "reason": "text",
    "duration_ms": "float8", "hedged": "boolean",
    "attempt_duration_ms": "float8", "attempt_ttft_ms": "float8",
}  # fmt: skip

Row = tuple[Any, ...]
# A request as the writer queues it and a store takes it: one flat tuple, which the
# event loop builds in one go and keeps until it is written. Its attempt rows come first
# (``()`` for the usual request, whose one attempt its own row carries), then its row in
# REQUEST_SHARED + REQUEST_COLUMNS order. Nested tuples (a pair of parts, and the pair
# beside the attempts) cost the loop about 2 us more per request than this, measured
# side by side on one core, for what they keep alive between batches, though callgrind
# counted next to no difference.
Record = tuple[Any, ...]
_ATTEMPT_ROWS = itemgetter(0)


def attempts_of(records: list[Record]) -> list[Row]:
    """The attempt rows of ``records``, in order."""
    return list(chain.from_iterable(map(_ATTEMPT_ROWS, records)))


MAX_TEXT = 256  # client-chosen strings (request ids) are cut here
MAX_NAMES = 4096  # distinct names kept made storable (see entry())
NULL = math.nan  # a NULL as both stores bind it cheaply (see REQUEST_COLUMNS)

# A queued record is one flat tuple (``Record``) of str, int and float and the
# attempt rows, which the garbage collector stops tracking (a queue of thousands of
# dataclasses would be rescanned by every young-generation collection).
_NO_USAGE = Usage()


def _text(value: str) -> str:
    """Text made storable and cut to MAX_TEXT: a NUL (PostgreSQL) or a lone surrogate
    (any UTF-8 driver) would fail its whole batch on every retry."""
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():  # O(1) for the usual ASCII string
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def entry(rec: RequestRecord, names: dict[str | None, Any]) -> Record:
    """``rec`` as a a ``Record``: its attempt rows, then its row; rows end before
    their ``DEFAULTS`` when those are all they have there.

    The usual request, served by its one attempt, is one row: it carries that attempt's
    duration and TTFT, and its other fields are the attempt's too (revision 0005). Any
    other request's attempts get rows of their own, its ``attempt_*`` fields NULL.

    This runs on the event loop for every request, so it does little more than read each
    field once: ``ts`` is the start in Unix seconds as both stores take it (attempts,
    which carry monotonic durations only, get their request's); NULL is NaN; flags go
    as 0/1, since sqlite3 sends a bool through its slow adapter path (PostgreSQL reads
    '0'/'1' as booleans). Names from the configuration (routes, endpoints, client keys,
    error classes, attempt reasons) come storable from ``names``, None as NULL: the
    same few come with every record, and a hit is a dictionary lookup instead of a call
    of ``_text``. A name not in it raises KeyError: see ``learn_names``."""
    ts = rec.started
    rid = rec.request_id
    if len(rid) > MAX_TEXT or not rid.isascii() or "\x00" in rid:
        rid = _text(rid)
    u = rec.usage or _NO_USAGE
    ttft = rec.ttft_ms
    attempts = rec.attempts
    rows: tuple[Row, ...] = ()
    a = attempts[0] if len(attempts) == 1 else None
    # The attempt served the request, unhedged, at its route, endpoint and status: the
    # request's row says all the rest of it.
    if (
        a is not None and a.reason is None and not a.hedged and a.status == rec.status
        and a.route == rec.route and a.endpoint == rec.endpoint
    ):  # fmt: skip
        attempt_ms, attempt_ttft = a.duration_ms, NULL if a.ttft_ms is None else a.ttft_ms
    else:
        attempt_ms = attempt_ttft = NULL
        rows = _attempt_rows(ts, rid, attempts, names)
    record: Record = (
        rows, names[rec.route], names[rec.endpoint], rec.operation, 1 if rec.stream else 0,
        rec.status, names[rec.key_name], len(attempts),
        ts, rid, rec.latency_ms, NULL if ttft is None else ttft, u.prompt_tokens,
        u.completion_tokens, rec.cost, attempt_ms, attempt_ttft,
    )  # fmt: skip
    # The columns at their defaults in most rows go only when they are not (DEFAULTS);
    # the session last of all (a log written before revision 0008 has no column for it).
    session = rec.session
    if (
        rec.hedges or u.reasoning_tokens or u.cached_tokens or u.cache_write_tokens
        or rec.error is not None or rec.output_error is not None or session is not None
    ):  # fmt: skip
        record += (
            rec.hedges, u.reasoning_tokens, u.cached_tokens, u.cache_write_tokens,
            names[rec.error], names[rec.output_error],
        )  # fmt: skip
        if session is not None:
            if len(session) > MAX_TEXT or not session.isascii() or "\x00" in session:
                session = _text(session)  # a client's header: made storable
            record += (session,)
    return record


def _attempt_rows(
    ts: float, rid: str, attempts: list[AttemptRecord], names: dict[str | None, Any]
) -> tuple[Row, ...]:
    rows: list[Row] = []
    tails = False
    for a in attempts:  # a loop, not a comprehension: no function object per record
        # An attempt's route is its own: a fallback route's attempts differ from the
        # request's.
        rows.append((
            ts, rid, names[a.route], names[a.endpoint], NULL if a.status is None else a.status,
            a.duration_ms, NULL if a.ttft_ms is None else a.ttft_ms,
        ))  # fmt: skip
        if a.reason is not None or a.hedged:
            tails = True
    if tails:  # all or none: a request's attempts share a width, and so stay in order
        rows = [
            (*row, names[a.reason], 1 if a.hedged else 0)
            for row, a in zip(rows, attempts, strict=True)
        ]
    return tuple(rows)


def learn_names(rec: RequestRecord, names: dict[str | None, Any]) -> None:
    """Add ``rec``'s names to ``names``, which starts over when full (it is a cache)."""
    if len(names) >= MAX_NAMES:
        names.clear()
    names[None] = NULL
    attempts = [name for a in rec.attempts for name in (a.route, a.endpoint, a.reason)]
    for name in (rec.key_name, rec.route, rec.endpoint, rec.error, rec.output_error, *attempts):
        if name is not None:
            names[name] = _text(name)
