"""``router sim-upstream``: the simulator behind a real socket, speaking every client API.

Tests, demos and benchmarks get a real HTTP upstream whose timing, faults and shapes
(chat, completions, embeddings, Responses, Messages) are the same ``Simulator`` the
in-process ``simulated`` provider plays. ``POST /control`` with a
JSON object changes parameters while it runs (``{"ttft_ms": 1000}``); ``GET /stats``
says how many requests it has received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from providers.errors import StreamBroken
from providers.simulated import SimParams, Simulator, body, delay, error_json, play, script
from providers.simulated.core import Plan

SIMULATOR = web.AppKey("simulator", Simulator)


async def _serve(request: web.Request, operation: str) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    try:
        payload: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return web.Response(
            status=400, body=error_json(400, operation), content_type="application/json"
        )
    plan = sim.plan(operation, payload)
    if plan.status != 200:
        return await _refuse(plan)
    try:
        return await _answer(request, operation, payload, plan)
    finally:
        sim.done()


async def _refuse(plan: Plan) -> web.StreamResponse:
    if plan.hang:
        await asyncio.Event().wait()
    headers = {}
    if plan.retry_after_s is not None:
        headers["Retry-After"] = f"{plan.retry_after_s:g}"
    return web.Response(
        status=plan.status, body=plan.error, content_type="application/json", headers=headers
    )


async def _answer(
    request: web.Request, operation: str, payload: dict[str, Any], plan: Plan
) -> web.StreamResponse:
    if plan.hang:
        await asyncio.Event().wait()
    if not payload.get("stream") or operation == "embeddings":
        wait = delay(plan)
        if wait > 0:
            await asyncio.sleep(wait)
        return web.Response(body=body(operation, payload, plan), content_type="application/json")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        async for data in play(script(operation, payload, plan), plan):
            await resp.write(data)
    except StreamBroken:
        assert request.transport is not None
        request.transport.abort()  # drop the connection mid-stream, no terminator
    return resp


def _handler(operation: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _serve(request, operation)

    return handle


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
        for operation in ("chat/completions", "completions", "embeddings", "responses", "messages"):
            app.router.add_post(f"{prefix}/{operation}", _handler(operation))
        app.router.add_get(f"{prefix}/models", models)
    app.router.add_post("/control", control)
    app.router.add_get("/stats", stats)
    return app
