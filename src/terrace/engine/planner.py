"""The reconciler's brain: a pure function from desired and observed state to a plan.

No I/O and no clock of its own (``now`` is an argument), so it can be tested exhaustively and
re-run after any crash: whatever the runtime reports, the plan moves it toward the desired state.

Per service slot the rules are:

- no replica: start one of the desired revision;
- an old revision only: start the new one beside it (a surge); the old one keeps serving until
  the new one is healthy, then it is stopped (a rolling replacement, one slot at a time in
  the runtime's pace);
- a failed replica (exited, or unhealthy): once its back-off has passed, stop it and start a new
  one with the restart count raised; until then, say when to look again;
- more replicas than one of each kind (after a crash mid-plan): keep the best, stop the rest;
- slots beyond ``replicas`` and services no longer desired: stop.

:func:`failed_rollouts` says when a new revision should be given up on: it keeps failing while
the old one still serves (the engine then makes the previous deployment desired again).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from terrace.engine.state import DesiredService, ObservedReplica, Phase, ServiceKey

__all__ = ["ROLLBACK_AFTER", "Backoff", "Plan", "Start", "Stop", "failed_rollouts", "plan"]

ROLLBACK_AFTER = 3
"""Failures of a new revision (exits, or failed health) after which its rollout is undone."""


@dataclass(frozen=True, slots=True)
class Start:
    key: ServiceKey
    slot: int
    revision: str
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class Stop:
    replica_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now, and when at the latest to plan again (a back-off ending)."""

    stops: tuple[Stop, ...] = ()
    starts: tuple[Start, ...] = ()
    wake_at: float | None = None

    @property
    def empty(self) -> bool:
        return not self.stops and not self.starts


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off for restarts: ``base * 2**restarts``, capped."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, restarts: int) -> float:
        return min(self.cap, self.base * (1 << min(restarts, 32)))


_FAILED = (Phase.EXITED, Phase.UNHEALTHY)
_RANK = {Phase.HEALTHY: 0, Phase.STARTING: 1, Phase.UNHEALTHY: 2, Phase.EXITED: 3}


def plan(
    desired: Iterable[DesiredService],
    observed: Iterable[ObservedReplica],
    *,
    now: float,
    backoff: Backoff = Backoff(),
) -> Plan:
    """The actions that move ``observed`` toward ``desired``."""
    wanted: Mapping[ServiceKey, DesiredService] = {d.key: d for d in desired}
    by_slot: dict[tuple[ServiceKey, int], list[ObservedReplica]] = defaultdict(list)
    stops: list[Stop] = []
    starts: list[Start] = []
    wake_at: float | None = None
    for replica in observed:
        want = wanted.get(replica.key)
        if want is None:
            stops.append(Stop(replica.id, f"service {replica.key} is no longer deployed"))
        elif replica.slot >= want.replicas:
            stops.append(Stop(replica.id, f"{replica.key} is scaled to {want.replicas}"))
        else:
            by_slot[(replica.key, replica.slot)].append(replica)
    for key in sorted(wanted):
        want = wanted[key]
        for slot in range(want.replicas):
            slot_stops, slot_start, slot_wake = _plan_slot(
                want, slot, by_slot.get((key, slot), []), now=now, backoff=backoff
            )
            stops += slot_stops
            if slot_start is not None:
                starts.append(slot_start)
            if slot_wake is not None:
                wake_at = slot_wake if wake_at is None else min(wake_at, slot_wake)
    return Plan(tuple(stops), tuple(starts), wake_at)


def _best(replicas: list[ObservedReplica]) -> ObservedReplica | None:
    # Healthiest first; among equals the one that has been so longest, then by id (stable).
    ordered = sorted(replicas, key=lambda r: (_RANK[r.phase], r.changed_at, r.id))
    return ordered[0] if ordered else None


def _plan_slot(
    want: DesiredService,
    slot: int,
    replicas: list[ObservedReplica],
    *,
    now: float,
    backoff: Backoff,
) -> tuple[list[Stop], Start | None, float | None]:
    current = _best([r for r in replicas if r.revision == want.revision])
    old = _best([r for r in replicas if r.revision != want.revision and r.phase not in _FAILED])
    keep = {r.id for r in (current, old) if r is not None}
    stops = [
        Stop(r.id, f"a duplicate or failed replica of {want.key} slot {slot}")
        for r in replicas
        if r.id not in keep
    ]
    if current is None:
        # Nothing of the desired revision yet: start it; an old one serves meanwhile.
        return stops, Start(want.key, slot, want.revision), None
    if current.phase is Phase.HEALTHY:
        if old is not None:
            stops.append(Stop(old.id, f"replaced by revision {want.revision} of {want.key}"))
        return stops, None, None
    if current.phase is Phase.STARTING:
        return stops, None, None
    # The current revision failed: restart it after its back-off.
    due = current.changed_at + backoff.delay(current.restarts)
    if now < due:
        return stops, None, due
    stops.append(Stop(current.id, f"{want.key} slot {slot} {current.phase.value}: restarting"))
    return stops, Start(want.key, slot, want.revision, current.restarts + 1), None


def failed_rollouts(
    desired: Iterable[DesiredService],
    observed: Iterable[ObservedReplica],
    *,
    failures: int = ROLLBACK_AFTER,
) -> list[ObservedReplica]:
    """Per service being rolled out, a replica of its new revision showing that the rollout
    failed: it has failed ``failures`` times (its slot's restarts count the earlier ones) or
    is unhealthy, while a replica of another revision is still healthy. A first deploy (no
    other revision) never fails this way: it keeps restarting with back-off instead."""
    wanted = {d.key: d for d in desired}
    by_key: dict[ServiceKey, list[ObservedReplica]] = defaultdict(list)
    for replica in observed:
        if replica.key in wanted:
            by_key[replica.key].append(replica)
    found = []
    for key in sorted(by_key):
        replicas = by_key[key]
        revision = wanted[key].revision
        serving = any(r.revision != revision and r.phase is Phase.HEALTHY for r in replicas)
        failing = sorted(
            (
                r
                for r in replicas
                if r.revision == revision
                and (
                    r.phase is Phase.UNHEALTHY
                    or (r.phase is Phase.EXITED and r.restarts >= failures - 1)
                )
            ),
            key=lambda r: (r.slot, r.id),
        )
        if serving and failing:
            found.append(failing[0])
    return found
