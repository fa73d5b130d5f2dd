"""Which ``sleepAfter`` services sleep (pure: the engine feeds it times and counts).

A service sleeps once it has had no request for its ``sleepAfter`` (public requests, as the
router's idle times tell, and calls by name from its landscape, as the runtime's connection
counts tell) and has been awake at least that long. A sleeping service is desired with 0
replicas; :meth:`Sleepers.wake` makes it desired again. Kept in the engine's memory only: a
restarted engine starts with every service awake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from terrace.engine.state import DesiredService, ServiceKey

__all__ = ["Sleepers"]


class Sleepers:
    def __init__(self) -> None:
        self.asleep: set[ServiceKey] = set()
        self._awake_since: dict[ServiceKey, float] = {}
        self._used_at: dict[ServiceKey, float] = {}
        self._connections: dict[ServiceKey, int] = {}

    def wanted(self, desired: DesiredService) -> DesiredService:
        """``desired``, with no replica while the service sleeps."""
        return replace(desired, replicas=0) if desired.key in self.asleep else desired

    def wake(self, key: ServiceKey, now: float) -> bool:
        """Wake ``key``; whether it was asleep."""
        if key not in self.asleep:
            return False
        self.asleep.discard(key)
        self._awake_since[key] = now
        return True

    def forget_all_but(self, sleepy: Mapping[ServiceKey, float]) -> None:
        """Only services that (still) have ``sleepAfter`` may sleep."""
        self.asleep &= set(sleepy)

    def count_connections(self, key: ServiceKey, count: int, now: float) -> None:
        """The runtime's count of connections by name to ``key``: a change means use."""
        if self._connections.get(key) not in (None, count):
            self._used_at[key] = now
        self._connections[key] = count

    def fall_asleep(
        self, sleepy: Mapping[ServiceKey, float], idle: Mapping[ServiceKey, float], now: float
    ) -> list[ServiceKey]:
        """Put to sleep each of ``sleepy`` (key -> its ``sleepAfter``) unused for that long;
        the ones that just fell asleep."""
        fallen = []
        for key, after in sleepy.items():
            awake_for = now - self._awake_since.setdefault(key, now)
            unused = now - self._used_at.get(key, 0.0)
            if key not in self.asleep and min(idle.get(key, 0.0), awake_for, unused) >= after:
                self.asleep.add(key)
                fallen.append(key)
        return fallen
