"""State that replicas must agree on, behind one small interface.

What is shared: client keys' rate limits (rpm, tpm, concurrent) and budgets (USD per UTC
day and month), key-value bindings with a TTL (prompt-cache affinity's sessions), and hard
cooldowns of endpoints (an upstream's 401/403, a ``Retry-After``). What is not: live stats,
which stay per replica on purpose (as in Envoy, tower and Bifrost: a replica ranks on what
it saw itself, and sharing them would cost a round trip per answer for little gain).

Two implementations run the same code: ``MemoryState`` (one process, the default) and
``RedisState`` (``state.url_env`` set), where one admission is one pipelined round trip:
a Lua script checks and reserves every limit of the key and reads the request's binding
atomically, so N replicas together admit exactly what the limit says; far from its
limits, a key is admitted from a share the script reserved for the replica the same way
(``allowance.py``), without a round trip. Everything written
after an answer (token corrections, cost charges, concurrency releases, bindings,
cooldowns) is queued and written in batches off the request path.

Rate limits are GCRA (the generic cell rate algorithm, a token bucket held as one number,
the "theoretical arrival time"): a key may burst its whole per-minute allowance at once,
and the allowance comes back continuously, ``limit / 60`` per second, which is how
OpenAI's own ``x-ratelimit-reset-*`` headers describe theirs. Tokens are reserved on
admission from an estimate and corrected by the answer's usage (the bucket may go into
debt; the key then waits it out). Budgets are checked on admission and charged the actual
cost afterwards, so the in-flight requests of a key can overshoot its budget by their own
cost, never more.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Admission",
    "CooldownListener",
    "Quota",
    "SharedState",
    "Spend",
    "StateUnavailable",
    "budget_windows",
    "duration",
    "key_base",
    "make_state",
]

RATE_LIMITED = "rate_limit_exceeded"
BUDGET_EXCEEDED = "budget_exceeded"
PERIOD_S = 60.0  # rpm and tpm are per minute
# A concurrency slot of a replica that died mid-request frees itself after this long;
# the service passes the longest total_s of its routes (a request cannot outlive it).
DEFAULT_LEASE_S = 660.0

CooldownListener = Callable[[str, float, str], None]  # (scope, until as Unix time, reason)


class StateUnavailable(Exception):
    """The shared store cannot be reached and ``on_error: closed`` says not to guess."""


@dataclass(frozen=True, slots=True)
class Quota:
    """One client key's limits, as the store enforces them. ``None`` is no limit."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None
    day_usd: float | None = None
    month_usd: float | None = None

    @property
    def budgeted(self) -> bool:
        return self.day_usd is not None or self.month_usd is not None


def key_base(prefix: str, name: str) -> str:
    """The start of a client key's names in Redis: its name in braces, one hash slot."""
    return f"{prefix}{{{name}}}:"


def duration(seconds: float) -> str:
    """A span as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``6s``, ``1m30s``
    (in whole milliseconds: integer arithmetic, as this runs for every answer).
    ``scripts.SPAN`` is the same in Lua."""
    ms = int(seconds * 1000.0 + 0.5) if seconds > 0 else 0
    if ms < 1000:
        return f"{ms}ms"
    secs, frac = divmod(ms, 1000)
    text = f"{secs % 60}.{frac:03d}".rstrip("0").rstrip(".") + "s" if frac else f"{secs % 60}s"
    if secs < 60:
        return text
    minutes = secs // 60
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h{minutes}m" if hours else f"{minutes}m") + text


class Admission:
    """The verdict on one request, and what its settlement needs.

    A plain class whose defaults live on the class: one is made per request, and only
    what differs from the defaults is written (a dataclass's ``__init__`` writes all
    eleven fields every time).
    """

    admitted: bool = True
    code: str | None = None  # RATE_LIMITED or BUDGET_EXCEEDED when refused
    limit: str | None = None  # which one: rpm, tpm, concurrent, day, month
    retry_after_s: float = 0.0
    # OpenAI's x-ratelimit-* header lines for the key's rpm and tpm windows, each ending
    # in CRLF, as the answer carries them: only ever shown, so made whole where the
    # numbers are (Redis's script, or ``memory.window``), never taken apart again.
    rate: str = ""
    binding: str | None = None  # the value bound to the asked binding key, if any
    quota: Quota | None = None
    reserved: int = 0  # tokens reserved against tpm, corrected on settlement
    lease: str | None = None  # the concurrency slot held, released on settlement
    local: bool = False  # decided by the local fallback (the shared store unreachable)
    # Redis only: the allowance its script granted with this admission (``admit.py``),
    # and the allowance a request was admitted from without a round trip (``allowance.py``).
    granted: str | None = None
    allowance: Any = None

    def __init__(self, quota: Quota | None = None) -> None:
        if quota is not None:
            self.quota = quota

    def __repr__(self) -> str:
        return f"Admission({self.__dict__})"


@dataclass(frozen=True, slots=True)
class Spend:
    """A key's spend in the current UTC day and month, in USD."""

    day: float = 0.0
    month: float = 0.0


def budget_windows(now: float) -> tuple[str, float, str, float]:
    """(day id, its end, month id, its end) for Unix time ``now``; ends as Unix times.

    Budgets run on UTC calendar days and months, as providers' billing does.
    """
    t = datetime.fromtimestamp(now, UTC)
    start = t.replace(hour=0, minute=0, second=0, microsecond=0)
    next_day = start.timestamp() + 86400.0
    if t.month == 12:
        next_month = start.replace(year=t.year + 1, month=1, day=1)
    else:
        next_month = start.replace(month=t.month + 1, day=1)
    return t.strftime("%Y%m%d"), next_day, t.strftime("%Y%m"), next_month.timestamp()


class SharedState(abc.ABC):
    """The interface: one admission per request, everything else queued or rare.

    ``admit`` is the only call a request waits for, and only when its key has limits or
    it asks for a binding. The other writes (``settle``, ``bind``, ``unbind``, ``cool``)
    return at once; the implementation writes them in batches.
    """

    mode: str = "memory"
    clock: Callable[[], float]  # Unix time, set by each implementation

    def __init__(self) -> None:
        self.listeners: list[CooldownListener] = []
        self._cools: dict[str, tuple[float, str]] = {}  # scope -> (until, reason)

    @abc.abstractmethod
    async def admit(
        self, quota: Quota | None, tokens: int = 0, binding_key: str | None = None
    ) -> Admission:
        """Check and reserve every limit of ``quota`` (with ``tokens`` against tpm) and
        read ``binding_key``, in one step. Refused: nothing is reserved. Raises
        ``StateUnavailable`` only under ``on_error: closed``."""

    @abc.abstractmethod
    def settle(self, admission: Admission, tokens_used: int | None, cost_usd: float) -> None:
        """The request ended: correct its token reservation to ``tokens_used`` (None:
        unknown, the reservation stands), charge ``cost_usd`` to its budgets, free its
        concurrency slot."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """A binding's value, or None when unset or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: str, ttl_s: float) -> None:
        """Bind ``key`` to ``value`` for ``ttl_s`` seconds (written before returning)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Drop a binding (written before returning)."""

    @abc.abstractmethod
    def bind(self, key: str, value: str, ttl_s: float) -> None:
        """``set`` without waiting: queued, for the end of a request."""

    @abc.abstractmethod
    def unbind(self, key: str) -> None:
        """``delete`` without waiting: queued, for the end of a request."""

    @abc.abstractmethod
    def cool(self, scope: str, until: float, reason: str) -> None:
        """Put ``scope`` (an endpoint) aside until Unix time ``until`` on every replica.
        The caller has already done so locally; others hear of it through ``listeners``."""

    def cooldowns(self) -> dict[str, tuple[float, str]]:
        """The hard cooldowns known here and still running: scope -> (until, reason)."""
        now = self.clock()
        cools = self._cools
        for scope in [s for s, (until, _) in cools.items() if until <= now]:
            del cools[scope]
        return dict(cools)

    @abc.abstractmethod
    async def spent(self, names: Iterable[str]) -> dict[str, Spend]:
        """Each key's spend in the current day and month (for ``/admin/usage``)."""

    def watch_cooldowns(self, listener: CooldownListener) -> Callable[[], None]:
        """Call ``listener`` for cooldowns set by other replicas; returns the unsubscribe."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener) if listener in self.listeners else None

    def _announce(self, scope: str, until: float, reason: str) -> None:
        for listener in list(self.listeners):
            listener(scope, until, reason)

    async def start(self) -> None:  # noqa: B027 - optional: nothing to start in memory
        """Connect and start background work (a no-op in memory)."""

    async def aclose(self) -> None:  # noqa: B027 - optional: nothing to close in memory
        """Write what is queued (bounded in time) and disconnect."""

    def status(self) -> dict[str, Any]:
        """What ``/health`` shows about the store (never its URL: it may hold a password)."""
        return {"mode": self.mode}


def make_state(
    url: str | None,
    *,
    on_error: str = "open",
    prefix: str = "router:",
    timeout_s: float = 0.25,
    lease_s: float = DEFAULT_LEASE_S,
    allowances: bool = True,
) -> SharedState:
    """Redis when a URL is given, else this process's memory (redis is imported only then)."""
    if not url:
        from router.state.shared.memory import MemoryState

        return MemoryState()
    from router.state.shared.redis_store import RedisState

    return RedisState(
        url,
        on_error=on_error,
        prefix=prefix,
        timeout_s=timeout_s,
        lease_s=lease_s,
        allowances=allowances,
    )
