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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from router.http.api import Api
from router.http.server import STALL_S, HttpServer
from router.obs import logs
from router.obs.workers import Workers
from router.requestlog.records import RequestRecord
from router.service import Service

if TYPE_CHECKING:
    from router.obs.series import SeriesBook

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

    await service.start_state()  # bounded: an unreachable Redis is retried by its breaker
    api = Api(service, debug=logs.level_from_env() <= 10)
    stop_request_log = _attach_extras(api, service)
    watcher = asyncio.get_running_loop().create_task(service.watch())
    workers = Workers.from_env()
    publisher = None
    if workers is not None:
        api.workers = workers
        publisher = asyncio.get_running_loop().create_task(_publish_worker(api))
    http = HttpServer(
        api.handle,
        stall_s=server.client_timeout_s if server else STALL_S,
        max_connections=server.max_connections if server else None,
    )
    await http.start(host, port, reuse_port=reuse_port)
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
    await http.shutdown(DRAIN_S)  # stops listening, lets handlers finish (up to DRAIN_S)
    watcher.cancel()
    await stop_request_log()  # after the handlers: their records are in it
    if publisher is not None:
        publisher.cancel()
        api.publish_worker()  # the last counts stay in the sum after this worker exits
    await service.aclose()
    log.info("stopped")
    logs.flush()
    return 0


async def _publish_worker(api: Api) -> None:
    """Under ``--workers``: this worker's snapshot, every INTERVAL_S when its counts or
    in-flight changed, else every HEARTBEAT_S (so that the others see it alive)."""
    from router.obs.workers import HEARTBEAT_S, INTERVAL_S

    seen: tuple[int, int] | None = None
    quiet = 0.0
    while True:
        await asyncio.sleep(INTERVAL_S)
        metrics = api.metrics
        now = (metrics.recorded if metrics else 0, api.service.in_flight)
        quiet += INTERVAL_S
        if now != seen or quiet >= HEARTBEAT_S:
            try:
                api.publish_worker()
            except OSError as exc:  # a full disk must not stop the worker
                log.warning("worker_snapshot_failed", error=str(exc))
            seen, quiet = now, 0.0


def _mark_reloads(service: Service, book: SeriesBook) -> None:
    """The page's series: the start's config and every reload marked, and the series of
    endpoints a reload removed dropped."""

    def reloaded(ok: bool) -> None:
        runtime = service.runtime
        book.reloaded(ok, runtime.config.version if ok and runtime else None, service.last_error)
        if ok and runtime is not None:
            book.keep_only(
                (r, e.id) for r, route in runtime.routes.items() for e in route.endpoints
            )

    book.reloaded(
        service.runtime is not None,
        service.config.version if service.config else None,
        service.last_error,
    )
    service.on_reload.append(reloaded)


def _attach_extras(api: Api, service: Service) -> Callable[[], Awaitable[None]]:
    """Metrics and the request log: sinks fed one record per request, off the hot path.

    The request log starts in the background once the service is listening, and the
    records of the first requests wait in a buffer until it is up, so start-up is not
    held back. Returns what stops it (flushing what it holds).
    """
    from router.obs.metrics import Metrics
    from router.obs.series import SeriesBook
    from router.page.data import PageData

    storage = service.config.storage if service.config else None
    early: list[RequestRecord] = []
    metrics = Metrics(lambda: service.runtime, None)
    book = SeriesBook()
    service.sinks += [metrics.record, book.record, early.append]
    service.on_reload.append(metrics.config_reload)
    api.metrics = metrics
    api.page = PageData(service, book)
    service.series = book
    _mark_reloads(service, book)

    async def start_request_log() -> None:
        if storage is None or not storage.url:
            service.sinks.remove(early.append)
            return
        # Imported in a thread: the loop keeps serving meanwhile. (The writer talks to the
        # driver; SQLAlchemy and Alembic stay out of this process, see requestlog/store.py.)
        module = await asyncio.to_thread(importlib.import_module, "router.requestlog.writer")
        requestlog = module.RequestLog.from_config(storage)
        metrics.requestlog = requestlog
        api.requestlog = requestlog
        service.requestlog = requestlog
        service.sinks[service.sinks.index(early.append)] = requestlog.record
        for record in early:
            requestlog.record(record)
        early.clear()
        await requestlog.start()  # migrates; returns within 10 s even if the database is down
        gc.freeze()  # the log's modules and connections are permanent: keep them out of GC scans

    starting = api.requestlog_starting = asyncio.get_running_loop().create_task(start_request_log())

    async def stop() -> None:
        if not starting.done():
            await asyncio.wait({starting}, timeout=15)
        if api.requestlog is not None:
            await api.requestlog.stop(timeout_s=10)

    return stop
