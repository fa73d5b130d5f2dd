"""The sandboxed runtime's network: probes, service addresses balanced over healthy replicas,
names inside the sandbox, and landscapes that cannot reach each other or the host."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from terrace.runtimes.base import Endpoint, Probe, Replica
from terrace.runtimes.network import HOST_ADDRESS, Networks
from terrace.runtimes.process import ProcessRuntime
from tests.runtimes.conftest import Lab, eventually, fetch_from, http_get

HTTP = Probe("http", 3000, "/")


async def healthy(runtime: ProcessRuntime, *replicas: Replica, probe: Probe = HTTP) -> None:
    for replica in replicas:
        await eventually(lambda r=replica: runtime.probe(r.id, probe), what=f"{replica.id} healthy")


async def hosts_answering(runtime: ProcessRuntime, workspace_id: int, service: str, n: int) -> list:
    """Who answers each of ``n`` fresh connections to the service (the public router's way)."""
    hosts = []
    for i in range(n):
        reader, writer = await runtime.connect(workspace_id, service, 3000)
        status, body = await http_get(reader, writer, f"/n{i}")
        assert status == 200
        assert body["path"] == f"/n{i}"
        hosts.append(body["host"])
    return hosts


async def refused(runtime: ProcessRuntime, workspace_id: int, service: str) -> float:
    """How long a refused connection to the service took (fails if it connects)."""
    started = time.monotonic()
    async with asyncio.timeout(3):
        with pytest.raises(ConnectionRefusedError):
            await runtime.connect(workspace_id, service, 3000)
    return time.monotonic() - started


def test_replicas_share_a_declared_port_and_probes_tell_healthy_from_not(lab: Lab) -> None:
    runtime = lab.runtime()
    assert runtime.sandboxed
    assert "bubblewrap" in runtime.description

    async def main() -> None:
        a0 = await runtime.start(lab.spec("alpha", 0))
        a1 = await runtime.start(lab.spec("alpha", 1))
        b0 = await runtime.start(lab.spec("beta", 0))
        # The same declared port for every replica, each on its own private address.
        assert a0.ports == a1.ports == b0.ports == {3000: 3000}
        assert len({a0.address, a1.address, b0.address}) == 3
        assert all(r.address.startswith("10.88.") for r in (a0, a1, b0))
        assert all(r.running for r in (a0, a1, b0))

        await healthy(runtime, a0, a1)
        await healthy(runtime, b0, probe=Probe("tcp", 3000))
        assert await runtime.probe(b0.id, HTTP)
        assert await runtime.probe(a0.id, Probe("tcp", 3000))
        # A path answering 500, a port nothing listens on, a replica that does not exist.
        assert not await runtime.probe(a0.id, Probe("http", 3000, "/fail"))
        assert not await runtime.probe(a1.id, Probe("tcp", 3999))
        assert not await runtime.probe(a1.id, Probe("http", 3999, "/"))
        assert not await runtime.probe("1-nope-0-000000", HTTP)

        listed = {r.id: r for r in await runtime.replicas()}
        assert set(listed) == {a0.id, a1.id, b0.id}
        assert all(r.running for r in listed.values())
        assert listed[a1.id].slot == 1
        assert listed[a1.id].address == a1.address

    lab.run(main())


def test_connections_are_balanced_over_the_published_replicas(lab: Lab) -> None:
    runtime = lab.runtime()

    async def main() -> None:
        a0 = await runtime.start(lab.spec("alpha", 0))
        a1 = await runtime.start(lab.spec("alpha", 1))
        b0 = await runtime.start(lab.spec("beta", 0))
        await healthy(runtime, a0, a1, b0)
        both = (a0.id, a1.id)
        await runtime.publish(
            1,
            {
                "alpha": Endpoint("alpha", (3000,), both),
                "beta": Endpoint("beta", (3000,), (b0.id,)),
            },
        )
        hosts = await hosts_answering(runtime, 1, "alpha", 6)
        assert set(hosts) == {"ws-server-1-alpha-0", "ws-server-1-alpha-1"}
        assert set(await hosts_answering(runtime, 1, "beta", 3)) == {"ws-server-1-beta-0"}

        # alpha-0 leaves the balancer: new connections all go to alpha-1.
        await runtime.publish(
            1,
            {
                "alpha": Endpoint("alpha", (3000,), (a1.id,)),
                "beta": Endpoint("beta", (3000,), (b0.id,)),
            },
        )
        assert set(await hosts_answering(runtime, 1, "alpha", 6)) == {"ws-server-1-alpha-1"}

        # No healthy replica (or left out altogether): refused, at once.
        await runtime.publish(
            1,
            {"alpha": Endpoint("alpha", (3000,), ()), "beta": Endpoint("beta", (3000,), (b0.id,))},
        )
        assert await refused(runtime, 1, "alpha") < 1
        await runtime.publish(1, {"alpha": Endpoint("alpha", (3000,), both)})
        assert await refused(runtime, 1, "beta") < 1
        assert len(await hosts_answering(runtime, 1, "alpha", 2)) == 2
        # A service the landscape never had, and a landscape that does not exist.
        assert await refused(runtime, 1, "nope") < 1
        assert await refused(runtime, 9, "alpha") < 1

    lab.run(main())


def test_replicas_reach_services_by_name_and_unknown_names_fail_fast(lab: Lab) -> None:
    runtime = lab.runtime()

    async def main() -> None:
        a0 = await runtime.start(lab.spec("alpha", 0))
        b0 = await runtime.start(lab.spec("beta", 0))
        b1 = await runtime.start(lab.spec("beta", 1))
        await healthy(runtime, a0, b0, b1)
        await runtime.publish(
            1,
            {
                "alpha": Endpoint("alpha", (3000,), (a0.id,)),
                "beta": Endpoint("beta", (3000,), (b0.id, b1.id)),
            },
        )
        # alpha-0 was started before beta existed: the landscape's /etc/hosts follows.
        seen = set()
        for url in ["http://beta:3000/", "http://ws-server-1-beta:3000/"] * 2:
            result = await fetch_from(runtime, a0.id, url + "hello")
            assert result["ok"], (url, result)
            assert result["body"].endswith('"path": "/hello"}')
            seen.add(result["body"].split('"')[3])
        assert seen == {"ws-server-1-beta-0", "ws-server-1-beta-1"}
        # Each replica by its own hostname too.
        result = await fetch_from(runtime, b0.id, "http://ws-server-1-alpha-0:3000/x")
        assert result["ok"], result
        assert '"host": "ws-server-1-alpha-0"' in result["body"]

        for name in ("no-such-service", "ws-server-1-nope", "example.com"):
            result = await fetch_from(runtime, a0.id, f"http://{name}:3000/", timeout=5)
            assert not result["ok"]
            assert result["elapsed"] < 1.5, result

    lab.run(main())


def test_a_replica_reaches_its_own_service_by_name(lab: Lab) -> None:
    """A service calling itself by name (a common thing to do) must work even when the
    balancer picks the calling replica."""
    runtime = lab.runtime()

    async def main() -> None:
        a0 = await runtime.start(lab.spec("alpha", 0))
        await healthy(runtime, a0)
        await runtime.publish(1, {"alpha": Endpoint("alpha", (3000,), (a0.id,))})
        result = await fetch_from(runtime, a0.id, "http://alpha:3000/self", timeout=1)
        assert result["ok"], result

    lab.run(main())


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server of the host on every address (so on 127.0.0.1 too): its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"host")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def host_address() -> str | None:
    """The host's own non-loopback address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def test_landscapes_cannot_reach_each_other_nor_the_host(lab: Lab, host_server: int) -> None:
    runtime = lab.runtime()
    with urllib.request.urlopen(f"http://127.0.0.1:{host_server}/", timeout=5) as response:
        assert response.read() == b"host"  # it does answer, from the host

    async def main() -> None:
        # Two teams' landscapes, each with its own address space, so some addresses exist in
        # both. Landscape 1 listens on 3000 only, landscape 2 on 4000 only: an answer can only
        # come from across. Landscape 1 has more replicas, landscape 2 more services, so each
        # side has addresses the other side does not have.
        alphas = [
            await runtime.start(lab.spec("alpha", slot, workspace_id=1, team_id=1))
            for slot in range(3)
        ]
        g0, d0 = [
            await runtime.start(lab.spec(name, 0, workspace_id=2, team_id=2, ports=(4000,)))
            for name in ("gamma", "delta")
        ]
        await healthy(runtime, *alphas)
        await healthy(runtime, g0, d0, probe=Probe("http", 4000, "/"))
        await runtime.publish(1, {"alpha": Endpoint("alpha", (3000,), (alphas[0].id,))})
        await runtime.publish(
            2,
            {
                "gamma": Endpoint("gamma", (4000,), (g0.id,)),
                "delta": Endpoint("delta", (4000,), (d0.id,)),
            },
        )
        alpha = runtime.networks.service_address(1, "alpha")
        delta = runtime.networks.service_address(2, "delta")
        assert alpha is not None
        assert delta is not None
        assert alphas[2].address not in {g0.address, d0.address}
        assert delta != alpha

        # Within a landscape, it all works.
        a0 = alphas[0]
        assert (await fetch_from(runtime, a0.id, f"http://{alphas[2].address}:3000/"))["ok"]
        assert (await fetch_from(runtime, g0.id, "http://delta:4000/", port=4000))["ok"]

        # Across landscapes: nothing, by address or by name.
        failures = []
        for url in [
            f"http://{d0.address}:4000/",
            f"http://{g0.address}:4000/",
            f"http://{delta}:4000/",
            "http://gamma:4000/",
            "http://ws-server-2-delta:4000/",
            "http://ws-server-2-gamma-0:4000/",
        ]:
            failures.append((url, await fetch_from(runtime, a0.id, url, timeout=2)))
        for url in [
            f"http://{alphas[2].address}:3000/",
            f"http://{a0.address}:3000/",
            f"http://{alpha}:3000/",
            "http://alpha:3000/",
            "http://ws-server-1-alpha-2:3000/",
        ]:
            failures.append((url, await fetch_from(runtime, g0.id, url, timeout=2, port=4000)))
        # Nor the host: not its loopback, not its own address, not its end of the uplink
        # (over which the host itself reaches every replica directly).
        for replica, port in ((a0, 3000), (g0, 4000)):
            status, _ = await http_get(*await asyncio.open_connection(replica.address, port))
            assert status == 200
        targets = [f"http://127.0.0.1:{host_server}/", f"http://{HOST_ADDRESS}:{host_server}/"]
        if address := host_address():
            targets.append(f"http://{address}:{host_server}/")
        for url in targets:
            failures.append((url, await fetch_from(runtime, a0.id, url, timeout=2)))
            failures.append((url, await fetch_from(runtime, g0.id, url, timeout=2, port=4000)))
        assert [(url, r) for url, r in failures if r["ok"]] == []
        assert max(r["elapsed"] for _, r in failures) < 1.5, failures  # refused at once
        # The public router's way in is per landscape too.
        with pytest.raises(ConnectionRefusedError):
            await runtime.connect(1, "gamma", 4000)

    lab.run(main())


# ip(8), except that adding a landscape's namespace (`ip netns add <prefix>-w<N>`) first waits
# (up to 2 s) for a second such call: two starts that both found no landscape really overlap.
IP_WITH_A_MEETING_POINT = """#!/bin/sh
case "$1 $2 $3" in
  "netns add "*-w[0-9]*)
    touch "$0.$3.$$"
    n=0
    while [ "$(ls "$0.$3."* | wc -l)" -lt 2 ] && [ $n -lt 100 ]; do sleep 0.02; n=$((n+1)); done
    ;;
esac
exec /usr/sbin/ip "$@"
"""


def test_replicas_of_a_new_landscape_can_start_at_the_same_time(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine starts a pass's replicas concurrently (asyncio.gather)."""
    tools = lab.tmp_path / "bin"
    tools.mkdir()
    (tools / "ip").write_text(IP_WITH_A_MEETING_POINT)
    (tools / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    runtime = lab.runtime()

    async def main() -> None:
        results = await asyncio.gather(
            runtime.start(lab.spec("alpha", 0)),
            runtime.start(lab.spec("beta", 0)),
            return_exceptions=True,
        )
        assert not [r for r in results if isinstance(r, BaseException)]
        replicas = [r for r in results if isinstance(r, Replica)]
        await healthy(runtime, *replicas)

    lab.run(main())


def test_service_addresses_are_given_once_and_named_in_the_hosts_file(tmp_path: Path) -> None:
    networks = Networks("trtest", tmp_path / "net")
    first = networks.service_addresses(1, ["web", "api"])
    assert first == {"api": "10.89.0.1", "web": "10.89.0.2"}
    # Kept as services come and go (a client's cached address stays right).
    assert networks.service_addresses(1, ["web", "db"]) == {**first, "db": "10.89.0.3"}
    assert networks.service_address(1, "web") == "10.89.0.2"
    assert networks.service_address(1, "nope") is None
    assert networks.service_addresses(2, ["web"]) == {"web": "10.89.0.1"}  # its own space

    networks.write_hosts(1, {"web": "10.89.0.2"}, {"ws-server-1-web-0": "10.88.0.2"})
    hosts = networks.hosts_file(1)
    inode = hosts.stat().st_ino
    lines = hosts.read_text().splitlines()
    assert "10.89.0.2\tweb ws-server-1-web" in lines
    assert "10.88.0.2\tws-server-1-web-0" in lines
    assert lines[0] == "127.0.0.1\tlocalhost"
    # Rewritten in place (sandboxes bind-mount that very file), shorter content included.
    networks.write_hosts(1, {}, {})
    assert hosts.stat().st_ino == inode
    assert "web" not in hosts.read_text()


def test_a_landscape_is_forgotten_only_once_none_of_its_replicas_is_left(lab: Lab) -> None:
    runtime = lab.runtime()

    async def main() -> None:
        replica = await runtime.start(lab.spec("alpha"))
        router = runtime.networks.landscape_ns(1)
        await runtime.forget_landscape(1)
        assert router in runtime.networks.namespaces()
        await healthy(runtime, replica)
        await runtime.stop(replica.id, grace=1)
        await runtime.forget_landscape(1)
        assert runtime.networks.namespaces() == []
        assert not runtime.networks.hosts_file(1).parent.exists()
        assert runtime.networks.service_address(1, "alpha") is None
        await runtime.forget_landscape(1)  # again: nothing to do

    lab.run(main())
