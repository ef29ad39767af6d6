"""Hard cooldowns from other replicas: Redis pub/sub, with the whole set read on subscribe.

A replica that sets a cooldown writes it into one hash and publishes it on a channel of
the same name (``RedisState.flush``); the others hear it within milliseconds. Pub/sub
forgets what was said while a subscriber was away, so every (re)subscription first reads
the hash whole: a replica that starts, or reconnects after an outage, still learns every
cooldown that is running. Expired entries are swept from the hash then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import structlog

from router.state.clock import Clock
from router.state.shared.resp import RespClient, RespError, encode

log = structlog.get_logger("router.state")
_FAILURES = (RespError, OSError, TimeoutError, ValueError)
MAX_BACKOFF_S = 5.0


async def follow(
    client: RespClient,
    channel: str,
    replica: str,
    heard: Callable[[str, float, str], None],
    *,
    clock: Clock,
    timeout_s: float,
) -> None:
    """Runs until cancelled: ``heard(scope, until, reason)`` for every cooldown another
    replica sets (this replica's own messages, tagged ``replica``, are skipped)."""
    backoff = 0.2
    while True:
        try:
            async with asyncio.timeout(timeout_s * 4):
                messages = await client.subscribe(channel)
                known = await client.call(encode("HGETALL", channel))
            now = clock()
            expired = []
            for field, raw in zip(known[::2], known[1::2], strict=True):
                until, reason = orjson.loads(raw)
                if until > now:
                    heard(field.decode(), until, reason)
                else:
                    expired.append(field)
            if expired:
                async with asyncio.timeout(timeout_s):
                    await client.call(encode("HDEL", channel, *expired))
            backoff = 0.2
            while True:
                message = await messages.get()
                if isinstance(message, Exception):
                    raise message
                if message[0] != b"message":
                    continue
                origin, scope, until, reason = orjson.loads(message[2])
                if origin != replica:
                    heard(scope, until, reason)
        except _FAILURES as exc:
            log.debug("state_feed_lost", error=type(exc).__name__, detail=str(exc))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
