"""The traffic to replay, and what the fleet did with it: a JSONL file or a request log.

A trace is a list of requests (arrival time, route, API, stream flag, token counts,
optional session) and, when it comes from the router's request log, the upstream
attempts the router made for them: the evidence the fleet is fitted from
(``router.lab.fit``). A JSONL file carries requests only, so its fleet comes from the
config's ``simulated`` providers or the stated prior.

The request log is read through SQLAlchemy with the schema's own tables
(``router.requestlog.schema``): SQLite or PostgreSQL, read only, never migrated. Its
``attempts`` view holds one row per attempt whatever the revision's storage (0005 keeps a
request's one serving attempt in the request's own row).
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from sys import intern
from typing import Any

import orjson

# Client APIs (as the request log names them) and the one each replays through. Responses
# and Messages replay as chat: the ranking, retries and stats do not depend on the
# client's API shape, and the lab's hosts answer in OpenAI's.
REPLAYED_AS: Mapping[str, str] = {
    "chat": "chat",
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "chat",
    "messages": "chat",
}
DEFAULT_COMPLETION_TOKENS = 16  # the simulated provider's default answer length
DEFAULT_PROMPT_TOKENS = 100

# Attempt outcomes, as the fleet replays them.
OK = "ok"  # answered (a stream may still break later: Observation.broken)
HTTP = "http"  # a non-2xx status
HANG = "hang"  # no answer within the router's timeout: how long it would have taken is unknown
CONNECT = "connect"  # no connection
BROKEN = "broken"  # garbage or a stream cut before its first token
CENSORED = "censored"  # cancelled (a hedge lost, a client left): no verdict, not fitted

_REASONS: Mapping[str, str] = {
    "ttft_timeout": HANG,
    "total_timeout": HANG,
    "idle_timeout": HANG,
    "timeout": HANG,
    "connect": CONNECT,
    "connect_timeout": CONNECT,
    "bad_response": BROKEN,
    "stream_broken": BROKEN,
    "hedge_lost": CENSORED,
    "cancelled": CENSORED,
}
# A request that failed after its stream was committed: its serving attempt broke mid-way.
_MID_STREAM = frozenset({"stream_broken", "idle_timeout", "total_timeout"})


class TraceError(ValueError):
    """The trace cannot be read; the message says where and why."""


@dataclass(slots=True)
class TraceRequest:
    ts: float  # arrival, Unix seconds
    route: str
    api: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    session: str | None = None

    @property
    def replayed_as(self) -> str:
        return REPLAYED_AS.get(self.api, "chat")


@dataclass(slots=True)
class Observation:
    """One upstream attempt as the request log recorded it."""

    ts: float  # its request's arrival
    route: str
    endpoint: str
    stream: bool
    outcome: str
    status: int | None
    duration_s: float
    ttft_s: float | None = None
    tokens_per_s: float | None = None  # a served, single-attempt request's generation speed
    cached: bool = False  # served with cached prompt tokens
    cached_share: float = 0.0  # of its request's prompt tokens, those read from a cache
    cached_tokens: int = 0
    session: str | None = None  # its request's conversation (served attempts only)
    broken: bool = False  # served, then the stream broke


@dataclass
class Trace:
    source: str
    requests: list[TraceRequest]
    attempts: list[Observation] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        if not self.requests:
            return 0.0
        return self.requests[-1].ts - self.requests[0].ts


def is_database_url(source: str) -> bool:
    head = source.split(":", 1)[0]
    return "://" in source and head.split("+", 1)[0] in ("sqlite", "postgresql", "postgres")


def read(source: str, limit: int | None = None) -> Trace:
    """The trace at ``source`` (a database URL or a JSONL path), its first ``limit``
    requests if given, in arrival order."""
    if is_database_url(source):
        return asyncio.run(read_requestlog(source, limit))
    return read_jsonl(Path(source), limit)


# -- JSONL --------------------------------------------------------------------------


def _timestamp(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise TraceError(f"'ts' must be Unix seconds or an ISO 8601 time, got {value!r}")


def _count(obj: Mapping[str, Any], name: str, default: int | None) -> int:
    value = obj.get(name, default)
    if value is None:
        raise TraceError(f"missing field {name!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TraceError(f"{name!r} must be a whole number >= 0, got {value!r}")
    return value


def parse_line(obj: Any) -> TraceRequest:
    """One JSONL line's request; a TraceError says what is wrong with it (its reader says
    where). The usual line (plain numbers, a chat request) is checked inline: a day's trace
    is a million lines, and each helper call is a frame."""
    if not isinstance(obj, dict):
        raise TraceError("each line must be a JSON object")
    get = obj.get
    route = get("route")
    if type(route) is not str or not route:
        raise TraceError("'route' must be a non-empty string")
    api = get("api", "chat")
    if api not in REPLAYED_AS:
        raise TraceError(f"'api' must be one of {', '.join(REPLAYED_AS)}, got {api!r}")
    stream = get("stream", False)
    if type(stream) is not bool:
        raise TraceError("'stream' must be true or false")
    session = get("session")
    if session is not None:
        if not isinstance(session, str | int):
            raise TraceError("'session' must be a string")
        session = str(session)
    ts = get("ts")
    if type(ts) is not float or not math.isfinite(ts):
        ts = _timestamp(ts)
    prompt = get("prompt_tokens")
    if type(prompt) is not int or prompt < 0:
        prompt = _count(obj, "prompt_tokens", None)
    embeddings = api == "embeddings"
    completion = get("completion_tokens")
    if type(completion) is not int or completion < 0:
        completion = _count(obj, "completion_tokens", 0 if embeddings else None)
    cached = get("cached_tokens", 0)
    if type(cached) is not int or cached < 0:
        cached = _count(obj, "cached_tokens", 0)
    # Names interned: a million lines name a few routes, and each line's JSON gave it its
    # own copy of each name (100 MB of a day's trace, and as many objects freed at exit).
    # By position: a dataclass called with keywords gathers them in a dict.
    return TraceRequest(
        ts, intern(route), intern(api), stream and not embeddings, prompt, completion, cached,
        session,
    )  # fmt: skip


def read_jsonl(path: Path, limit: int | None = None) -> Trace:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    requests: list[TraceRequest] = []
    append, loads = requests.append, orjson.loads
    try:
        with fewer_collections():  # a million requests kept, and no cycle among them
            for n, line in enumerate(text.splitlines(), 1):  # noqa: B007  # n: for the error
                if line and not line.isspace():
                    append(parse_line(loads(line)))
    except orjson.JSONDecodeError as exc:
        raise TraceError(f"{path}:{n}: not JSON: {exc}") from exc
    except TraceError as exc:
        raise TraceError(f"{path}:{n}: {exc}") from None
    requests.sort(key=_arrival)  # stable: equal times keep the file's order
    if limit is not None:
        requests = requests[:limit]
    if not requests:
        raise TraceError(f"{path}: no requests")
    return Trace(str(path), requests)


_arrival = attrgetter("ts")


@contextmanager
def fewer_collections() -> Iterator[None]:
    """The garbage collector's young generation 70 times larger while the lab makes many
    objects and few cycles: otherwise it runs on every 700 objects kept, and walks the
    older ones ever more often (a third of a day's trace read, 0.9 s in 2.6)."""
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


# -- the request log ----------------------------------------------------------------


def _seconds(ts: Any) -> float:
    return ts.timestamp() if isinstance(ts, datetime) else float(ts)


async def read_requestlog(url: str, limit: int | None = None) -> Trace:
    """The routed requests of a request log and their attempts, oldest first."""
    import sqlalchemy as sa

    from router.requestlog.schema import ATTEMPTS, REQUESTS, make_engine

    try:
        engine = make_engine(url)
    except ValueError as exc:
        raise TraceError(str(exc)) from exc
    r = REQUESTS.c
    a = ATTEMPTS.c
    try:
        async with engine.connect() as conn:
            # A log written before revision 0008 has no sessions: they read as NULL.
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in sa.inspect(c).get_columns("requests")}
            )
            session = r.session if "session" in columns else sa.null().label("session")
            query = (
                sa.select(
                    r.ts, r.request_id, r.route, r.endpoint, r.operation, r.stream, r.status,
                    r.attempts, r.latency_ms, r.prompt_tokens, r.completion_tokens,
                    r.cached_tokens, r.error, session,
                )
                .where(r.route.is_not(None))
                .order_by(r.ts, r.id)
            )  # fmt: skip
            if limit is not None:
                query = query.limit(limit)
            rows = (await conn.execute(query)).all()
            if not rows:
                raise TraceError(f"{_safe(url)}: the request log holds no routed requests")
            last = rows[-1].ts
            attempt_query = (
                sa.select(
                    a.ts, a.request_id, a.route, a.endpoint, a.status, a.reason,
                    a.duration_ms, a.ttft_ms,
                )
                .where(a.ts <= last)
                .order_by(a.ts, a.id)
            )  # fmt: skip
            attempt_rows = (await conn.execute(attempt_query)).all()
    except sa.exc.SQLAlchemyError as exc:
        raise TraceError(f"{_safe(url)}: cannot read the request log: {exc}") from exc
    finally:
        await engine.dispose()
    return _assemble(_safe(url), rows, attempt_rows)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find either
        return url.split("@")[-1]


def _assemble(source: str, rows: Iterable[Any], attempt_rows: Iterable[Any]) -> Trace:
    by_id: dict[tuple[str, float], Any] = {}
    requests: list[TraceRequest] = []
    served_tokens: dict[str, list[int]] = {}
    prompt_tokens: dict[str, list[int]] = {}
    for row in rows:
        ts = _seconds(row.ts)
        by_id[(row.request_id, ts)] = row
        if row.status == 200 and row.completion_tokens:
            served_tokens.setdefault(row.route, []).append(row.completion_tokens)
        if row.prompt_tokens:
            prompt_tokens.setdefault(row.route, []).append(row.prompt_tokens)
    # A failed request recorded no usage: it replays with its route's median lengths.
    median_out = {k: int(statistics.median(v)) for k, v in served_tokens.items()}
    median_in = {k: int(statistics.median(v)) for k, v in prompt_tokens.items()}
    for row in by_id.values():
        api = row.operation if row.operation in REPLAYED_AS else "chat"
        requests.append(
            TraceRequest(
                ts=_seconds(row.ts),
                route=row.route,
                api=api,
                stream=bool(row.stream),
                prompt_tokens=row.prompt_tokens or median_in.get(row.route, DEFAULT_PROMPT_TOKENS),
                completion_tokens=row.completion_tokens
                or (0 if api == "embeddings" else median_out.get(row.route, 16)),
                cached_tokens=row.cached_tokens or 0,
                session=row.session,
            )
        )
    attempts: list[Observation] = []
    single: dict[tuple[str, float], Observation] = {}
    counts: dict[tuple[str, float], int] = {}
    for att in attempt_rows:
        key = (att.request_id, _seconds(att.ts))
        req = by_id.get(key)
        if req is None:
            continue  # a request left out (no route, or past the limit)
        obs = _observation(att, req)
        attempts.append(obs)
        counts[key] = counts.get(key, 0) + 1
        if obs.outcome == OK:
            single[key] = obs
    for key, obs in single.items():
        req = by_id[key]
        if counts[key] == 1 and req.stream and obs.ttft_s is not None and req.completion_tokens:
            generation = req.latency_ms / 1000.0 - obs.ttft_s
            if generation > 0.0:
                obs.tokens_per_s = req.completion_tokens / generation
        obs.cached = bool(req.cached_tokens)
        obs.cached_tokens = req.cached_tokens or 0
        obs.session = req.session
        if req.cached_tokens and req.prompt_tokens:
            obs.cached_share = min(1.0, req.cached_tokens / req.prompt_tokens)
        obs.broken = req.status != 200 and req.error in _MID_STREAM
    return Trace(source, requests, attempts)


def _observation(att: Any, req: Any) -> Observation:
    reason = att.reason
    if reason is None:
        outcome = OK
    elif att.status is not None and reason not in _REASONS:
        outcome = HTTP  # http_429, http_5xx, auth, http_4xx
    else:
        outcome = _REASONS.get(reason, BROKEN)
    return Observation(
        ts=_seconds(att.ts),
        route=att.route,
        endpoint=att.endpoint,
        stream=bool(req.stream),
        outcome=outcome,
        status=att.status,
        duration_s=(att.duration_ms or 0.0) / 1000.0,
        ttft_s=None if att.ttft_ms is None else att.ttft_ms / 1000.0,
    )
