"""The lab reads each request's session from the request log (revision 0008), and a log
written before it as one without sessions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from router.lab.trace import read
from router.requestlog.records import AttemptRecord, RequestRecord, Usage
from router.requestlog.writer import RequestLog

NOW = 1_750_000_000.0


def _record(i: int, session: str | None) -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{i}",
        operation="chat",
        key_name=None,
        route="agent",
        endpoint="fast",
        status=200,
        stream=True,
        started=NOW + i,
        latency_ms=300.0,
        ttft_ms=50.0,
        usage=Usage(prompt_tokens=2000 + i, completion_tokens=20, cached_tokens=1500),
        attempts=[AttemptRecord("agent", "fast", 200, None, 50.0, ttft_ms=50.0)],
        session=session,
    )


def _write(url: str, records: list[RequestRecord]) -> None:
    async def scenario() -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        for rec in records:
            log.record(rec)
        await log.stop()

    asyncio.run(scenario())


def test_sessions_come_back_from_the_request_log(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{db}"
    _write(url, [_record(0, "k:conv-1"), _record(1, None), _record(2, "k:conv-1")])
    trace = read(url)
    assert [r.session for r in trace.requests] == ["k:conv-1", None, "k:conv-1"]
    assert [r.cached_tokens for r in trace.requests] == [1500, 1500, 1500]
    assert len(trace.attempts) == 3

    # A log from before revision 0008: no column, no sessions, and still a trace.
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE requests DROP COLUMN session")
    assert [r.session for r in read(url).requests] == [None, None, None]
