"""Running the service: one process, its signals, and a graceful exit.

SIGHUP reloads routes.yaml. SIGTERM and SIGINT stop accepting connections, let requests
and streams in flight finish (up to ``DRAIN_S``), flush what the request log holds, close
the provider pools, and exit 0.
"""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from router import logs
from router.server import EXTRAS, create_app
from router.service import Service

DRAIN_S = 30.0
log = structlog.get_logger("router")


async def serve(config_path: str, host: str | None, port: int | None, *, reuse_port: bool = False) -> int:
    logs.configure()
    service = Service(config_path)
    result = service.reload("start")
    config = service.config
    server = config.server if config else None
    host = host or (server.host if server else "127.0.0.1")
    port = port if port is not None else (server.port if server else 8080)
    if config is not None and not config.client_keys:
        log.warning(
            "client_auth_off",
            detail=f"{config.server.api_keys_env} is unset or empty: /v1 accepts any client",
        )
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

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: service.reload("SIGHUP"))
    await stop.wait()
    log.info("draining", in_flight=service.in_flight)
    await runner.cleanup()
    log.info("stopped")
    return 0


def _attach_extras(app: web.Application, service: Service) -> None:
    """Metrics and the request log, when their modules are present."""
    extras = app[EXTRAS]
    _ = extras, service
