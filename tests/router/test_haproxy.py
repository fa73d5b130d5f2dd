"""What only the HAProxy plane has: no reload on a table change, slots, its process.

The behaviour both planes share is in ``test_contract.py``; these tests run the HAProxy plane
against the same real backends (:mod:`tests.router.backends`) over loopback.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from terrace.router.haproxy import HaproxyError, HaproxyPlane
from terrace.router.haproxy_plan import Slots, plan
from terrace.router.table import Backend, Balance, Pool, Route, RouteTable
from tests.router.backends import GUARD, Upstream
from tests.router.conftest import TEST_TIMEOUTS, Harness, Woken, joined, pool

Start = Callable[..., Harness]


@pytest.fixture
def start_haproxy(tmp_path: Path) -> Iterator[Start]:
    """Start an HAProxy plane (keyword arguments go to :class:`HaproxyPlane`) on 127.0.0.1:0
    with its own event loop; everything is closed after the test, and the test fails if the
    loop reported an error or a task is left running."""
    runner = asyncio.Runner()
    errors: list[dict[str, Any]] = []
    runner.get_loop().set_exception_handler(lambda _, context: errors.append(context))
    started: list[Harness] = []

    def start(**options: Any) -> Harness:
        options.setdefault("state_dir", tmp_path / "haproxy-state")
        options.setdefault("timeouts", TEST_TIMEOUTS)
        woken = Woken()
        plane = HaproxyPlane(on_wake=woken, **options)
        harness = Harness(runner, plane, options["timeouts"], woken)
        harness.port = harness.run(plane.start("127.0.0.1", 0))
        started.append(harness)
        return harness

    try:
        yield start
    finally:
        for harness in started:
            harness.run(harness.aclose())

        async def leftover() -> set[asyncio.Task[Any]]:
            return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

        left = runner.run(leftover())
        runner.close()
        assert left == set(), "tasks still running once the plane was closed"
        assert errors == [], "errors reported to the event loop"


def haproxy_of(harness: Harness) -> HaproxyPlane:
    assert isinstance(harness.plane, HaproxyPlane)
    return harness.plane


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"


def backend_of(response: httpx.Response) -> str:
    assert response.status_code == 200, (response.status_code, response.text[:200])
    name: str = response.json()["backend"]
    return name


def test_fifty_applies_under_load_change_routes_and_servers_without_a_reload(
    start_haproxy: Start,
) -> None:
    harness = start_haproxy()
    haproxy = haproxy_of(harness)

    seen: Counter[str] = Counter()
    progress = asyncio.Condition()

    async def load(path: str, stop: asyncio.Event) -> None:
        """Requests one after another on a keep-alive connection until ``stop``."""
        async with httpx.AsyncClient(base_url=harness.url, timeout=GUARD) as client:
            while not stop.is_set():
                response = await client.get(path)
                ok = response.status_code == 200
                seen[response.json()["backend"] if ok else f"failed {response.status_code}"] += 1
                async with progress:
                    progress.notify_all()

    async def more_requests(count: int) -> None:
        """Until the load has made ``count`` more requests (so each table sees traffic)."""
        target = seen.total() + count
        async with progress:
            await progress.wait_for(lambda: seen.total() >= target)

    async def main() -> tuple[dict[str, str], dict[str, str], Counter[str], list[int]]:
        members = await harness.backends(*(f"b{i}" for i in range(6)))
        before = await haproxy.info()
        stop = asyncio.Event()
        new_routes: list[int] = []
        previous: set[str] = set()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(load("/", stop))
            tasks.create_task(load("/api/x", stop))
            for step in range(50):
                web = [members[step % 6], members[(step + 1) % 6]]
                api = [members[(step + 3) % 6]]
                await harness.apply(
                    Route("/", "web"),
                    Route("/api", "api", strip="/api"),
                    Route(f"/step{step}", "api"),  # one route comes, one goes, every time
                    pool("web", *web, balance=(Balance.ROUND_ROBIN, Balance.LEAST_CONN)[step % 2]),
                    pool("api", *api),
                )
                new_routes.append((await harness.get(f"/step{step}/x")).status_code)
                await more_requests(4)
                current = {m.id for m in web + api}
                assert await haproxy.drained(previous - current, timeout=GUARD)
                previous = current
            stop.set()
        return before, await haproxy.info(), seen, new_routes

    before, after, seen, new_routes = harness.run(main())

    assert set(seen) == {
        f"b{i}" for i in range(6)
    }  # and no failure  # every backend served in its turn
    assert new_routes == [200] * 50
    # One process all along: a reload would start a new one and reset its counters.
    assert before["Pid"] == after["Pid"] == str(haproxy.pid)
    assert int(after["Uptime_sec"]) >= int(before["Uptime_sec"])
    assert int(after["CumReq"]) >= seen.total() + 50


def test_a_pool_beyond_the_slots_is_refused_and_the_table_stays(start_haproxy: Start) -> None:
    harness = start_haproxy(slots=2)

    async def main() -> None:
        a, b, c, d = await harness.backends("a", "b", "c", "d")
        two = [Route("/a", "a"), Route("/b", "b"), pool("a", a), pool("b", b)]
        await harness.apply(*two)
        with pytest.raises(HaproxyError, match="no free roundrobin slot for 1 new pool"):
            await harness.apply(*two, Route("/c", "c"), pool("c", c))
        # Nothing changed: the two pools answer, the third has no route.
        assert backend_of(await harness.get("/a")) == "a"
        assert backend_of(await harness.get("/b")) == "b"
        assert (await harness.get("/c")).status_code == 404
        # The other algorithm has slots of its own.
        await harness.apply(*two, Route("/c", "c"), pool("c", c, balance=Balance.LEAST_CONN))
        assert backend_of(await harness.get("/c")) == "c"
        # A pool that leaves frees its slot once its backends have drained.
        one = [
            Route("/a", "a"),
            pool("a", a),
            Route("/c", "c"),
            pool("c", c, balance=Balance.LEAST_CONN),
        ]
        await harness.apply(*one)
        assert await haproxy_of(harness).drained(["b"], timeout=GUARD)
        await harness.apply(*one, Route("/d", "d"), pool("d", d))
        assert backend_of(await harness.get("/d")) == "d"
        assert (await harness.get("/b")).status_code == 404

    harness.run(main())


def test_many_routes_match_like_the_route_table(start_haproxy: Start) -> None:
    """Longest prefix on a segment boundary, per host with the default routes for other hosts,
    strip and X-Forwarded-Prefix: HAProxy's maps against :meth:`RouteTable.match`."""
    rng = random.Random(7)
    segments = ["api", "apis", "v1", "v10", "users", "a", "a-b", "x.y", "_ws", "12-3000"]
    hosts = [None, "a.localhost", "b.localhost", "api.localhost"]
    routes: dict[tuple[str | None, str], Route] = {(None, "/"): Route("/", "p0")}
    while len(routes) < 48:
        host = rng.choice(hosts)
        depth = rng.randint(1, 4)  # known hosts without "/": a request may match nothing
        prefix = "/" + "/".join(rng.choice(segments) for _ in range(depth))
        strip_depth = rng.randint(0, depth)
        strip = "/" + "/".join(prefix.split("/")[1 : strip_depth + 1]) if strip_depth else ""
        name = f"p{len(routes)}"
        routes.setdefault((host, prefix), Route(prefix, name, host=host, strip=strip))
    requests = []
    for _ in range(400):
        path = "/" + "/".join(rng.choice([*segments, "zz", ""]) for _ in range(rng.randint(0, 6)))
        query = rng.choice([None, "q=1&r=%20"])
        host = rng.choice([*filter(None, hosts), "other.localhost", "A.LOCALHOST:8080", "[::1]"])
        requests.append((host, path, query))
    harness = start_haproxy()

    async def main() -> tuple[list[object], list[object]]:
        upstreams = await harness.backends(*(r.pool for r in routes.values()))
        by_name = {u.id: u for u in upstreams}
        route_table = RouteTable(routes.values(), [pool(n, u) for n, u in by_name.items()])
        await harness.plane.apply(route_table)
        expected: list[object] = []
        seen: list[object] = []
        connection = await harness.connect()  # sends each target as it is, "//" included
        for host, path, query in requests:
            match = route_table.match(host, path)
            if match is None:
                expected.append(404)
            else:
                prefix = match.route.strip or None
                expected.append((match.pool.name, match.route.target(path, query), prefix))
            target = path if query is None else f"{path}?{query}"
            response = await connection.request(target, host=host)
            if response.status != 200:
                seen.append(response.status)
                continue
            echo = json.loads(response.body)
            seen.append(
                (echo["backend"], echo["target"], joined(echo["headers"], "x-forwarded-prefix"))
            )
        return expected, seen

    expected, seen = harness.run(main())

    assert seen == expected
    assert 404 in expected  # the sample is varied
    assert len(set(map(str, expected))) > 40


def test_close_stops_the_process_and_removes_its_socket(start_haproxy: Start) -> None:
    harness = start_haproxy()
    haproxy = haproxy_of(harness)
    state = haproxy.log_path.parent
    pid = haproxy.pid
    assert pid is not None
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "admin.sock").stat().st_mode) == 0o600

    harness.closed = True
    harness.run(haproxy.close())

    assert not running(pid)
    assert not (state / "admin.sock").exists()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", harness.port)),
    ):
        pass


def test_a_haproxy_left_behind_in_the_state_folder_is_replaced(start_haproxy: Start) -> None:
    old = start_haproxy()
    old_pid = haproxy_of(old).pid
    assert old_pid is not None
    # As if the process that started it had died without closing it: a new plane, same folder.
    new = start_haproxy()

    async def main() -> str:
        (web,) = await new.backends("web")
        await new.apply(Route("/", "web"), pool("web", web))
        return backend_of(await new.get("/"))

    assert not running(old_pid)
    assert haproxy_of(new).pid != old_pid
    assert new.run(main()) == "web"


def test_haproxy_runs_one_thread_unless_told_more(start_haproxy: Start, tmp_path: Path) -> None:
    def threads(harness: Harness) -> int:
        info = harness.run(haproxy_of(harness)._api.show("show info"))
        return int(
            dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)["Nbthread"]
        )

    one = start_haproxy()
    four = start_haproxy(state_dir=tmp_path / "four", threads=4)

    async def served(harness: Harness) -> str:
        (web,) = await harness.backends("web")
        await harness.apply(Route("/", "web"), pool("web", web))
        return backend_of(await harness.get("/"))

    assert (threads(one), threads(four)) == (1, 4)
    assert four.run(served(four)) == "web"
    with pytest.raises(ValueError, match="HAProxy runs 1 to 64 threads, not 65"):
        HaproxyPlane(state_dir=tmp_path / "more", threads=65)


def test_a_port_in_use_fails_the_start(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        plane = HaproxyPlane(state_dir=tmp_path / "state")
        with pytest.raises(OSError, match="in use"):
            asyncio.run(plane.start("127.0.0.1", taken.getsockname()[1]))
    assert plane.pid is None


def test_haproxy_messages_explain_a_failed_start(tmp_path: Path) -> None:
    fake = tmp_path / "fake-haproxy"
    fake.write_text("#!/bin/sh\necho '[ALERT] config : something is wrong' >&2\nexit 1\n")
    fake.chmod(0o755)
    plane = HaproxyPlane(state_dir=tmp_path / "state", executable=str(fake))

    with pytest.raises(HaproxyError, match=r"exit status 1\): \[ALERT\] config : something"):
        asyncio.run(plane.start("127.0.0.1", 0))
    assert plane.pid is None


def test_apply_refuses_a_strip_deeper_than_the_rules_and_changes_nothing(
    start_haproxy: Start,
) -> None:
    harness = start_haproxy()
    deep = "/" + "/".join(f"s{i}" for i in range(17))

    async def main() -> None:
        (web,) = await harness.backends("web")
        await harness.apply(Route("/", "web"), pool("web", web))
        with pytest.raises(HaproxyError, match="at most 16 path segments"):
            await harness.apply(Route(deep, "web", strip=deep), pool("web", web))
        assert backend_of(await harness.get("/x")) == "web"

    harness.run(main())


def test_a_pool_sleeps_and_wakes_twice_behind_haproxy(start_haproxy: Start) -> None:
    """The activator holds the requests HAProxy sends it while the pool sleeps; the backend
    gets them with HAProxy's forwarded headers and without the activator's pool header, which a
    client cannot set for the activator (another pool would wake)."""
    harness = start_haproxy()
    route = Route("/app", "sleepy", strip="/app")

    async def cycle(web: Upstream, count: int) -> tuple[str, str, list[str], str | None]:
        await harness.apply(route, Pool("sleepy", wake=True))
        spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Terrace-Pool": "other"}
        held = asyncio.ensure_future(harness.get(f"/app/{count}", headers=spoofed))
        await harness.woken.until(count)
        assert not held.done()
        await harness.apply(route, pool("sleepy", web, wake=True))
        echo = (await held).json()
        headers = echo["headers"]
        return (
            echo["backend"],
            echo["target"],
            [v for n, v in headers if n.lower() == "x-terrace-pool"],
            joined(headers, "x-forwarded-for"),
        )

    async def main() -> list[tuple[str, str, list[str], str | None]]:
        (web,) = await harness.backends("web")
        return [await cycle(web, 1), await cycle(web, 2)]

    assert harness.run(main()) == [
        ("web", "/1", [], "203.0.113.7, 127.0.0.1"),
        ("web", "/2", [], "203.0.113.7, 127.0.0.1"),
    ]
    assert harness.woken.names == ["sleepy", "sleepy"]


def test_the_plan_adds_servers_before_routes_lead_to_them_and_drains_them_after() -> None:
    """The pure part: the order of the runtime commands across a pool's life."""
    sleepy = RouteTable([Route("/", "web")], [Pool("web", wake=True)])
    awake = RouteTable(
        [Route("/", "web")], [Pool("web", (Backend("b1", "10.0.0.1", 80),), wake=True)]
    )
    add = "pool-max-conn -1 pool-purge-delay 5s"
    seen = []
    state = Slots()
    for table in [sleepy, awake, sleepy, RouteTable()]:
        state, commands = plan(state, table, slots=4, activator=True)
        seen.append([command.line for command in commands])

    assert seen == [
        ["add map prefix.map */ -?activator?web??"],
        [
            f"add server rr0/b1 10.0.0.1:80 {add}",
            "enable server rr0/b1",
            "set map prefix.map */ -?rr0?web??",
        ],
        ["set map prefix.map */ -?activator?web??", "set server rr0/b1 state drain"],
        ["del map prefix.map */"],
    ]
    assert state.slot_of == {}
    assert {name: server.ready for name, server in state.servers["rr0"].items()} == {"b1": False}
    with pytest.raises(ValueError, match="sleeps and there is no activator"):
        plan(Slots(), sleepy, slots=4, activator=False)
