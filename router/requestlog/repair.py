"""Rows a database refused, made to fit its columns: the writer's last resort for one row.

The event loop builds rows without checking their values (``rows.entry``): a check per
value per request would cost every request for what almost never happens. A value a
column cannot hold (a token count past 2^63 - 1, a NaN where NULL is not allowed, text
no driver encodes) fails the whole batch instead; the writer then finds the row by
halving the batch (``RequestLog._isolate``) and asks ``clamp`` for a version of it that
fits. Integers are clamped to the column's range, a float that is not finite becomes
NULL or 0, text is made storable, anything else becomes NULL or the column's zero. What
still fails after that is dropped and counted: one row never stops the ones after it.
"""

from __future__ import annotations

import math
from typing import Any

from router.requestlog.rows import (
    ATTEMPT_COLUMNS,
    PG_TYPES,
    REQUEST_COLUMNS,
    REQUEST_SHARED,
    Record,
    Row,
)

# Columns that take NULL (NaN in a row); a test keeps these in step with ``schema.py``.
REQUEST_NULLABLE = frozenset(
    {
        "key_name",
        "route",
        "endpoint",
        "ttft_ms",
        "error",
        "output_error",
        "session",
        "attempt_duration_ms",
        "attempt_ttft_ms",
    }
)
ATTEMPT_NULLABLE = frozenset({"status", "reason", "ttft_ms"})

_INT_MAX = {"integer": 2**31 - 1, "bigint": 2**63 - 1}
_ZERO: dict[str, Any] = {
    "integer": 0, "bigint": 0, "float8": 0.0, "timestamptz": 0.0, "boolean": 0, "text": "",
}  # fmt: skip
MAX_TEXT = 1024
NULL = math.nan


def clamp(record: Record) -> Record:
    """``record`` with every value made to fit its column (see the module docstring)."""
    rows: tuple[Row, ...] = tuple(_fit(row, ATTEMPT_COLUMNS, ATTEMPT_NULLABLE) for row in record[0])
    own = _fit(record[1:], REQUEST_SHARED + REQUEST_COLUMNS, REQUEST_NULLABLE)
    return (rows, *own)


def _fit(values: tuple[Any, ...], columns: tuple[str, ...], nullable: frozenset[str]) -> Row:
    return tuple(
        _value(value, PG_TYPES[name], name in nullable)
        for value, name in zip(values, columns, strict=False)
    )


def _value(value: Any, kind: str, nullable: bool) -> Any:
    zero = _ZERO[kind]
    if isinstance(value, float) and not math.isfinite(value):
        return NULL if nullable else zero  # NaN is how rows say NULL
    if kind in _INT_MAX:
        if not isinstance(value, int | float):
            return NULL if nullable else zero
        top = _INT_MAX[kind]
        return max(-top - 1, min(top, int(value)))
    if kind == "boolean":
        return 1 if value is True or (isinstance(value, int | float) and value) else 0
    if kind == "text":
        if not isinstance(value, str):
            return NULL if nullable else zero
        return _text(value)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NULL if nullable else zero
    return float(value)


def _text(value: str) -> str:
    """Text every driver stores: no NUL (PostgreSQL), no lone surrogate (UTF-8)."""
    value = value[:MAX_TEXT].replace("\x00", "\ufffd")
    return value.encode("utf-8", "replace").decode("utf-8")
