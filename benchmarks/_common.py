"""Small helpers shared by the benchmark scripts: limits, /proc readings, ports, waiting.

Linux-only readings (``/proc``) degrade to ``None`` elsewhere; the harness prints "-".
"""

from __future__ import annotations

import os
import resource
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def raise_nofile() -> None:
    """Raise the soft open-files limit to the hard one: soaks hold thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, 65536), hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``--workers`` children, a uvicorn's workers)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process tree, live children included (their cutime counts only
    once they are reaped, so each descendant is read directly)."""
    total = 0.0
    seen = False
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        seen = True
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total if seen else None


def sleeps(pid: int) -> int:
    """How many times a process tree went to sleep waiting (voluntary context switches):
    at one connection, each is a wait for the client, the upstream or Redis."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds spent busy (not idle or iowait) by every core since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def rss_mb(pid: int) -> float | None:
    """Summed VmRSS of a process tree, in MB."""
    total = 0
    seen = False
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        seen = True
                        break
        except OSError:
            continue
    return total / 1024.0 if seen else None


def wait_http(
    url: str, timeout_s: float, interval_s: float = 0.01, alive: Callable[[], bool] | None = None
) -> float | None:
    """Poll ``url`` until it answers 200; seconds it took, or None after ``timeout_s`` (or
    as soon as ``alive()`` says the server process has died)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if alive is not None and not alive():
            return None
        try:
            with _OPENER.open(url, timeout=1.0) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(interval_s)
    return None


def settled_rss_mb(pid: int, timeout_s: float = 5.0, step_s: float = 0.5) -> float | None:
    """RSS once it stops moving (background imports at start-up finish), or after
    ``timeout_s``."""
    last = rss_mb(pid)
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        time.sleep(step_s)
        now = rss_mb(pid)
        if now is None or last is None or abs(now - last) < 0.25:
            return now
        last = now
    return last


def wait_quiet(max_wait_s: float, below_cores: float = 0.3, window_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until the machine's other load falls under
    ``below_cores``; returns the load seen last, in cores."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        b0, t0 = machine_busy_seconds(), time.perf_counter()
        time.sleep(window_s)
        b1, t1 = machine_busy_seconds(), time.perf_counter()
        if b0 is None or b1 is None:
            return 0.0
        load = (b1 - b0) / (t1 - t0)
        if load < below_cores or time.perf_counter() >= deadline:
            return load
