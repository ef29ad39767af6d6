"""The request log's retention: rows older than ``retention_days`` deleted about hourly.

A prune that fails (the database locked, down or too slow) is logged and tried again in a
minute; writes go on meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from router.requestlog.store import Store

PRUNE_EVERY_S = 3600.0
PRUNE_RETRY_S = 60.0


class Retention:
    """When the writer's next prune is due, and the prune itself."""

    def __init__(
        self,
        retention_days: float,
        *,
        log: Any,
        safe_url: str | None,
        redact: Callable[[BaseException], str],
    ) -> None:
        self._keep_s = retention_days * 86400.0
        self._next_prune = 0.0  # the first pass prunes
        self._log = log
        self._safe_url = safe_url
        self._redact = redact

    async def prune_if_due(self, store: Store) -> None:
        """Delete rows past retention; a failure is logged and retried later, not fatal."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        cutoff = time.time() - self._keep_s
        try:
            requests, attempts = await store.prune(cutoff)
        except Exception as exc:
            # Writes go on; a prune that failed (locked, down, too slow) comes back soon.
            self._next_prune = now + PRUNE_RETRY_S
            self._log.warning(
                "request_log.prune_failed",
                url=self._safe_url,
                error=type(exc).__name__,
                detail=self._redact(exc),
                retry_in_s=PRUNE_RETRY_S,
            )
            return
        if requests or attempts:
            self._log.info(
                "request_log.pruned",
                requests=requests,
                attempts=attempts,
                before=datetime.fromtimestamp(cutoff, UTC).isoformat(),
            )
