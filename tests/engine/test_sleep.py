"""Which ``sleepAfter`` services sleep, and when they wake."""

from __future__ import annotations

from terrace.engine.sleep import Sleepers
from terrace.engine.state import DesiredService, ServiceKey

API = ServiceKey(1, "api")
SLEEPY = {API: 10.0}


def test_a_service_sleeps_after_its_idle_time_and_wakes_on_demand() -> None:
    sleepers = Sleepers()
    assert sleepers.fall_asleep(SLEEPY, {API: 60.0}, now=100.0) == []  # just seen: awake 0 s
    assert sleepers.fall_asleep(SLEEPY, {API: 9.0}, now=111.0) == []  # a request 9 s ago
    assert sleepers.fall_asleep(SLEEPY, {API: 10.0}, now=112.0) == [API]
    desired = DesiredService(key=API, revision="r", replicas=3)
    assert sleepers.wanted(desired).replicas == 0
    assert sleepers.wake(API, now=200.0)
    assert not sleepers.wake(API, now=200.0)
    assert sleepers.wanted(desired).replicas == 3
    # Woken: it stays up at least sleepAfter, even with no request at all.
    assert sleepers.fall_asleep(SLEEPY, {API: 500.0}, now=205.0) == []
    assert sleepers.fall_asleep(SLEEPY, {API: 500.0}, now=210.0) == [API]


def test_calls_by_name_keep_a_service_awake_and_only_sleepy_services_sleep() -> None:
    sleepers = Sleepers()
    sleepers.fall_asleep(SLEEPY, {}, now=0.0)
    sleepers.count_connections(API, 5, now=1.0)  # the first count is a baseline
    sleepers.count_connections(API, 7, now=15.0)  # two new connections: used at 15
    assert sleepers.fall_asleep(SLEEPY, {API: 100.0}, now=20.0) == []
    assert sleepers.fall_asleep(SLEEPY, {API: 100.0}, now=25.0) == [API]
    sleepers.forget_all_but({})  # sleepAfter removed by a deploy: awake again
    assert sleepers.asleep == set()
