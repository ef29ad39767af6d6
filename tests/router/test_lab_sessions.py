"""Conversations in the lab: each request's session read from the request log (revision
0008; a log written before it has none), and what a prompt-cache hit saves, fitted."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from pathlib import Path

import pytest

from router.lab.fit import Fleet
from router.lab.trace import OK, Observation, Trace, TraceRequest, read
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


def test_the_fit_learns_what_a_cache_hit_saves_and_undoes_it_in_the_ttft() -> None:
    """A host whose hits (90% of the prompt cached) come back at the simulator's law,
    TTFT x (1 - 0.9 x (1 - 0.3)): the fit finds the factor 0.3 and keeps the TTFT of a
    miss, which the lab shortens again for the requests it replays as hits (not twice)."""
    rng = random.Random(3)
    requests, attempts = [], []
    for i in range(400):
        ttft = 0.3 * (1 + 0.1 * rng.random())  # a miss, 300 to 330 ms
        hit = i % 4 != 0
        if hit:
            ttft *= 1 - 0.9 * (1 - 0.3)
        requests.append(TraceRequest(NOW + i, "agent", "chat", True, 10_000, 20))
        attempts.append(
            Observation(NOW + i, "agent", "h", True, OK, 200, ttft + 0.1, ttft,
                        cached=hit, cached_share=0.9 if hit else 0.0)
        )  # fmt: skip
    fitted = Fleet(Trace("t", requests, attempts), 0).behaviour("agent", "h")
    assert fitted.cache is not None
    assert fitted.cache.ttft_factor == pytest.approx(0.3, abs=0.03)
    ttft = fitted.buckets[0].ttft
    assert ttft is not None and ttft.quantile(0.05) >= 0.29 and ttft.quantile(0.95) <= 0.34


def test_a_host_tried_too_little_to_tell_caches_as_its_route_does() -> None:
    """One uncached answer says nothing about a host's cache: it takes its route's."""
    requests = [TraceRequest(NOW + i, "agent", "chat", True, 10_000, 20) for i in range(60)]
    attempts = [
        Observation(NOW + i, "agent", "h", True, OK, 200, 0.2, 0.1 if i % 3 else 0.3,
                    cached=i % 3 != 0, cached_share=0.9 if i % 3 else 0.0)
        for i in range(59)
    ] + [Observation(NOW + 59, "agent", "rare", True, OK, 200, 0.5, 0.4)]  # fmt: skip
    fleet = Fleet(Trace("t", requests, attempts), 0)
    rare = fleet.behaviour("agent", "rare")
    assert rare.cache is not None and rare.cache.ttft_factor < 0.5


SHARED_CONFIG = """
providers:
  h: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  agent:
    policy: round_robin
    endpoints:
      - {provider: h, model: m}
"""


def _first_turns(cached: int) -> Trace:
    """60 conversations seen once each on host ``h``, every one after the first reading
    ``cached`` tokens of its 3,000 from cache: the tools and system prompt they share."""
    requests, attempts = [], []
    for i in range(60):
        hit = cached if i else 0
        requests.append(TraceRequest(NOW + i, "agent", "chat", True, 3000, 20, hit, f"c{i}"))
        obs = Observation(NOW + i, "agent", "h", True, OK, 200, 0.2, 0.1 if hit else 0.2,
                          cached=bool(hit), cached_share=hit / 3000)  # fmt: skip
        obs.cached_tokens, obs.session = hit, f"c{i}"
        attempts.append(obs)
    return Trace("t", requests, attempts)


def test_a_prefix_every_conversation_shares_is_fitted_and_replayed_as_cached() -> None:
    """First turns that read 2,000 tokens from cache tell of a prefix common to the
    conversations; the lab serves it from cache to a new conversation on a warm host
    (its own prefix is not there yet), so the replay's cache-hit rate is the log's."""
    from router.config import loads
    from router.lab.engine import simulate_config
    from router.lab.figures import summarise

    trace = _first_turns(2000)
    assert Fleet(trace, 0).behaviour("agent", "h").shared_prefix_tokens == 2000
    assert Fleet(_first_turns(0), 0).behaviour("agent", "h").shared_prefix_tokens == 0

    summary = summarise(simulate_config(loads(SHARED_CONFIG, env={}), trace, seed=0), "a")
    recorded = sum(r.cached_tokens for r in trace.requests) / (3000 * 60)
    assert summary["cache_hit_rate"] == pytest.approx(recorded, abs=0.01)
    assert summary["fleet"]["agent/h"]["shared_prefix_tokens"] == 2000


def test_a_host_left_after_it_slowed_down_stays_slow_in_the_fit() -> None:
    """The recorded policy sent ``fast`` five slow answers' worth and then left it: after
    that the fit keeps it as it was last seen, not as the fast host it had been before
    (which borrowing from earlier buckets would bring back)."""
    requests = [TraceRequest(NOW + i, "chat", "chat", True, 100, 20) for i in range(600)]
    attempts = [
        Observation(NOW + i, "chat", "fast", True, OK, 200, 0.05, ttft_s=0.05) for i in range(300)
    ]
    attempts += [
        Observation(NOW + i, "chat", "fast", True, OK, 200, 0.5, ttft_s=0.5)
        for i in range(300, 305)
    ]
    attempts += [
        Observation(NOW + i, "chat", "other", True, OK, 200, 0.1, ttft_s=0.1)
        for i in range(305, 600)
    ]
    fast = Fleet(Trace("left", requests, attempts), seed=1).behaviour("chat", "fast")
    early = [fast.answer(NOW + 100, True, 20, False).first_s for _ in range(50)]
    late = [fast.answer(NOW + 500, True, 20, False).first_s for _ in range(50)]
    assert max(early) == pytest.approx(0.05)
    assert min(late) == pytest.approx(0.5)


def test_the_cache_factor_is_read_through_a_hosts_jitter_and_slow_spells() -> None:
    """Most answers are hits (95% cached), a few are not (20%, 80%), each TTFT with
    log-normal jitter as the simulator plays it, and one in a hundred is fifteen times
    slower (the host's slow spell inside a fast time bucket): the fit reads the factor
    0.3 where a straight line through the ratios reads 0.36 (and 0.22 on a real run)."""
    rng = random.Random(11)
    requests, attempts = [], []
    for i in range(1200):
        share = 0.2 if i % 20 == 0 else 0.8 if i % 20 == 1 else 0.95
        ttft = 0.08 * math.exp(rng.gauss(0.0, 0.1)) * (1 - share * (1 - 0.3))
        if i % 100 == 7:
            ttft *= 15
        requests.append(TraceRequest(NOW + i / 100, "agent", "chat", True, 10_000, 20))
        attempts.append(
            Observation(NOW + i / 100, "agent", "h", True, OK, 200, ttft + 0.1, ttft,
                        cached=True, cached_share=share)
        )  # fmt: skip
    fitted = Fleet(Trace("t", requests, attempts), 0).behaviour("agent", "h")
    assert fitted.cache is not None
    assert fitted.cache.ttft_factor == pytest.approx(0.3, abs=0.025)


def test_the_cache_factor_of_no_usable_answer_is_no_change() -> None:
    """TTFTs of 0 or less (a bad JSONL trace) leave nothing to fit: 1, not a crash."""
    from router.lab.fit import _factor

    assert _factor([0.2, 0.9, 0.95], [0.0, -1.0, 0.0]) == 1.0
