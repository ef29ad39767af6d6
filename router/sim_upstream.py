"""``router sim-upstream``: the simulator behind a real socket, speaking OpenAI's API.

Tests, demos and benchmarks get a real HTTP upstream whose timing and faults are the
same ``Simulator`` the in-process ``simulated`` provider plays. ``POST /control`` with a
JSON object changes parameters while it runs (``{"ttft_ms": 1000}``); ``GET /stats``
says how many requests it has received.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from providers.simulated import Pacer, SimParams, Simulator, StreamEvents, error_json, full_body

SIMULATOR = web.AppKey("simulator", Simulator)


async def _serve(request: web.Request, operation: str) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    try:
        payload: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400, body=error_json(400), content_type="application/json")
    if not isinstance(payload, dict):
        return web.Response(status=400, body=error_json(400), content_type="application/json")
    plan = sim.plan(operation, payload)
    if plan.hang:
        await asyncio.Event().wait()
    if plan.status != 200:
        headers = {}
        if plan.retry_after_s is not None:
            headers["Retry-After"] = f"{plan.retry_after_s:g}"
        return web.Response(
            status=plan.status,
            body=error_json(plan.status),
            content_type="application/json",
            headers=headers,
        )
    if not payload.get("stream") or operation == "embeddings":
        delay = plan.ttft_s + plan.token_gap_s * len(plan.words)
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(
            body=full_body(operation, payload, plan), content_type="application/json"
        )
    events = StreamEvents(operation, payload, plan)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    head = events.head()
    if head:
        await resp.write(head)
    if plan.ttft_s > 0:
        await asyncio.sleep(plan.ttft_s)
    pacer = Pacer()
    for i in range(len(plan.words)):
        if plan.break_after is not None and i == plan.break_after:
            assert request.transport is not None
            request.transport.abort()  # drop the connection mid-stream, no terminator
            return resp
        if i:
            await pacer.wait(plan.token_gap_s)
        await resp.write(events.token(i))
    await resp.write(events.tail())
    return resp


async def chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "embeddings")


async def control(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object")
        sim.params.update(changes)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    return web.json_response({"received": sim.received})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model"}]})


def create_app(params: SimParams, name: str = "sim-upstream") -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[SIMULATOR] = Simulator(params, name)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", models)
    app.router.add_post("/control", control)
    app.router.add_get("/stats", stats)
    return app
