"""Health checks: the phase of every replica the runtime reports, as the engine sees it.

A replica is *starting* until its first health check passes (checked every few ms by
:class:`terrace.engine.readiness.Readiness`, so it serves as soon as it can), *healthy* while
its checks pass (once per ``check_interval``), *unhealthy* after :data:`UNHEALTHY_AFTER` failed
checks in a row or when it is not healthy ``startup_timeout`` after it started, and *exited*
once its processes are gone. A service without a probe is healthy while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from terrace.engine.desired import ServiceRun
from terrace.engine.readiness import Readiness
from terrace.engine.state import Phase, ServiceKey
from terrace.runtimes.base import Replica, Runtime

__all__ = ["UNHEALTHY_AFTER", "Health", "HealthChecks", "describe_exit"]

UNHEALTHY_AFTER = 3
"""Consecutive failed checks that make a healthy replica unhealthy."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited while the engine was not watching (status unknown)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if 128 < code < 160:  # a sandbox reports a signal as a shell does: 128 + the signal
        with contextlib.suppress(ValueError):
            return f"exited with status {code} ({signal.Signals(code - 128).name})"
    return f"exited with status {code}"


@dataclass(slots=True)
class Health:
    phase: Phase
    changed_at: float
    failures: int = 0
    checked_at: float = 0.0
    reason: str | None = None


class HealthChecks:
    """The engine's view of its replicas' health (see the module's docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        check_interval: float,
        startup_timeout: float,
        on_change: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self.check_interval = check_interval
        self.startup_timeout = startup_timeout
        self._on_change = on_change
        """Called when a starting replica gets healthy or is given up on between passes."""
        self._health: dict[str, Health] = {}
        self._readiness = Readiness()

    def get(self, replica_id: str) -> Health | None:
        return self._health.get(replica_id)

    def phase(self, replica_id: str) -> Phase:
        """Its phase (starting for a replica not looked at yet)."""
        health = self._health.get(replica_id)
        return Phase.STARTING if health is None else health.phase

    def unwatched(self, replica_id: str) -> bool:
        """Whether it is new, or starting with nobody checking it until the next pass."""
        health = self._health.get(replica_id)
        return health is None or (
            health.phase is Phase.STARTING and not self._readiness.watching(replica_id)
        )

    async def close(self) -> None:
        await self._readiness.close()

    async def check(
        self, replicas: list[Replica], runs: Mapping[ServiceKey, ServiceRun], now: float
    ) -> None:
        """Look at every replica the runtime reports (and forget the others)."""
        known = {r.id for r in replicas}
        self._health = {k: v for k, v in self._health.items() if k in known}
        checks = []
        running = set()
        for replica in replicas:
            health = self._health.get(replica.id)
            if health is None:
                health = self._health[replica.id] = Health(Phase.STARTING, now)
            if not replica.running:
                if health.phase is not Phase.EXITED:
                    _set(health, Phase.EXITED, now, describe_exit(replica.exit_code))
                continue
            running.add(replica.id)
            run = runs.get(ServiceKey(replica.workspace_id, replica.name))
            if run is None or health.phase is Phase.UNHEALTHY:
                continue
            if run.probe is None:
                if health.phase is Phase.STARTING:
                    _set(health, Phase.HEALTHY, now)
                continue
            if health.phase is Phase.STARTING:  # checked every few ms, not once a pass
                check = functools.partial(self._check_starting, replica, run, health)
                self._readiness.watch(replica.id, check)
                continue
            if health.phase is Phase.HEALTHY and now - health.checked_at < self.check_interval:
                continue
            checks.append(self._probe(replica, run, health, now))
        self._readiness.keep_only(running)
        await asyncio.gather(*checks)

    async def _check_starting(self, replica: Replica, run: ServiceRun, health: Health) -> bool:
        """One check of a starting replica between passes; a new pass once it is healthy (or
        given up on). True: nothing more to watch."""
        if health.phase is Phase.STARTING:
            await self._probe(replica, run, health, time.monotonic())
            if health.phase is Phase.STARTING:
                return False
        self._on_change()
        return True

    async def _probe(self, replica: Replica, run: ServiceRun, health: Health, now: float) -> None:
        assert run.probe is not None
        ok = await self.runtime.probe(replica.id, run.probe)
        health.checked_at = now
        if ok:
            health.failures = 0
            if health.phase is Phase.STARTING:
                _set(health, Phase.HEALTHY, now)
            return
        health.failures += 1
        if health.phase is Phase.HEALTHY and health.failures >= UNHEALTHY_AFTER:
            _set(
                health,
                Phase.UNHEALTHY,
                now,
                f"health check {run.probe.kind}:{run.probe.port}{run.probe.path} failed "
                f"{health.failures} times",
            )
        elif health.phase is Phase.STARTING and now - health.changed_at > self.startup_timeout:
            _set(
                health,
                Phase.UNHEALTHY,
                now,
                f"not healthy {self.startup_timeout:.0f} s after start",
            )


def _set(health: Health, phase: Phase, now: float, reason: str | None = None) -> None:
    health.phase, health.changed_at, health.reason = phase, now, reason
