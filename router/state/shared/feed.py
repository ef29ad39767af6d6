"""Hard cooldowns from other replicas: Redis pub/sub, with the whole set read on subscribe.

A replica that sets a cooldown writes it into one hash and publishes it on a channel of
the same name (``RedisState.flush``); the others hear it within milliseconds. Pub/sub
forgets what was said while a subscriber was away, so every (re)subscription first reads
the hash whole: a replica that starts, or reconnects after an outage, still learns every
cooldown that is running. Expired entries are swept from the hash then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from router.state.clock import Clock

log = structlog.get_logger("router.state")
_FAILURES = (RedisError, OSError, TimeoutError, ValueError)
MAX_BACKOFF_S = 5.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def follow(
    client: Any,  # redis.asyncio.Redis
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
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(timeout_s * 4):
                await pubsub.subscribe(channel)
                known = await client.hgetall(channel)
            now = clock()
            expired = []
            for field, raw in known.items():
                until, reason = orjson.loads(raw)
                if until > now:
                    heard(_text(field), until, reason)
                else:
                    expired.append(field)
            if expired:
                async with asyncio.timeout(timeout_s):
                    await client.hdel(channel, *expired)
            backoff = 0.2
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is None or message.get("type") != "message":
                    continue
                origin, scope, until, reason = orjson.loads(message["data"])
                if origin != replica:
                    heard(scope, until, reason)
        except _FAILURES as exc:
            log.debug("state_feed_lost", error=type(exc).__name__)
        finally:
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(pubsub.aclose(), timeout_s)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
