"""Watching starting replicas closely: how soon a new replica serves.

A replica that starts (a rollout, a scale-up, a restart, a sleeping service woken by a request
that waits for it) serves once its first health check passes. The reconcile pass looks at
everything every 50 ms at best, so a check between passes would wait up to a pass for nothing.
:class:`Readiness` instead gives each starting replica a task of its own that checks it again
every few milliseconds until it is done (healthy, or given up on), without waiting for a pass.

Many replicas starting at once (a deploy of 100 services) share a budget: the interval grows
with the number watched (:data:`PER_WATCH` each, from :data:`FASTEST` to :data:`SLOWEST`), so
there are at most ``1 / PER_WATCH`` checks a second (500) however many start: with a cap at the
pass's 50 ms instead, 100 replicas starting took twice the engine CPU of checks once a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection

__all__ = ["FASTEST", "PER_WATCH", "SLOWEST", "Readiness"]

log = logging.getLogger("terrace.engine")

FASTEST = 0.002
"""Seconds between two checks of one replica when it is the only one starting (a check that
finds nothing listening yet costs the engine about 0.15 ms of CPU)."""
SLOWEST = 0.25
"""The longest interval (past 125 replicas starting, more than 500 checks a second)."""
PER_WATCH = 0.002
"""Seconds added to the interval per replica watched."""

Check = Callable[[], Awaitable[bool]]
"""One look at a replica: True once there is nothing more to watch for."""


class Readiness:
    """One task per starting replica, calling its check until it says it is done."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watching(self, replica_id: str) -> bool:
        return replica_id in self._tasks

    def watch(self, replica_id: str, check: Check) -> None:
        """Call ``check`` now and again every few ms until it returns True (or raises)."""
        if replica_id not in self._tasks:
            self._tasks[replica_id] = asyncio.create_task(self._until_done(replica_id, check))

    def keep_only(self, replica_ids: Collection[str]) -> None:
        """Stop watching every replica not in ``replica_ids`` (gone, or stopped)."""
        for replica_id in [r for r in self._tasks if r not in replica_ids]:
            self._tasks.pop(replica_id).cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def interval(self) -> float:
        return min(SLOWEST, max(FASTEST, PER_WATCH * len(self._tasks)))

    async def _until_done(self, replica_id: str, check: Check) -> None:
        try:
            while not await check():
                await asyncio.sleep(self.interval())
        except Exception:
            log.exception("checking whether %s is ready failed", replica_id)
        finally:
            with contextlib.suppress(KeyError):
                if self._tasks[replica_id] is asyncio.current_task():
                    del self._tasks[replica_id]
