"""The floor: a bare aiohttp pass-through proxy, no routing, no stats, no log.

Why it exists: it is the least a Python gateway can cost per request (one aiohttp server
hop plus one pooled aiohttp client hop), so the router's numbers are read as ratios to it,
measured in the same run on the same core. It forwards ``POST /v1/*`` bodies as bytes to
one upstream over a pooled keep-alive ``ClientSession`` and streams the answer's bytes
back as they arrive; it parses nothing.

Run: ``python benchmarks/bare_proxy.py --port 9002 --upstream http://127.0.0.1:9001``
"""

from __future__ import annotations

import argparse
import os
import sys

import aiohttp
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import raise_nofile

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    url = request.app[UPSTREAM] + request.rel_url.path_qs
    try:
        upstream = await session.post(url, data=body, headers=headers)
    except aiohttp.ClientError as exc:
        return web.json_response(
            {
                "error": {
                    "message": f"upstream: {type(exc).__name__}",
                    "type": "upstream_error",
                    "code": None,
                    "param": None,
                }
            },
            status=502,
        )
    async with upstream:
        ctype = upstream.headers.get("Content-Type", "application/json")
        if not ctype.startswith("text/event-stream"):
            data = await upstream.read()
            return web.Response(body=data, status=upstream.status, headers={"Content-Type": ctype})
        resp = web.StreamResponse(
            status=upstream.status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            while True:
                chunk = await upstream.content.readany()
                if not chunk:
                    break
                await resp.write(chunk)
        except aiohttp.ClientError:
            await resp.write(
                b'data: {"error": {"message": "stream broken", '
                b'"type": "upstream_error", "code": "stream_broken"}}\n\n'
            )
        await resp.write_eof()
        return resp


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(upstream: str, max_connections: int = 0) -> web.Application:
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=5)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/{tail:.*}", proxy)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", health)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description="bare aiohttp pass-through proxy (the floor)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9002)
    ap.add_argument("--upstream", default="http://127.0.0.1:9001")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    raise_nofile()
    if not args.no_uvloop:
        import uvloop

        uvloop.install()
    web.run_app(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        backlog=4096,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
