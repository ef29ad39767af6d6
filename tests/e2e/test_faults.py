"""Fault drills: the real router against real HTTP fake upstreams that fail on demand.

One router process serves every drill; each drill has its own route and its own fakes, so
breaker states and received counts never leak between drills. Timeouts are small (1 s) so
the file runs in seconds; waits are bounded polls, never fixed sleeps, and the only timing
assertions are the contract's own bounds (a ``Retry-After`` lower bound, the 1 s within
which a cancelled upstream sees its connection closed).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.support import (
    Behaviour,
    FakeUpstream,
    RouterProcess,
    chunk,
    free_port,
    garbage,
    hang_after_headers,
    hang_before_headers,
    ok_json,
    ok_stream,
    open_stream,
    reset_mid_stream,
    slow_tokens,
    status,
)

TTFT_S = 1.0

# Each drill's fakes, by name; a fake's text says who served.
FAKES = [
    "refused_b",
    "reset_a",
    "hang_a",
    "hang_b",
    "hah_a",
    "hah_b",
    "ra_sec",
    "ra_date",
    "ra_long",
    "ra2_a",
    "ra2_b",
    "br_a",
    "br_b",
    "gb_a",
    "gb_b",
    "tt_a",
    "tt_b",
    "dc_a",
    "hg_a",
    "hg_b",
    "hm_a",
    "hm_b",
    "hm_c",
    "hn_a",
    "hn_b",
    "hn_c",
    "fa_a",
    "fa_b",
    "fb_a",
    "ao_a",
    "ao_b",
    "au_a",
    "au_b",
    "c4_a",
    "c4_b",
    "mx_a",
    "mx_b",
    "id_a",
]

ROUTES = """
  refused: {endpoints: [{provider: dead, model: m}, {provider: refused_b, model: m}]}
  reset: {endpoints: [{provider: reset_a, model: m}]}
  hang: {endpoints: [{provider: hang_a, model: m}, {provider: hang_b, model: m}]}
  hang-after: {endpoints: [{provider: hah_a, model: m}, {provider: hah_b, model: m}]}
  ra-seconds: {endpoints: [{provider: ra_sec, model: m}]}
  ra-date: {endpoints: [{provider: ra_date, model: m}]}
  ra-long:
    timeouts: {total_s: 5}
    endpoints: [{provider: ra_long, model: m}]
  ra-two: {endpoints: [{provider: ra2_a, model: m}, {provider: ra2_b, model: m}]}
  breaker:
    breaker: {consecutive_failures: 3, cooldown_s: 2}
    endpoints: [{provider: br_a, model: m}, {provider: br_b, model: m}]
  garbage: {endpoints: [{provider: gb_a, model: m}, {provider: gb_b, model: m}]}
  ttft: {endpoints: [{provider: tt_a, model: m}, {provider: tt_b, model: m}]}
  disconnect: {endpoints: [{provider: dc_a, model: m}]}
  hedge:
    policy: hedge200
    timeouts: {ttft_s: 5}
    endpoints: [{provider: hg_a, model: m}, {provider: hg_b, model: m}]
  hedge-max1:
    policy: hedge-max1
    endpoints: [{provider: hm_a, model: m}, {provider: hm_b, model: m}, {provider: hm_c, model: m}]
  hedge-max2:
    policy: hedge-max2
    endpoints: [{provider: hn_a, model: m}, {provider: hn_b, model: m}, {provider: hn_c, model: m}]
  fall-a:
    fallbacks: [fall-b]
    endpoints: [{provider: fa_a, model: m}, {provider: fa_b, model: m}]
  fall-b: {endpoints: [{provider: fb_a, model: m}]}
  all-open:
    retry: {attempts: 2}
    breaker: {consecutive_failures: 1, cooldown_s: 60}
    endpoints: [{provider: ao_a, model: m}, {provider: ao_b, model: m}]
  auth: {endpoints: [{provider: au_a, model: m}, {provider: au_b, model: m}]}
  client4xx: {endpoints: [{provider: c4_a, model: m}, {provider: c4_b, model: m}]}
  mixed:
    retry: {attempts: 2}
    endpoints: [{provider: mx_a, model: m}, {provider: mx_b, model: m}]
  idle: {endpoints: [{provider: id_a, model: m}]}
"""

HEADER = f"""
storage: {{url: null}}
server: {{api_keys_env: null, admin_key_env: null}}
defaults:
  timeouts: {{connect_s: 1, ttft_s: {TTFT_S}, idle_s: 1, total_s: 10}}
  retry: {{attempts: 3, backoff_s: 0.01, backoff_max_s: 0.05}}
  breaker:
    {{consecutive_failures: 5, error_rate: 1.0, min_requests: 1000, window_s: 60, cooldown_s: 5}}
policies:
  hedge200: {{strategy: priority, hedge: {{after_ms: 200}}}}
  hedge-max1: {{strategy: priority, hedge: {{after_ms: 100, max_extra: 1}}}}
  hedge-max2: {{strategy: priority, hedge: {{after_ms: 100, max_extra: 2}}}}
"""

MESSAGES = [{"role": "user", "content": "hi"}]


class Drill:
    def __init__(self, router: RouterProcess, fakes: dict[str, FakeUpstream]) -> None:
        self.router = router
        self.fakes = fakes
        # No keep-alive: after a broken stream the router closes the connection (the
        # contract's SSE error event), and a pooled client could race that close.
        self.http = httpx.Client(
            base_url=router.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self.sdk = openai.OpenAI(
            base_url=router.base_url, api_key="unused", max_retries=0, timeout=30
        )

    def __getitem__(self, name: str) -> FakeUpstream:
        return self.fakes[name]

    def chat(self, model: str, **extra: Any) -> httpx.Response:
        return self.http.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}
        )

    def stream(self, model: str) -> tuple[httpx.Response, str]:
        """A streamed chat, read raw to its end: (response, body text)."""
        body = {"model": model, "messages": MESSAGES, "stream": True}
        with self.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            text = "".join(resp.iter_text())
        return resp, text

    def endpoint(self, route: str, endpoint_id: str) -> dict[str, Any]:
        health = self.router.health()
        for ep in health["routes"][route]["endpoints"]:
            if ep["id"] == endpoint_id:
                return ep  # type: ignore[no-any-return]
        raise KeyError(endpoint_id)

    def wait_endpoint(
        self,
        route: str,
        endpoint_id: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Poll /health until ``check`` holds for the endpoint; fail with the last view."""
        deadline = time.monotonic() + timeout
        while True:
            ep = self.endpoint(route, endpoint_id)
            if check(ep):
                return ep
            if time.monotonic() > deadline:
                raise AssertionError(f"{route}/{endpoint_id} never satisfied the check: {ep}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    with ExitStack() as stack:
        fakes = {n: stack.enter_context(FakeUpstream(text=f"served by {n}")) for n in FAKES}
        providers = "".join(
            f"  {n}: {{kind: openai, base_url: {f.base_url}}}\n" for n, f in fakes.items()
        )
        # Nothing listens on a fresh free port: connections to it are refused.
        providers += f"  dead: {{kind: openai, base_url: http://127.0.0.1:{free_port()}/v1}}\n"
        tmp = tmp_path_factory.mktemp("faults")
        (tmp / "routes.yaml").write_text(f"{HEADER}\nproviders:\n{providers}\nroutes:{ROUTES}")
        router = stack.enter_context(RouterProcess(tmp / "routes.yaml", tmp))
        d = Drill(router, fakes)
        stack.callback(d.sdk.close)
        stack.callback(d.http.close)
        yield d


# -- helpers -------------------------------------------------------------------------------


def data_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        lines = [ln[5:].lstrip() for ln in event.split("\n") if ln.startswith("data:")]
        if lines:
            out.append("\n".join(lines))
    return out


def stream_text(events: list[str]) -> str:
    parts = []
    for e in events:
        if e == "[DONE]":
            continue
        obj = json.loads(e)
        for choice in obj.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def error_events(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e)["error"] for e in events if e != "[DONE]" and "error" in json.loads(e)]


def scripted(*steps: Behaviour, arrivals: list[float] | None = None) -> Behaviour:
    """The n-th request gets the n-th behaviour (the last one repeats); arrivals are noted."""

    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        if arrivals is not None:
            arrivals.append(time.time())
        n = len(arrivals) if arrivals is not None else len(fake.received)
        return await steps[min(n, len(steps)) - 1](fake, request, body)

    return behaviour


def first_token_after(delay: float) -> Behaviour:
    """Headers at once, the first token only after ``delay``."""

    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        resp = await open_stream(request)
        await asyncio.sleep(delay)
        await resp.write(chunk(fake.text))
        await resp.write(chunk(finish="stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return behaviour


async def silent_after_first_token(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    resp = await open_stream(request)
    await resp.write(chunk("first "))
    await asyncio.sleep(3600)
    return resp


def gated(gate: threading.Event) -> Behaviour:
    """Answers OK once ``gate`` (a threading.Event) is set."""

    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        await asyncio.to_thread(gate.wait, 10.0)
        return await ok_json(fake, request, body)

    return behaviour


def assert_served(
    resp: httpx.Response, endpoint: str, attempts: int, route: str | None = None
) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-router-endpoint"] == endpoint
    assert resp.headers["x-router-attempts"] == str(attempts)
    if route is not None:
        assert resp.headers["x-router-route"] == route


# -- the drills ----------------------------------------------------------------------------


def test_connection_refused_fails_over_to_the_next_endpoint(drill: Drill) -> None:
    raw = drill.sdk.chat.completions.with_raw_response.create(model="refused", messages=MESSAGES)  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content == "served by refused_b"
    assert raw.headers["x-router-endpoint"] == "refused_b"
    assert raw.headers["x-router-attempts"] == "2"
    assert drill.endpoint("refused", "dead")["last_error"] == "connect"


def test_reset_after_the_first_token_ends_with_one_error_event(drill: Drill) -> None:
    drill["reset_a"].behaviour = reset_mid_stream
    resp, text = drill.stream("reset")
    assert resp.status_code == 200
    events = data_events(text)
    assert "partial" in stream_text(events[:-1])  # tokens went out before the break
    assert "[DONE]" not in events
    errors = error_events(events)
    assert len(errors) == 1
    assert json.loads(events[-1])["error"] == errors[0]
    assert errors[0]["type"] == "upstream_error"
    assert errors[0]["code"] == "stream_broken"
    assert errors[0]["message"]

    # The OpenAI SDK turns that event into an exception: the client cannot miss the break.
    with pytest.raises(openai.APIError, match="stream"):
        for _ in drill.sdk.chat.completions.create(
            model="reset",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ):
            pass

    drill["reset_a"].behaviour = ok_stream
    resp, text = drill.stream("reset")
    assert resp.status_code == 200
    assert data_events(text)[-1] == "[DONE]"
    assert stream_text(data_events(text)).split() == ["served", "by", "reset_a"]


def test_hang_before_headers_times_out_and_fails_over_then_504_when_all_hang(drill: Drill) -> None:
    drill["hang_a"].behaviour = hang_before_headers
    resp, text = drill.stream("hang")
    assert_served(resp, "hang_b", 2)
    assert stream_text(data_events(text)).split() == ["served", "by", "hang_b"]

    drill["hang_b"].behaviour = hang_before_headers
    resp = drill.chat("hang")
    assert resp.status_code == 504
    err = resp.json()["error"]
    assert err["code"] == "upstream_timeout"
    attempts = err["attempts"]
    assert len(attempts) == 3  # retry.attempts, walking the ranking and over from the top
    assert [a["endpoint"] for a in attempts] == ["hang_a", "hang_b", "hang_a"]
    for a in attempts:
        assert a["status"] is None
        assert "timeout" in a["reason"]
        assert a["duration_ms"] >= TTFT_S * 1000 - 1  # waited ttft_s, rounded to 0.1 ms


def test_hang_after_headers_without_a_token_fails_over_before_the_client_sees_a_byte(
    drill: Drill,
) -> None:
    drill["hah_a"].behaviour = hang_after_headers
    resp, text = drill.stream("hang-after")
    assert_served(resp, "hah_b", 2)
    events = data_events(text)
    assert events[-1] == "[DONE]"
    assert not error_events(events)
    assert stream_text(events).split() == ["served", "by", "hah_b"]
    roles = [e for e in events if e != "[DONE]" and '"role"' in e]
    assert len(roles) == 1  # hah_a's role chunk was held back, never sent


def test_429_retry_after_seconds_on_a_one_endpoint_route(drill: Drill) -> None:
    arrivals: list[float] = []
    drill["ra_sec"].behaviour = scripted(
        status(429, {"Retry-After": "1"}), ok_json, arrivals=arrivals
    )
    resp = drill.chat("ra-seconds")
    assert_served(resp, "ra_sec", 2)
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 1.0


def test_429_retry_after_http_date_on_a_one_endpoint_route(drill: Drill) -> None:
    arrivals: list[float] = []
    not_before: list[float] = []

    async def limited(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        when = formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
        not_before.append(parsedate_to_datetime(when).timestamp())
        return await status(429, {"Retry-After": when})(fake, request, body)

    drill["ra_date"].behaviour = scripted(limited, ok_json, arrivals=arrivals)
    resp = drill.chat("ra-date")
    assert_served(resp, "ra_date", 2)
    assert len(arrivals) == 2
    assert arrivals[1] >= not_before[0] - 0.01  # wall clocks: allow their granularity


def test_429_retry_after_beyond_total_s_answers_429_at_once(drill: Drill) -> None:
    drill["ra_long"].behaviour = status(429, {"Retry-After": "60"})
    started = time.monotonic()
    resp = drill.chat("ra-long")
    assert resp.status_code == 429  # the upstream's "not now", passed on: not a 502
    assert time.monotonic() - started < 5  # did not sleep until total_s only to fail then
    assert 55 <= int(resp.headers["Retry-After"]) <= 60
    err = resp.json()["error"]
    assert err["code"] == "upstream_rate_limited"
    assert [(a["endpoint"], a["status"], a["reason"]) for a in err["attempts"]] == [
        ("ra_long", 429, "http_429")
    ]
    assert len(drill["ra_long"].received) == 1
    view = drill.endpoint("ra-long", "ra_long")
    assert view["state"] == "cooldown"
    assert view["reason"] == "rate_limited"


def test_429_on_a_two_endpoint_route_fails_over_at_once(drill: Drill) -> None:
    drill["ra2_a"].behaviour = status(429, {"Retry-After": "30"})
    started = time.monotonic()
    resp = drill.chat("ra-two")
    assert_served(resp, "ra2_b", 2)
    assert time.monotonic() - started < 30  # did not wait out ra2_a's Retry-After
    assert len(drill["ra2_a"].received) == 1


def test_burst_of_500s_opens_the_breaker_then_half_open_probe_recovers(drill: Drill) -> None:
    bad = drill["br_a"]
    bad.behaviour = status(500)
    for _ in range(3):
        assert_served(drill.chat("breaker"), "br_b", 2)
    view = drill.endpoint("breaker", "br_a")
    assert view["state"] == "cooldown"
    assert view["reason"] and "http_5xx" in view["reason"]
    assert view["cooldown_until"] is not None
    assert len(bad.received) == 3

    for _ in range(3):
        assert_served(drill.chat("breaker"), "br_b", 1)
    assert len(bad.received) == 3  # no traffic while it cools down
    assert drill.endpoint("breaker", "br_a")["state"] == "cooldown"

    drill.wait_endpoint("breaker", "br_a", lambda e: e["state"] == "half_open", timeout=5)
    gate = threading.Event()
    bad.behaviour = gated(gate)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(drill.chat, "breaker")
        probing = drill.wait_endpoint("breaker", "br_a", lambda e: e["in_flight"] == 1)
        assert probing["state"] == "half_open"
        gate.set()
        resp = pending.result(timeout=10)
    assert_served(resp, "br_a", 1)
    assert len(bad.received) == 4
    view = drill.endpoint("breaker", "br_a")
    assert view["state"] == "healthy"
    assert view["reason"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_instead_of_json_or_sse_fails_over(drill: Drill, stream: bool) -> None:
    drill["gb_a"].behaviour = garbage
    before = len(drill["gb_a"].received)
    if stream:
        resp, text = drill.stream("garbage")
        events = data_events(text)
        assert events[-1] == "[DONE]"
        assert stream_text(events).split() == ["served", "by", "gb_b"]
    else:
        resp = drill.chat("garbage")
        assert resp.json()["choices"][0]["message"]["content"] == "served by gb_b"
    assert_served(resp, "gb_b", 2)
    assert len(drill["gb_a"].received) == before + 1


def test_ttft_timeout_then_success_elsewhere(drill: Drill) -> None:
    drill["tt_a"].behaviour = hang_before_headers
    raw = drill.sdk.chat.completions.with_raw_response.create(model="ttft", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "served by tt_b"
    assert raw.headers["x-router-endpoint"] == "tt_b"
    assert raw.headers["x-router-attempts"] == "2"
    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 5
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        lines = [
            r
            for r in drill.router.logs()
            if r.get("event") == "request" and r.get("request_id") == request_id
        ]
        time.sleep(0.02)
    assert lines, "no request log line"
    assert "tt_a:ttft_timeout" in json.dumps(lines[0])  # its own error class in the logs


def test_client_disconnect_cancels_the_upstream_and_frees_the_slot(drill: Drill) -> None:
    fake = drill["dc_a"]
    fake.behaviour = slow_tokens(0.1)
    body = {"model": "disconnect", "messages": MESSAGES, "stream": True}
    with drill.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        # Keep the iterator: dropping it early would already close the connection.
        texts = resp.iter_text()
        seen = ""
        while seen.count("data:") < 3:
            seen += next(texts)
        assert drill.endpoint("disconnect", "dc_a")["in_flight"] == 1
        assert not fake.disconnected.is_set()
    # Leaving the block closed the connection mid-stream.
    assert fake.disconnected.wait(1.0), "the upstream never saw its connection closed"
    drill.wait_endpoint("disconnect", "dc_a", lambda e: e["in_flight"] == 0)


def test_hedge_wins_on_the_second_endpoint_and_cancels_the_first(drill: Drill) -> None:
    slow, fast = drill["hg_a"], drill["hg_b"]
    slow.behaviour = first_token_after(2.0)
    started = time.monotonic()
    resp, text = drill.stream("hedge")
    elapsed = time.monotonic() - started
    assert_served(resp, "hg_b", 2)
    assert stream_text(data_events(text)).split() == ["served", "by", "hg_b"]
    assert elapsed < 2.0  # hg_a's first token would only come after 2 s
    assert slow.disconnected.wait(1.0), "the losing hedge was not cancelled"
    assert len(slow.received) == len(fast.received) == 1
    drill.wait_endpoint("hedge", "hg_a", lambda e: e["in_flight"] == 0)


@pytest.mark.parametrize(("route", "extra"), [("hedge-max1", 1), ("hedge-max2", 2)])
def test_hedge_max_extra_bounds_the_extra_requests(drill: Drill, route: str, extra: int) -> None:
    prefix = "hm" if extra == 1 else "hn"
    fakes = [drill[f"{prefix}_{x}"] for x in "abc"]
    for f in fakes:
        f.behaviour = first_token_after(0.6)
    resp, _ = drill.stream(route)
    assert_served(resp, f"{prefix}_a", 1 + extra)
    assert [len(f.received) for f in fakes] == [1] * (1 + extra) + [0] * (2 - extra)


def test_route_fallbacks_serve_when_every_endpoint_fails(drill: Drill) -> None:
    drill["fa_a"].behaviour = status(500)
    drill["fa_b"].behaviour = status(500)
    raw = drill.sdk.chat.completions.with_raw_response.create(model="fall-a", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "served by fb_a"
    assert raw.headers["x-router-route"] == "fall-b"
    assert raw.headers["x-router-endpoint"] == "fb_a"
    assert drill["fb_a"].received[0].body["model"] == "m"
    assert len(drill["fa_a"].received) + len(drill["fa_b"].received) == 3  # fall-a's retry.attempts


def test_route_with_every_endpoint_open_still_tries_the_one_due_first(drill: Drill) -> None:
    drill["ao_a"].behaviour = status(500)
    drill["ao_b"].behaviour = status(500)
    assert drill.chat("all-open").status_code == 502
    a, b = drill.endpoint("all-open", "ao_a"), drill.endpoint("all-open", "ao_b")
    assert a["state"] == b["state"] == "cooldown"
    assert a["cooldown_until"] < b["cooldown_until"]
    health = drill.router.health()
    assert health["routes"]["all-open"]["available"] == 0

    drill["ao_a"].behaviour = ok_json
    drill["ao_b"].behaviour = ok_json
    resp = drill.chat("all-open")
    assert_served(resp, "ao_a", 1)
    assert len(drill["ao_a"].received) == 2
    assert len(drill["ao_b"].received) == 1
    # That attempt was the probe: its success closed the breaker, so the route is ready.
    assert drill.endpoint("all-open", "ao_a")["state"] == "healthy"
    assert drill.endpoint("all-open", "ao_b")["state"] == "cooldown"
    assert drill.router.health()["routes"]["all-open"]["available"] == 1


def test_401_puts_the_endpoint_in_auth_cooldown_and_fails_over(drill: Drill) -> None:
    drill["au_a"].behaviour = status(401, message="invalid key")
    assert_served(drill.chat("auth"), "au_b", 2)
    view = drill.endpoint("auth", "au_a")
    assert view["state"] == "cooldown"
    assert view["reason"] == "auth"
    assert_served(drill.chat("auth"), "au_b", 1)  # a bad key is not tried again meanwhile
    assert len(drill["au_a"].received) == 1


def test_client_4xx_from_upstream_is_returned_as_is(drill: Drill) -> None:
    error = {
        "error": {
            "message": "max_tokens is too large",
            "type": "invalid_request_error",
            "code": "bad_max_tokens",
            "param": "max_tokens",
        }
    }

    async def reject(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        return web.json_response(error, status=400)

    drill["c4_a"].behaviour = reject
    resp = drill.chat("client4xx")
    assert resp.status_code == 400
    assert resp.json() == error
    assert resp.headers["x-router-attempts"] == "1"
    assert len(drill["c4_a"].received) == 1
    assert len(drill["c4_b"].received) == 0
    with pytest.raises(openai.BadRequestError) as info:
        drill.sdk.chat.completions.create(model="client4xx", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "bad_max_tokens"
    assert len(drill["c4_b"].received) == 0
    assert drill.endpoint("client4xx", "c4_a")["state"] == "healthy"


def test_mixed_failures_are_502_with_each_attempt_listed(drill: Drill) -> None:
    drill["mx_a"].behaviour = status(500)
    drill["mx_b"].behaviour = hang_before_headers
    resp = drill.chat("mixed")
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["code"] == "all_attempts_failed"
    first, second = err["attempts"]
    assert (first["endpoint"], first["status"], first["reason"]) == ("mx_a", 500, "http_5xx")
    assert (second["endpoint"], second["status"], second["reason"]) == (
        "mx_b",
        None,
        "ttft_timeout",
    )
    assert first["duration_ms"] >= 0
    assert second["duration_ms"] >= TTFT_S * 1000 - 1


def test_idle_timeout_mid_stream_ends_with_an_error_event(drill: Drill) -> None:
    fake = drill["id_a"]
    fake.behaviour = silent_after_first_token
    resp, text = drill.stream("idle")
    assert resp.status_code == 200
    events = data_events(text)
    assert "[DONE]" not in events
    assert stream_text(events[:-1]).strip() == "first"
    errors = error_events(events)
    assert len(errors) == 1 and json.loads(events[-1])["error"] == errors[0]
    assert errors[0]["code"] == "stream_broken"
    assert "idle" in errors[0]["message"]
    assert fake.disconnected.wait(1.0), "the silent upstream was not closed"
    drill.wait_endpoint("idle", "id_a", lambda e: e["in_flight"] == 0)
