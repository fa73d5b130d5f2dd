from __future__ import annotations

import itertools
import os
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from terrace.engine.planner import Backoff, Plan, Start, Stop, failed_rollouts, plan
from terrace.engine.state import DesiredService, ObservedReplica, Phase, ServiceKey

WEB = ServiceKey(1, "web")
API = ServiceKey(1, "api")
OTHER = ServiceKey(2, "web")
EXAMPLES = int(os.environ.get("TERRACE_HYPOTHESIS_EXAMPLES", "150"))
_ids = itertools.count(1)


def replica(
    key: ServiceKey = WEB,
    slot: int = 0,
    revision: str = "r2",
    phase: Phase = Phase.HEALTHY,
    **kw: object,
) -> ObservedReplica:
    return ObservedReplica(
        id=f"x{next(_ids)}",
        key=key,
        slot=slot,
        revision=revision,
        phase=phase,
        **kw,  # type: ignore[arg-type]
    )


def want(key: ServiceKey = WEB, replicas: int = 1, revision: str = "r2") -> DesiredService:
    return DesiredService(key=key, revision=revision, replicas=replicas)


def test_cold_start_starts_every_slot() -> None:
    result = plan([want(WEB, 2), want(API, 1)], [], now=0)
    assert result.starts == (Start(API, 0, "r2"), Start(WEB, 0, "r2"), Start(WEB, 1, "r2"))
    assert result.stops == ()


def test_a_converged_landscape_needs_nothing() -> None:
    observed = [replica(slot=0), replica(slot=1)]
    assert plan([want(replicas=2)], observed, now=0).empty


def test_scaling_down_and_teardown_stop_replicas() -> None:
    keep, extra, gone = replica(slot=0), replica(slot=1), replica(key=OTHER)
    result = plan([want(replicas=1)], [keep, extra, gone], now=0)
    assert {s.replica_id for s in result.stops} == {extra.id, gone.id}
    assert result.starts == ()


def test_a_new_revision_surges_then_replaces() -> None:
    old = replica(revision="r1")
    first = plan([want()], [old], now=0)
    assert first == Plan(starts=(Start(WEB, 0, "r2"),))
    new = replica(phase=Phase.STARTING)
    assert plan([want()], [old, new], now=1).empty  # the old one serves until the new is ready
    healthy = replace(new, phase=Phase.HEALTHY)
    done = plan([want()], [old, healthy], now=2)
    assert done.stops == (Stop(old.id, "replaced by revision r2 of 1/web"),)
    assert done.starts == ()


def test_failures_restart_after_an_exponential_backoff() -> None:
    crashed = replica(phase=Phase.EXITED, restarts=3, changed_at=100.0)
    backoff = Backoff(base=1, cap=60)
    waiting = plan([want()], [crashed], now=105.0, backoff=backoff)
    assert waiting.empty
    assert waiting.wake_at == 108.0
    due = plan([want()], [crashed], now=108.0, backoff=backoff)
    assert [s.replica_id for s in due.stops] == [crashed.id]
    assert due.starts == (Start(WEB, 0, "r2", restarts=4),)
    assert backoff.delay(100) == 60


def test_duplicates_after_a_crash_keep_the_best() -> None:
    healthy, starting = replica(changed_at=5), replica(phase=Phase.STARTING)
    twin = replica(changed_at=9)
    result = plan([want()], [twin, starting, healthy], now=10)
    assert {s.replica_id for s in result.stops} == {twin.id, starting.id}
    assert result.starts == ()


# --- convergence from any state --------------------------------------------------------------

phases = st.sampled_from(list(Phase))
observed_replicas = st.lists(
    st.builds(
        lambda key, slot, revision, phase, restarts: replica(
            key=key, slot=slot, revision=revision, phase=phase, restarts=restarts
        ),
        st.sampled_from([WEB, API, OTHER]),
        st.integers(0, 4),
        st.sampled_from(["r1", "r2"]),
        phases,
        st.integers(0, 5),
    ),
    max_size=12,
)
desired_sets = st.lists(
    st.builds(want, st.sampled_from([WEB, API]), st.integers(1, 3), st.sampled_from(["r1", "r2"])),
    max_size=2,
    unique_by=lambda d: d.key,
)


def apply(result: Plan, observed: list[ObservedReplica], now: float) -> list[ObservedReplica]:
    """A well-behaved runtime: stops stop, starts start, and a started replica gets healthy."""
    stopped = {s.replica_id for s in result.stops}
    after = [r for r in observed if r.id not in stopped]
    after = [replace(r, phase=Phase.HEALTHY) if r.phase is Phase.STARTING else r for r in after]
    after += [
        replica(key=s.key, slot=s.slot, revision=s.revision, phase=Phase.HEALTHY, changed_at=now)
        for s in result.starts
    ]
    return after


def assert_no_slot_goes_dark(
    desired: list[DesiredService], state: list[ObservedReplica], result: Plan
) -> None:
    """A desired slot that has a healthy replica keeps one through the stops of a plan."""
    stopped = {s.replica_id for s in result.stops}
    for d in desired:
        for slot in range(d.replicas):
            here = [r for r in state if r.key == d.key and r.slot == slot]
            if any(r.phase is Phase.HEALTHY for r in here):
                left = [r for r in here if r.id not in stopped]
                assert any(r.phase is Phase.HEALTHY for r in left), (d.key, slot)


@settings(max_examples=EXAMPLES, deadline=None)
@given(desired=desired_sets, observed=observed_replicas)
def test_any_state_converges_to_exactly_the_desired_replicas(
    desired: list[DesiredService], observed: list[ObservedReplica]
) -> None:
    now = 1000.0
    state = observed
    for _ in range(4):
        result = plan(desired, state, now=now)
        assert_no_slot_goes_dark(desired, state, result)
        state = apply(result, state, now)
        now += 100.0  # past any back-off
    assert plan(desired, state, now=now).empty
    expected = sorted((d.key, slot, d.revision) for d in desired for slot in range(d.replicas))
    assert sorted((r.key, r.slot, r.revision) for r in state) == expected
    assert all(r.phase is Phase.HEALTHY for r in state)


def test_a_rollout_that_keeps_failing_is_given_up_while_the_old_revision_serves() -> None:
    old = replica(revision="r1", phase=Phase.HEALTHY)
    wanted = [want(revision="r2")]
    # Two failures of r2: not yet (the back-off restarts it).
    second = replica(revision="r2", phase=Phase.EXITED, restarts=1)
    assert failed_rollouts(wanted, [old, second]) == []
    third = replica(revision="r2", phase=Phase.EXITED, restarts=2)
    assert failed_rollouts(wanted, [old, third]) == [third]
    # Unhealthy (never healthy in time, or failing checks) counts at once.
    stuck = replica(revision="r2", phase=Phase.UNHEALTHY)
    assert failed_rollouts(wanted, [old, stuck]) == [stuck]
    # Nothing old serves (a first deploy, or the old one died too): keep restarting.
    assert failed_rollouts(wanted, [third]) == []
    assert failed_rollouts(wanted, [replace(old, phase=Phase.EXITED), third]) == []
    # A healthy new revision is no failure; nor is a service no longer desired.
    assert failed_rollouts(wanted, [old, replica(revision="r2")]) == []
    assert failed_rollouts([], [old, third]) == []
