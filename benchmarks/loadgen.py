"""A closed-loop HTTP load generator for OpenAI-style chat completions, with TTFT.

Why it exists: a gateway benchmark is only as good as its client. General-purpose async
clients (aiohttp, httpx) spend more CPU per request than the gateways under test, and
most cannot say when the first *token* (not the first byte) arrived. This one speaks raw
HTTP/1.1 over asyncio protocols (uvloop when installed): each of ``--conns`` keep-alive
connections sends one pre-serialised request, waits for the whole answer, and sends the
next, for ``--duration`` seconds (or ``--requests`` in all). Answers are framed by
Content-Length or chunked transfer-encoding. For streams, SSE events are parsed only until
the first one whose ``choices[0].delta.content`` (or ``text``) is non-empty: that instant
is the time to first token (TTFT); the rest is only scanned for the final ``[DONE]``.

A request counts as ok when the status is 200 and, for streams, ``data: [DONE]`` ended it
(a stream cut short with an error event is an error). No request starts after
``--duration``; those in flight then are awaited (bounded by ``--timeout``) and counted,
so a gateway's CPU time divides by ``completed``. Requests/s is every answer over the
time until the last one came back (a slow target's drain is part of its run).

Output: one JSON object on stdout. ``loadgen_cpu_frac`` is this process's CPU time over
wall time: near 1.0 means the load generator itself was saturated.

Example::

    python benchmarks/loadgen.py --url http://127.0.0.1:8080 --mode stream --tokens 16 \\
        --conns 16 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import raise_nofile

_now = time.perf_counter

# parser states
_HEAD, _LENGTH, _SIZE, _DATA, _CRLF, _TRAILER, _EOF = range(7)


class Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight on it."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[float, float | None, int, bool, int]] | None = None
        self.t0 = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.fut is None:
            return  # nothing asked: stray bytes after an answer, ignore
        self.buf += data
        try:
            self._advance()
        except Exception as exc:  # a malformed answer: this connection is done for
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            if self.state == _EOF:
                self._finish()
            else:
                self._fail(exc or ConnectionResetError("closed by peer"))

    # -- one request ----------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[tuple[float, float | None, int, bool, int]]:
        assert self.transport is not None
        self.fut = asyncio.get_running_loop().create_future()
        self.state = _HEAD
        self.status = 0
        self.close_after = False
        self.remaining = 0
        self.ttft: float | None = None
        self.sse = bytearray()
        self.tail = b""
        self.stream_error = False
        self.nbytes = 0
        self.t0 = _now()
        self.transport.write(data)
        return self.fut

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        fut, self.fut = self.fut, None
        self.abort()
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _finish(self) -> None:
        t = _now()
        fut, self.fut = self.fut, None
        ok = self.status == 200
        if ok and self.stream:
            ok = b"[DONE]" in self.tail and not self.stream_error
        if self.close_after:
            self.abort()
        if fut is not None and not fut.done():
            ttft = None if self.ttft is None else self.ttft - self.t0
            fut.set_result((t - self.t0, ttft, self.status, ok, self.nbytes))

    def _advance(self) -> None:
        buf = self.buf
        while self.fut is not None:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(None, 2)[1])
                if 100 <= self.status < 200:
                    continue
                length = None
                chunked = False
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"transfer-encoding":
                        chunked = b"chunked" in v.lower()
                    elif k == b"connection":
                        self.close_after = b"close" in v.lower()
                if chunked:
                    self.state = _SIZE
                elif length is not None:
                    self.state, self.remaining = _LENGTH, length
                    if length == 0:
                        self._finish()
                        return
                else:
                    self.state = _EOF
            elif state in (_LENGTH, _DATA):
                if not buf:
                    return
                take = min(len(buf), self.remaining)
                if self.stream:
                    self._body(bytes(buf[:take]))
                else:
                    self.nbytes += take
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                if state == _LENGTH:
                    self._finish()
                    return
                self.state = _CRLF
            elif state == _CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _SIZE
            elif state == _SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.state, self.remaining = _DATA, size
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish()
                    return
            else:  # _EOF: the answer runs until the connection closes
                if buf:
                    self._body(bytes(buf))
                    buf.clear()
                return

    def _body(self, data: bytes) -> None:
        self.nbytes += len(data)
        if not self.stream:
            return
        self.tail = (self.tail + data)[-96:]
        if self.ttft is not None:
            if b'"error"' in data and b"stream_broken" in data:
                self.stream_error = True
            return
        sse = self.sse
        sse += data
        while True:
            end = sse.find(b"\n\n")
            if end < 0:
                return
            event = bytes(sse[:end])
            del sse[: end + 2]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if not payload or payload == b"[DONE]":
                    continue
                try:
                    obj = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if "error" in obj:
                    self.stream_error = True
                choices = obj.get("choices")
                if choices:
                    c0 = choices[0]
                    delta = c0.get("delta")
                    text = delta.get("content") if isinstance(delta, dict) else c0.get("text")
                    if text:
                        self.ttft = _now()
                        sse.clear()
                        return


def build_request(
    url: str, mode: str, tokens: int, model: str, headers: list[str], path: str | None
) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = path or (parts.path.rstrip("/") + "/v1/chat/completions")
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something about load balancing."}],
        "max_tokens": tokens,
    }
    if mode == "stream":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    raw = orjson.dumps(body)
    head = [
        f"POST {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Content-Length: {len(raw)}",
        *headers,
    ]
    return host, port, ("\r\n".join(head) + "\r\n\r\n").encode() + raw


def pct(sorted_xs: list[float], q: float) -> float | None:
    if not sorted_xs:
        return None
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stream = args.mode == "stream"
    host, port, request = build_request(
        args.url, args.mode, args.tokens, args.model, args.header, args.path
    )
    records: list[tuple[float, float, float | None, int, bool]] = []  # end, lat, ttft, status, ok
    failures: Counter[str] = Counter()
    budget = [args.requests if args.requests else -1]
    inflight: dict[int, Conn] = {}
    start = _now()
    deadline = start + args.duration if not args.requests else float("inf")

    async def connect() -> Conn:
        _, proto = await loop.create_connection(lambda: Conn(stream), host, port)
        return proto

    async def worker(i: int) -> None:
        if args.ramp_s:
            await asyncio.sleep(args.ramp_s * i / args.conns)
        conn: Conn | None = None
        while _now() < deadline and budget[0] != 0:
            if budget[0] > 0:
                budget[0] -= 1
            try:
                if conn is None or conn.closed:
                    conn = await asyncio.wait_for(connect(), args.timeout)
                fut = conn.send(request)
                inflight[i] = conn
                lat, ttft, status, ok, _ = await fut
                records.append((_now(), lat, ttft, status, ok))
            except Exception as exc:
                failures[type(exc).__name__] += 1
                records.append((_now(), _now() - (conn.t0 if conn else _now()), None, 0, False))
                if conn is not None:
                    conn.abort()
                conn = None
                await asyncio.sleep(0.01)  # a refused connection must not spin
            finally:
                inflight.pop(i, None)
        if conn is not None:
            conn.abort()

    async def watchdog() -> None:
        """One timer for all requests: cheaper than a timeout armed per request."""
        while True:
            await asyncio.sleep(0.25)
            now = _now()
            for conn in list(inflight.values()):
                if conn.fut is not None and now - conn.t0 > args.timeout:
                    conn._fail(TimeoutError("request timed out"))

    async def progress() -> None:
        last = 0
        while True:
            await asyncio.sleep(args.progress)
            n = len(records)
            errs = sum(1 for r in records[last:] if not r[4])
            ttfts = sorted(r[2] * 1000.0 for r in records[last:] if r[2] is not None)
            print(
                orjson.dumps(
                    {
                        "t": round(_now() - start, 1),
                        "done": n,
                        "new": n - last,
                        "new_errors": errs,
                        "in_flight": len(inflight),
                        "ttft_p50_ms": pct(ttfts, 0.5),
                        "ttft_p99_ms": pct(ttfts, 0.99),
                    }
                ).decode(),
                file=sys.stderr,
                flush=True,
            )
            last = n

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    dog = asyncio.create_task(watchdog())
    prog = asyncio.create_task(progress()) if args.progress else None
    await asyncio.gather(*(worker(i) for i in range(args.conns)))
    end = _now()
    dog.cancel()
    if prog:
        prog.cancel()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    # Closed loop: every answer counts, stragglers after the deadline included, over the
    # time until the last one came back (a slow target's drain is part of its cost).
    measured = [r for r in records if r[0] >= start + args.warmup]
    secs = max(end - start - args.warmup, 1e-9)
    ok = [r for r in measured if r[4]]
    lats = sorted(r[1] * 1000.0 for r in ok)
    ttfts = sorted(r[2] * 1000.0 for r in ok if r[2] is not None)
    statuses = Counter(str(r[3]) for r in measured if not r[4])

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "url": args.url,
        "mode": args.mode,
        "tokens": args.tokens,
        "conns": args.conns,
        "duration_s": round(secs, 3),
        "completed": len(records),
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "error_statuses": dict(statuses),
        "failures": dict(failures),
        "rps": round(len(measured) / secs, 1),
        "latency_ms": {
            "p50": ms(pct(lats, 0.5)),
            "p90": ms(pct(lats, 0.9)),
            "p99": ms(pct(lats, 0.99)),
            "max": ms(lats[-1] if lats else None),
            "mean": ms(sum(lats) / len(lats) if lats else None),
        },
        "ttft_ms": {
            "p50": ms(pct(ttfts, 0.5)),
            "p90": ms(pct(ttfts, 0.9)),
            "p99": ms(pct(ttfts, 0.99)),
        }
        if stream
        else None,
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_cpu_frac": round(cpu / max(end - start, 1e-9), 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="closed-loop load generator with TTFT")
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="base URL (no /v1)")
    ap.add_argument("--path", default=None, help="request path (default /v1/chat/completions)")
    ap.add_argument("--mode", choices=["nonstream", "stream"], default="nonstream")
    ap.add_argument("--tokens", type=int, default=16, help="max_tokens asked for")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--conns", type=int, default=16, help="connections = concurrency")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of load")
    ap.add_argument("--requests", type=int, default=0, help="stop after N requests instead")
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds left out of the figures")
    ap.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    ap.add_argument("--ramp-s", type=float, default=0.0, help="spread connection starts")
    ap.add_argument("--progress", type=float, default=0.0, help="stderr progress every S s")
    ap.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    raise_nofile()
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
    else:
        runner = asyncio.run
    result = runner(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
