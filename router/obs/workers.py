"""``--workers N``: /metrics and /health describe the whole service, not one worker.

The kernel hands each connection to any worker, so a scrape reaches whichever one; on
its own, each would show its own counters (Prometheus reads the jumps between them as
counter resets). Each worker writes a snapshot of its metric samples and its health to
a file of its own in a directory the parent makes (``ROUTER_WORKERS_DIR``): every half
second when something changed, and at every scrape it answers. The answering worker
sums every worker's latest snapshot, its own included.

Why the sum never goes backwards between scrapes: a worker writes its snapshot before
any scrape reads it, and a later snapshot of a worker holds counts at least as large, so
each worker's part of a scrape is at least what any earlier scrape used. A worker that
has exited keeps its last file, so its counts stay in the sum. Other workers' parts lag
by up to the write interval. (prometheus-client's multiprocess mode does the same with
mmap files, at the cost of a file write per counter increment on the request path.)

Gauges are summed as well: in-flight counts and queue depths add up, and a one-hot state
gauge becomes the number of workers that see the endpoint in that state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

__all__ = ["CONTENT_TYPE_LATEST", "Workers", "merge_metrics", "snapshot_metrics"]

log = structlog.get_logger("router.workers")

DIR_ENV = "ROUTER_WORKERS_DIR"
INDEX_ENV = "ROUTER_WORKER_INDEX"
INTERVAL_S = 0.5
HEARTBEAT_S = 2.0
STALE_S = 5.0  # a worker silent this long is listed as unresponsive
_RANK = {"ok": 0, "degraded": 1, "down": 2}


class _Merged:
    """A collector yielding already merged families (a registry wants collectors)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def snapshot_metrics(registry: CollectorRegistry) -> list[Any]:
    """A worker's samples as plain lists: [name, doc, type, [[sample, labels, value]...]]."""
    return [
        [m.name, m.documentation, m.type, [[s.name, s.labels, s.value] for s in m.samples]]
        for m in registry.collect()
    ]


# Gauges that do not add up over workers (each worker's own view of one thing): averaged.
AVERAGED = frozenset(
    {
        "router_endpoint_score",
        "router_endpoint_load",
        "router_build_info",
        "python_info",
        "process_start_time_seconds",
        "process_max_fds",
    }
)


def merge_metrics(snapshots: Iterable[list[Any]]) -> bytes:
    """Prometheus text of the samples of every snapshot, summed by name and labels (the
    ``AVERAGED`` families averaged over the workers that have the sample)."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for snapshot in snapshots:
        for name, doc, type_, samples in snapshot:
            family = families.setdefault(name, (doc, type_, {}))
            values = family[2]
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                values[key] = values.get(key, 0.0) + value
                if name in AVERAGED:
                    seen[key] = seen.get(key, 0) + 1
    out = []
    for name, (doc, type_, values) in families.items():
        metric = Metric(name, doc, type_)
        for (sample, labels), value in values.items():
            n = seen.get((sample, labels), 1) if name in AVERAGED else 1
            metric.add_sample(sample, dict(labels), value / n)
        out.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(out))
    return generate_latest(registry)


class Workers:
    """This worker's side of the shared directory: writes its file, reads everyone's."""

    def __init__(self, directory: str | os.PathLike[str], index: int) -> None:
        self.dir = Path(directory)
        self.index = index
        self.path = self.dir / f"worker-{index}-{os.getpid()}.json"
        self.pid = os.getpid()

    @classmethod
    def from_env(cls) -> Workers | None:
        directory = os.environ.get(DIR_ENV)
        if not directory:
            return None
        return cls(directory, int(os.environ.get(INDEX_ENV, "0")))

    def write(self, metrics: list[Any], health: dict[str, Any]) -> None:
        """Replace this worker's file in one rename: a reader sees the old or the new."""
        body = orjson.dumps(
            {"index": self.index, "pid": self.pid, "at": time.time(), "metrics": metrics, **health}
        )
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, self.path)

    def read(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob("worker-*.json")):
            try:
                out.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError) as exc:  # gone or half-made: skip it
                log.debug("worker_snapshot_unreadable", path=path.name, error=type(exc).__name__)
        return out

    def health(self, own: dict[str, Any], snapshots: list[dict[str, Any]]) -> dict[str, Any]:
        """``own`` (this worker's /health body) with every worker listed, and the service's
        status: the worst of the workers that are alive."""
        now = time.time()
        workers = []
        worst = _RANK.get(own["status"], 2)
        for snap in snapshots:
            if not _alive(snap["pid"]):
                state, rank = "exited", 1  # serving goes on, with less capacity
            elif now - snap["at"] >= STALE_S:
                state, rank = "unresponsive", 1
            else:
                state = snap["status"]
                rank = _RANK.get(state, 2)
            worst = max(worst, rank)
            workers.append(
                {
                    "index": snap["index"],
                    "pid": snap["pid"],
                    "status": state,
                    "in_flight": snap.get("in_flight"),
                    "config_version": snap.get("config_version"),
                    "last_error": snap.get("last_error"),
                    "updated_s_ago": round(now - snap["at"], 3),
                }
            )
        status = next(name for name, rank in _RANK.items() if rank == worst)
        return {**own, "status": status, "workers": workers}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
