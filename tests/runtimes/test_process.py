"""The process runtime: what a replica sees of the machine, its limits, stop() leaving nothing
behind, a restarted engine adopting (and cleaning up after) what the previous one left, and
the unsandboxed fallback."""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from terrace.runtimes import network
from terrace.runtimes.base import Endpoint, Kind, Limits, Probe, Replica
from terrace.runtimes.linux import Cgroup
from terrace.runtimes.process import ProcessRuntime
from terrace.runtimes.sandbox import hostname
from tests.runtimes.conftest import PYTHON, Lab, eventually, get_in, http_get, processes

HTTP = Probe("http", 3000, "/")

# Run inside a sandbox as a job: what it can and cannot do, as JSON in its workspace.
CHECK = r"""
import json, os, socket, sys

home, marker, host_tmp = sys.argv[1:4]


def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text="x"):
    with open(path, "w") as f:
        return f.write(text)


result = {
    "cwd": os.getcwd(),
    "workspace": attempt(lambda: write("written-inside.txt", "inside")),
    "usr": attempt(lambda: write("/usr/terrace-test-" + marker)),
    "etc": attempt(lambda: write("/etc/terrace-test-" + marker)),
    "tmp": attempt(lambda: write("/tmp/" + marker)),
    "host_tmp_visible": os.path.exists(host_tmp),
    "secret": attempt(lambda: read(os.path.join(home, "master.key"))),
    "home_listing": attempt(lambda: os.listdir(home)),
    "beside_home": attempt(lambda: read(os.path.join(os.path.dirname(home), "visible.txt"))),
    "shadow": attempt(lambda: read("/etc/shadow")),
    "pid1": read("/proc/1/cmdline").split("\0")[0],
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "cgroup_escape": attempt(lambda: write("/sys/fs/cgroup/pids/cgroup.procs", str(os.getpid()))),
    "hostname": socket.gethostname(),
    "env": dict(os.environ),
}
write("result.json", json.dumps(result))
"""

# Ignores SIGTERM, and leaves a daemon behind: double fork, new session, SIGTERM ignored too.
DAEMON = r"""
import os, signal, sys, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("daemon.ready", "w").close()
        while True:
            time.sleep(60)
    os._exit(0)
os.wait()
open("main.ready", "w").close()
while True:
    time.sleep(60)
"""

HOG = r"""
import os, time

while not os.path.exists("go"):
    time.sleep(0.02)
print("allocating", flush=True)
hoard = [bytearray(1 << 20) for _ in range(200)]
print("survived", flush=True)
time.sleep(60)
"""

SLEEPER = r"""
import signal, sys, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[2] + ".ready", "w").close()
time.sleep(600)
"""


def host_init() -> str:
    return Path("/proc/1/cmdline").read_bytes().split(b"\0")[0].decode()


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


async def exited_replica(runtime: ProcessRuntime, replica_id: str) -> Replica | None:
    """The replica as listed, once listed as not running."""
    (replica,) = [r for r in await runtime.replicas() if r.id == replica_id]
    return None if replica.running else replica


def running_script(marker: str, script: str) -> list[int]:
    """Live processes of ``python3 <script>`` with ``marker`` (not the shells that start them)."""
    found = []
    for pid in processes(marker=marker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [PYTHON.encode(), script.encode()]:
            found.append(pid)
    return found


def test_the_sandbox_shows_the_workspace_and_hides_the_machine(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A home where nothing else would hide it (not under /tmp, /var/lib, /root...).
    base = lab.temp_dir()
    home = base / "home"
    home.mkdir()
    (home / "master.key").write_text("the installation's master key")
    (base / "visible.txt").write_text("next to the home")
    monkeypatch.setenv("TERRACE_TEST_LEAK", "the engine's own environment")
    exited: list[str] = []
    runtime = lab.runtime(home, on_exit=exited.append)
    workspace = lab.workspace(1)
    (workspace / "check.py").write_text(CHECK)

    async def main() -> None:
        job = await runtime.start(
            lab.spec(
                "check",
                kind=Kind.JOB,
                ports=(),
                team_id=7,
                env={"GREETING": "hello", "PATH": "/usr/bin:/bin"},
                script=f"{PYTHON} check.py {runtime.home} {lab.marker} {lab.tmp_path}",
            )
        )
        assert await asyncio.wait_for(runtime.wait(job.id), 30) == 0, lab.log(1, "check")
        await eventually(lambda: exited == [job.id], what="on_exit")
        listed = await eventually(lambda: exited_replica(runtime, job.id), what="job exited")
        assert listed.exit_code == 0

        failing = await runtime.start(lab.spec("fail", kind=Kind.JOB, ports=(), script="exit 3"))
        assert await asyncio.wait_for(runtime.wait(failing.id), 30) == 3
        listed = await eventually(lambda: exited_replica(runtime, failing.id), what="exited")
        assert listed.exit_code == 3

    lab.run(main())
    result = json.loads((workspace / "result.json").read_text())

    assert result["cwd"] == "/home/user/app"
    assert (workspace / "written-inside.txt").read_text() == "inside"
    assert result["usr"] == {"ok": False, "errno": errno.EROFS}
    assert result["etc"] == {"ok": False, "errno": errno.EROFS}
    assert not Path(f"/usr/terrace-test-{lab.marker}").exists()
    # A private /tmp: writable, and not the host's.
    assert result["tmp"]["ok"]
    assert not Path(f"/tmp/{lab.marker}").exists()
    assert not result["host_tmp_visible"]
    # The runtime's home (master key, records, every workspace) is not there; what is next to
    # it is, so it is the home that is hidden and not the whole folder.
    assert result["secret"] == {"ok": False, "errno": errno.ENOENT}
    assert result["home_listing"] == {"ok": True, "value": []}
    assert result["beside_home"] == {"ok": True, "value": "next to the home"}
    # /etc/shadow has /dev/null over it (which a nodev bind mount refuses to open).
    assert result["shadow"] in ({"ok": True, "value": ""}, {"ok": False, "errno": errno.EACCES})
    # Its own PID namespace: not the host's init, and none of the host's processes.
    assert result["pid1"] != host_init()
    assert len(result["pids"]) < 10
    # It cannot leave its cgroup (which is how stop() finds all of it).
    assert result["cgroup_escape"] == {"ok": False, "errno": errno.EROFS}
    assert result["hostname"] == "ws-server-1-check-0"

    env = result["env"]
    assert env["PORT"] == "3000"
    assert env["WORKSPACE_ID"] == "1"
    assert env["TEAM_ID"] == "7"
    assert env["GREETING"] == "hello"
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOSTNAME"] == "ws-server-1-check-0"
    assert "TERRACE_TEST_LEAK" not in env
    assert not {k for k in env if k.startswith("PYTEST")}


def test_limits_are_set_and_a_replica_over_its_memory_is_killed(lab: Lab) -> None:
    runtime = lab.runtime()
    workspace = lab.workspace(1)
    (workspace / "hog.py").write_text(HOG)

    async def main() -> None:
        hog = await runtime.start(
            lab.spec(
                "hog", script=f"{PYTHON} hog.py", limits=Limits(cpu=0.5, memory_mib=64, pids=50)
            )
        )
        group = Cgroup(f"terrace-{runtime.prefix}/{hog.id}")
        pids, memory, cpu = group.dirs()
        assert (pids / "pids.max").read_text().strip() == "50"
        assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        period = int((cpu / "cpu.cfs_period_us").read_text())
        assert quota / period == 0.5
        # Every process of the replica is in those groups.
        members = await eventually(group.pids, what="the replica's processes")
        for pid in members:
            own = Path(f"/proc/{pid}/cgroup").read_text()
            assert f"memory:/terrace-{runtime.prefix}/{hog.id}" in own

        (workspace / "go").touch()
        code = await asyncio.wait_for(runtime.wait(hog.id), 30)
        assert code not in (None, 0)
        listed = await eventually(lambda: exited_replica(runtime, hog.id), what="hog exited")
        assert listed.exit_code == code
        assert "allocating" in lab.log(1, "hog")
        assert "survived" not in lab.log(1, "hog")
        assert int((memory / "memory.failcnt").read_text()) > 0

    lab.run(main())


def test_stop_leaves_nothing_of_a_replica_that_ignores_sigterm_and_daemonises(lab: Lab) -> None:
    runtime = lab.runtime()
    workspace = lab.workspace(1)
    (workspace / "daemon.py").write_text(DAEMON)

    async def main() -> None:
        other = await runtime.start(lab.spec("other"))
        stubborn = await runtime.start(
            lab.spec("stubborn", script=f"trap '' TERM; {PYTHON} daemon.py {lab.marker}; exit 0")
        )
        await eventually(
            lambda: (workspace / "daemon.ready").exists() and (workspace / "main.ready").exists(),
            what="the daemon",
        )
        daemons = running_script(lab.marker, "daemon.py")
        assert len(daemons) == 2
        assert len({session_of(p) for p in daemons}) == 2  # one left the replica's session
        group = Cgroup(f"terrace-{runtime.prefix}/{stubborn.id}")
        assert set(daemons) <= group.pids()
        ns = runtime.namespace(stubborn.id)
        assert ns in runtime.networks.namespaces()

        started = time.monotonic()
        await runtime.stop(stubborn.id, grace=0.5)
        took = time.monotonic() - started
        assert 0.5 <= took < 5

        assert not group.pids()
        assert runtime.spares == {1: ns}  # empty, kept for the landscape's next replica
        assert not (runtime.records / f"{stubborn.id}.json").exists()
        assert [r.id for r in await runtime.replicas()] == [other.id]
        assert not running_script(lab.marker, "daemon.py")
        assert not any(d.exists() for d in group.dirs())
        # The other replica did not notice; stopping again is harmless.
        await eventually(lambda: runtime.probe(other.id, HTTP), what="other healthy")
        await runtime.stop(stubborn.id, grace=0.5)
        await runtime.stop(other.id, grace=5)
        assert not processes(marker=lab.marker)
        # one spare per landscape: the other replica's namespace is gone
        assert runtime.networks.namespaces() == sorted([runtime.networks.landscape_ns(1), ns])
        await runtime.forget_landscape(1)
        assert runtime.networks.namespaces() == []
        assert runtime.spares == {}

    lab.run(main())


def test_joining_cgroups_does_not_wait_on_the_kernel(lab: Lab) -> None:
    """A sandboxing runtime switches the kernel's cgroup migrations to ``favordynmods`` (a
    hierarchy mounted with it, kept for the boot), so a replica's first process joins its
    cgroups without waiting for an RCU grace period."""
    runtime = lab.runtime()
    assert runtime.fast_cgroup_joins
    assert "slow to join" not in runtime.description
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert any(
        fields[2] == "cgroup" and "favordynmods" in fields[3].split(",") for fields in mounts
    ), "no cgroup hierarchy is mounted with favordynmods"


def test_a_replica_is_running_as_soon_as_start_returns(lab: Lab) -> None:
    """start() says running=True; replicas() right after must not say it has exited (the
    engine would count an exit and restart it)."""
    runtime = lab.runtime()

    async def main() -> None:
        exited = []
        for slot in range(3):
            replica = await runtime.start(lab.spec("alpha", slot))
            assert replica.running
            (listed,) = [r for r in await runtime.replicas() if r.id == replica.id]
            if not listed.running:
                exited.append(slot)
            await eventually(lambda r=replica: runtime.probe(r.id, HTTP), what="healthy")
        assert not exited, f"slots {exited} listed as exited right after start"

    lab.run(main())


def test_stop_right_after_start_returns_and_leaves_nothing(lab: Lab) -> None:
    """As when the engine stops everything (Ctrl-C) just after starting a replica."""
    runtime = lab.runtime()

    async def main() -> None:
        for slot in range(3):
            replica = await runtime.start(lab.spec("alpha", slot))
            group = Cgroup(f"terrace-{runtime.prefix}/{replica.id}")
            try:
                await asyncio.wait_for(runtime.stop(replica.id, grace=1), 5)
            except TimeoutError:
                pytest.fail(
                    f"slot {slot}: stop() hung; "
                    f"still running: {running_script(lab.marker, 'server.py')}"
                )
            left = {
                "processes": running_script(lab.marker, "server.py") + sorted(group.pids()),
                "cgroups": [str(d) for d in group.dirs() if d.exists()],
                "namespaces": sorted(
                    set(runtime.networks.namespaces())
                    - {runtime.networks.landscape_ns(1), *runtime.spares.values()}
                ),
                "listed": [r.id for r in await runtime.replicas()],
            }
            assert not any(left.values()), f"slot {slot}: stop() left {left}"

    lab.run(main())


def test_a_new_engine_adopts_the_replicas_and_cleans_them_up(lab: Lab) -> None:
    first = lab.runtime()

    async def main() -> None:
        started = [
            await first.start(lab.spec("alpha", 0)),
            await first.start(lab.spec("alpha", 1, limits=Limits(cpu=1, memory_mib=128))),
            await first.start(lab.spec("beta", 0, revision="rev-2")),
        ]
        for replica in started:
            await eventually(lambda r=replica: first.probe(r.id, HTTP), what="healthy")
        # Only so that asyncio can close its handles on them once they are gone: a real
        # restart is a new process and has none.
        handles = list(first._children.values())
        await first.close()

        second = lab.runtime()
        adopted = {r.id: r for r in await second.replicas()}
        assert set(adopted) == {r.id for r in started}
        for replica in started:
            seen = adopted[replica.id]
            assert seen.running
            assert (seen.kind, seen.workspace_id, seen.name, seen.slot, seen.revision) == (
                replica.kind,
                replica.workspace_id,
                replica.name,
                replica.slot,
                replica.revision,
            )
            assert (seen.address, seen.ports, seen.started_at) == (
                replica.address,
                replica.ports,
                replica.started_at,
            )
            assert await second.probe(replica.id, HTTP)
            assert await second.wait(replica.id) is None  # not its child
        await second.publish(1, {"alpha": Endpoint("alpha", (3000,), (started[0].id,))})
        reader, writer = await second.connect(1, "alpha", 3000)
        assert (await http_get(reader, writer))[1]["host"] == "ws-server-1-alpha-0"

        for replica in started:
            await second.stop(replica.id, grace=2)
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 10)
        assert await second.replicas() == []
        assert not processes(marker=lab.marker)
        assert not processes(prefix=second.prefix)
        assert second.networks.namespaces() == [second.networks.landscape_ns(1)]
        await second.forget_landscape(1)
        assert second.networks.namespaces() == []

    lab.run(main())


def test_records_of_replicas_that_never_got_going_are_not_running_and_stop(lab: Lab) -> None:
    runtime = lab.runtime()
    prefix = runtime.prefix

    def record(replica_id: str, index: int) -> None:
        # As start() writes it first, before making anything.
        (runtime.records / f"{replica_id}.json").write_text(
            json.dumps(
                {
                    "id": replica_id,
                    "kind": "service",
                    "workspace_id": 1,
                    "team_id": 1,
                    "name": "alpha",
                    "slot": index,
                    "revision": "rev-1",
                    "restarts": 0,
                    "started_at": time.time(),
                    "sandboxed": True,
                    "index": index + 2,
                    "address": "127.0.0.1",
                    "ports": {"3000": 3000},
                    "pid": None,
                    "pid_start": None,
                    "exit_code": None,
                    "last_exit": None,
                }
            )
        )

    record("1-alpha-0-aaaaaa", 0)  # a crash right after the record
    record("1-alpha-1-bbbbbb", 1)  # ... after the cgroups
    Cgroup(f"terrace-{prefix}/1-alpha-1-bbbbbb").create(None)
    record("1-alpha-2-cccccc", 2)  # ... after the namespace
    Cgroup(f"terrace-{prefix}/1-alpha-2-cccccc").create(None)
    subprocess.run(["ip", "netns", "add", f"{prefix}-r-1-alpha-2-cccccc"], check=True)
    runtime = lab.runtime()  # the restarted engine's runtime reads the records back

    async def main() -> None:
        listed = await runtime.replicas()
        assert sorted(r.id for r in listed) == [
            "1-alpha-0-aaaaaa",
            "1-alpha-1-bbbbbb",
            "1-alpha-2-cccccc",
        ]
        assert not any(r.running for r in listed)
        assert all(r.exit_code is None for r in listed)
        for replica in listed:
            assert not await runtime.probe(replica.id, HTTP)
            assert await runtime.wait(replica.id) is None
        assert await runtime.sweep() == []  # they have records: not sweep's business
        for replica in listed:
            await runtime.stop(replica.id, grace=1)
        assert await runtime.replicas() == []
        assert runtime.networks.namespaces() == []
        for replica_id in ("1-alpha-1-bbbbbb", "1-alpha-2-cccccc"):
            assert not any(d.exists() for d in Cgroup(f"terrace-{prefix}/{replica_id}").dirs())

    lab.run(main())


def test_sweep_removes_namespaces_and_cgroups_without_a_record(lab: Lab) -> None:
    runtime = lab.runtime()
    prefix = runtime.prefix
    workspace = lab.workspace(1)
    (workspace / "sleeper.py").write_text(SLEEPER)

    async def main() -> None:
        kept = await runtime.start(lab.spec("alpha"))
        await eventually(lambda: runtime.probe(kept.id, HTTP), what="healthy")

        subprocess.run(["ip", "netns", "add", f"{prefix}-r-ghost"], check=True)
        ghosts = {}
        for name in ("ghost", "ghost-cgroup-only"):
            group = Cgroup(f"terrace-{prefix}/{name}")
            group.create(None)
            sleeper = subprocess.Popen(
                [PYTHON, "sleeper.py", lab.marker, name], cwd=workspace, start_new_session=True
            )
            await eventually(lambda n=name: (workspace / f"{n}.ready").exists(), what=name)
            for procs in group.procs_files():
                procs.write_text(str(sleeper.pid))
            ghosts[name] = (group, sleeper)

        try:
            removed = await runtime.sweep()
        finally:
            codes = {}
            for name, (_, sleeper) in ghosts.items():
                try:
                    codes[name] = sleeper.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    sleeper.kill()
                    codes[name] = sleeper.wait()
        assert codes == {"ghost": -signal.SIGKILL, "ghost-cgroup-only": -signal.SIGKILL}
        assert set(removed) >= {f"{prefix}-r-ghost", "cgroup ghost", "cgroup ghost-cgroup-only"}
        for group, _ in ghosts.values():
            assert not any(d.exists() for d in group.dirs())
        assert f"{prefix}-r-ghost" not in runtime.networks.namespaces()
        # What has a record is left alone.
        assert runtime.networks.replica_ns(kept.id) in runtime.networks.namespaces()
        assert [r.running for r in await runtime.replicas()] == [True]
        assert await runtime.probe(kept.id, HTTP)
        assert await runtime.sweep() == []

    lab.run(main())


def test_without_a_sandbox_replicas_are_host_processes_on_remapped_ports(lab: Lab) -> None:
    runtime = lab.runtime(sandbox=False)
    assert not runtime.sandboxed
    assert "WITHOUT SANDBOX" in runtime.description
    workspace = lab.workspace(1)
    (workspace / "sleeper.py").write_text(SLEEPER)

    async def main() -> None:
        a0 = await runtime.start(
            lab.spec(
                "alpha",
                0,
                script=(
                    f"trap '' TERM; {PYTHON} server.py & "
                    f"{PYTHON} sleeper.py {lab.marker} sleeper & wait"
                ),
            )
        )
        a1 = await runtime.start(lab.spec("alpha", 1))
        assert a0.address == a1.address == "127.0.0.1"
        assert set(a0.ports) == set(a1.ports) == {3000}
        assert a0.ports[3000] != a1.ports[3000]
        for replica in (a0, a1):
            await eventually(lambda r=replica: runtime.probe(r.id, HTTP), what="healthy")
            assert not await runtime.probe(replica.id, Probe("http", 3000, "/fail"))
            reader, writer = await asyncio.open_connection("127.0.0.1", replica.ports[3000])
            _, body = await http_get(reader, writer)
            assert body["port"] == str(replica.ports[3000])  # PORT is the remapped port
        await eventually((workspace / "sleeper.ready").exists, what="sleeper")

        await runtime.publish(1, {"alpha": Endpoint("alpha", (3000,), (a0.id, a1.id))})
        hosts = set()
        for _ in range(4):
            reader, writer = await runtime.connect(1, "alpha", 3000)
            hosts.add((await http_get(reader, writer))[1]["host"])
        assert hosts == {"ws-server-1-alpha-0", "ws-server-1-alpha-1"}
        await runtime.publish(1, {"alpha": Endpoint("alpha", (3000,), ())})
        with pytest.raises(ConnectionRefusedError):
            await runtime.connect(1, "alpha", 3000)

        # The shell and the sleeper ignore SIGTERM: the whole process group gets SIGKILL.
        (sleeper,) = running_script(lab.marker, "sleeper.py")
        session = session_of(sleeper)
        started = time.monotonic()
        await runtime.stop(a0.id, grace=0.5)
        assert time.monotonic() - started >= 0.5
        assert not [p for p in processes(marker=lab.marker) if session_of(p) == session]
        assert [r.id for r in await runtime.replicas()] == [a1.id]
        assert await runtime.probe(a1.id, HTTP)
        await runtime.stop(a1.id, grace=2)
        assert not processes(marker=lab.marker)
        assert await runtime.replicas() == []
        assert await runtime.sweep() == []

    lab.run(main())


def test_without_a_sandbox_stop_ends_what_outlives_the_replicas_shell(lab: Lab) -> None:
    """A script that starts its server in the background and returns (``server &``): the
    server is still the replica's (same process group), and stop() must end it."""
    runtime = lab.runtime(sandbox=False)
    workspace = lab.workspace(1)
    (workspace / "sleeper.py").write_text(SLEEPER)

    async def main() -> None:
        replica = await runtime.start(
            lab.spec(
                "alpha",
                # The shell lives on until the test says "go", so start() sees it running.
                script=(
                    f"{PYTHON} sleeper.py {lab.marker} sleeper & "
                    "while [ ! -e go ]; do sleep 0.02; done"
                ),
            )
        )
        await eventually((workspace / "sleeper.ready").exists, what="sleeper")
        (workspace / "go").touch()
        assert await asyncio.wait_for(runtime.wait(replica.id), 10) == 0
        assert running_script(lab.marker, "sleeper.py")
        await runtime.stop(replica.id, grace=0.5)
        assert not running_script(lab.marker, "sleeper.py")

    lab.run(main())


def test_without_a_sandbox_a_replica_that_exits_at_once_is_listed_as_exited(lab: Lab) -> None:
    runtime = lab.runtime(sandbox=False)

    async def main() -> None:
        still_running = []
        for slot in range(6):
            replica = await runtime.start(lab.spec("alpha", slot, script="exit 3"))
            assert await asyncio.wait_for(runtime.wait(replica.id), 10) == 3
            (listed,) = [r for r in await runtime.replicas() if r.id == replica.id]
            assert listed.exit_code == 3
            if listed.running:
                still_running.append(slot)
            await runtime.stop(replica.id, grace=0)
        assert not still_running, f"slots {still_running} exited with 3 but are listed as running"

    lab.run(main())


def test_probe_reaches_the_replica_from_inside_its_namespace(lab: Lab) -> None:
    """Probes run from inside the replica: one that listens on its loopback only is healthy."""
    runtime = lab.runtime()
    workspace = lab.workspace(1)
    (workspace / "local.py").write_text(
        (workspace / "server.py").read_text().replace('"0.0.0.0"', '"127.0.0.1"')
    )

    async def main() -> None:
        local = await runtime.start(lab.spec("local", script=f"exec {PYTHON} local.py"))
        await eventually(lambda: runtime.probe(local.id, HTTP), what="healthy")
        status, body = await get_in(runtime, local.id, "/inside")
        assert (status, body["path"]) == (200, "/inside")

    lab.run(main())


def test_a_stopped_replicas_network_is_ready_for_the_landscapes_next_replica(lab: Lab) -> None:
    """One spare per landscape: the next replica starts in it (same namespace and address,
    no ip(8) on the way) and is reached through the landscape as any other."""
    runtime = lab.runtime()
    ran: list[str] = []
    real_command = network.command

    async def command(argv: Sequence[str], **kwargs: Any) -> str:
        ran.append(argv[0])
        return await real_command(argv, **kwargs)

    async def main() -> None:
        first = await runtime.start(lab.spec("alpha", 0))
        await eventually(lambda: runtime.probe(first.id, HTTP), what="first healthy")
        ns = runtime.namespace(first.id)
        await runtime.stop(first.id, grace=2)
        assert runtime.spares == {1: ns}

        network.command = command
        try:
            second = await runtime.start(lab.spec("alpha", 1))
        finally:
            network.command = real_command
        assert (runtime.namespace(second.id), second.address) == (ns, first.address)
        assert runtime.spares == {}
        assert "ip" not in ran
        await eventually(lambda: runtime.probe(second.id, HTTP), what="second healthy")
        third = await runtime.start(lab.spec("beta", 0))  # no spare left: a namespace of its own
        assert runtime.namespace(third.id) not in (ns, None)
        await runtime.publish(1, {"alpha": Endpoint("alpha", (3000,), (second.id,))})
        reader, writer = await runtime.connect(1, "alpha", 3000)
        assert (await http_get(reader, writer))[1]["host"] == hostname(1, "alpha", 1)

        for replica in (second, third):
            await runtime.stop(replica.id, grace=2)
        assert len(runtime.spares) == 1
        await runtime.forget_landscape(1)
        assert (runtime.networks.namespaces(), runtime.spares) == ([], {})

    lab.run(main())
