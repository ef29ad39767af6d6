"""Running the service: one process, its signals, and a graceful exit.

SIGHUP reloads routes.yaml. SIGTERM and SIGINT stop accepting connections, let requests
and streams in flight finish (up to ``DRAIN_S``), flush what the request log holds, close
the provider pools, and exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from router import logs
from router.records import RequestRecord
from router.server import EXTRAS, create_app
from router.service import Service

DRAIN_S = 30.0
log = structlog.get_logger("router")


async def serve(
    config_path: str, host: str | None, port: int | None, *, reuse_port: bool = False
) -> int:
    logs.configure()
    service = Service(config_path)
    result = service.reload("start")
    config = service.config
    server = config.server if config else None
    host = host or (server.host if server else "127.0.0.1")
    port = port if port is not None else (server.port if server else 8080)
    if config is not None and not config.client_keys:
        env = config.server.api_keys_env
        where = f"{env} is unset or empty" if env else "server.api_keys_env is not set"
        log.warning("client_auth_off", detail=f"{where}: /v1 accepts any client")
    if not result.ok:
        log.error("serving_without_config", detail="fix routes.yaml; it reloads when saved")

    app = create_app(service, debug=logs.level_from_env() <= 10)
    _attach_extras(app, service)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=DRAIN_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=4096)
    await site.start()
    log.info("listening", url=f"http://{host}:{port}/v1", config=config_path)
    # Everything imported and built so far lives as long as the process: move it out of
    # the collector's way, so a full collection scans only what requests allocate.
    gc.freeze()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: service.reload("SIGHUP"))
    await stop.wait()
    log.info("draining", in_flight=service.in_flight)
    await runner.cleanup()
    log.info("stopped")
    logs.flush()
    return 0


def _attach_extras(app: web.Application, service: Service) -> None:
    """Metrics and the request log: sinks fed one record per request, off the hot path.

    The request log needs SQLAlchemy and Alembic, about a second of imports plus a
    migration: it starts in the background once the service is listening, and the records
    of the first requests wait in a buffer until it is up, so start-up is not held back.
    """
    from router.metrics import Metrics

    extras = app[EXTRAS]
    storage = service.config.storage if service.config else None
    early: list[RequestRecord] = []
    holder: dict[str, Any] = {}
    metrics = Metrics(lambda: service.runtime, None)
    service.sinks += [metrics.record, early.append]
    service.on_reload.append(metrics.config_reload)
    extras["metrics"] = metrics

    async def start_request_log() -> None:
        if storage is None or not storage.url:
            service.sinks.remove(early.append)
            return
        # Imported in a thread: SQLAlchemy and Alembic take a second, the loop keeps serving.
        module = await asyncio.to_thread(importlib.import_module, "router.requestlog")
        RequestLog = module.RequestLog

        requestlog = RequestLog.from_config(storage)
        metrics.requestlog = requestlog
        extras["requestlog"] = requestlog
        holder["log"] = requestlog
        service.sinks[service.sinks.index(early.append)] = requestlog.record
        for record in early:
            requestlog.record(record)
        early.clear()
        await requestlog.start()  # migrates; returns within 10 s even if the database is down
        gc.freeze()  # SQLAlchemy's object graph is permanent: keep it out of GC scans

    async def request_log(_: web.Application) -> AsyncIterator[None]:
        holder["task"] = extras["requestlog_starting"] = asyncio.get_running_loop().create_task(
            start_request_log()
        )
        yield
        task = holder["task"]
        if not task.done():
            await asyncio.wait({task}, timeout=15)
        if "log" in holder:
            await holder["log"].stop(timeout_s=10)  # after aiohttp drained the handlers: flush

    app.cleanup_ctx.append(request_log)
