"""How long the engine takes to bring N trivial services up from cold until every replica is
healthy, and what each reconcile pass costs it, against starting the same N servers directly.

For each N a fresh temporary ``TERRACE_HOME`` gets one local workspace whose ``ci.yml`` has N
services (``schemaVersion: v0.2``; each runs ``exec python3 -m http.server 3000``, is checked at
``http://localhost:3000/`` and routed at ``/sN`` on port 3000; no ``plan``, so the built-in
default applies). The real :class:`~terrace.engine.reconciler.Engine` over the process runtime
(``make_engine``: bubblewrap, a network namespace per replica, cgroups, when run as root) runs as
a task; the clock starts just before the deploy and stops at the first pass that reports all N
replicas healthy (which also means routed: a pass publishes healthy replicas before it reports).
Then every service is fetched once through its service address, the engine runs a number of
steady-state passes, and everything is stopped and checked for leftovers (network namespaces
with the runtime's prefix, cgroups, records, processes).

Cost per pass is :attr:`PassReport.cpu_seconds` (the engine process's CPU over the pass, all its
threads; the helper commands it runs, ``ip``, ``nft``, ``nsenter``, count separately, as
children). It is shown per service (per pass / N) so that linearity in N shows.

The peer is the floor: the same N ``python3 -m http.server`` processes started directly with
:mod:`subprocess` (no sandbox, distinct ports on 127.0.0.1), waiting until each answers HTTP.
It runs before and after the engine for each N; the ratio uses the mean of the two. Before each
of the three, the script waits (up to ``--quiet`` seconds) for the CPUs to be idle and records
how busy they still were, since other work on the machine moves every figure here.

Run it as root for the sandbox (without, the runtime runs plain processes, and says so in
``sandboxed``).

    .venv/bin/python bench/converge.py [--quick] [--sizes 10,50,100] [--steady 20]
                                       [--deadline 120] [--quiet 10]

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from terrace.api.bootstrap import bootstrap
from terrace.api.context import AppContext
from terrace.api.platform import make_engine
from terrace.engine.deploy import deploy
from terrace.engine.reconciler import Engine, PassReport
from terrace.runtimes.process import ProcessRuntime
from terrace.runtimes.process import http_ok as runtime_http_ok
from terrace.runtimes.sandbox import PATH
from terrace.store.tables import User, Workspace
from terrace.store.tenancy import create_team
from terrace.store.workspaces import add_workspace

PORT = 3000
SERVER = "exec python3 -m http.server 3000"
GOAL_N, GOAL_SECONDS = 100, 15.0  # the goal: 100 services serving within 15 s
POLL = 0.02  # seconds between the peer's HTTP checks of one server
HTTP_TIMEOUT = 2.0

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Timeline = list[tuple[float, PassReport]]  # each pass the engine reported, with when it ended


# --- the landscape ----------------------------------------------------------------------------


def landscape(n: int) -> str:
    lines = [f"# {n} trivial services (bench/converge.py)", "schemaVersion: v0.2", "run:"]
    for i in range(n):
        lines += [
            f"  s{i}:",
            "    steps:",
            f'      - command: "{SERVER}"',
            f"    healthEndpoint: http://localhost:{PORT}/",
            "    network:",
            "      paths:",
            f"        - port: {PORT}",
            f"          path: /s{i}",
        ]
    return "\n".join(lines) + "\n"


def local_workspace(ctx: AppContext, folder: Path) -> int:
    """A team and a local workspace on ``folder``, as ``terrace up`` makes them."""
    with ctx.db.session() as session:
        admin = session.scalar(
            select(User).where(User.cluster_admin.is_(True)).order_by(User.id).limit(1)
        )
        assert admin is not None  # bootstrap made one
        team = create_team(session, name="bench", admin_user_id=admin.id)
        row = add_workspace(
            session,
            Workspace(
                team_id=team.id, name="bench", source="local", path=str(folder), created_by=admin.id
            ),
        )
        return row.id


def deploy_now(ctx: AppContext, engine: Engine, workspace_id: int) -> None:
    with ctx.db.session() as session:
        row = session.get(Workspace, workspace_id)
        assert row is not None
        deploy(session, row, profile=None, vault=ctx.vault, plans=engine.plans, user_id=None)


# --- small tools ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (a value that was observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def rnd(value: float, digits: int = 3) -> float:
    return round(value, digits)


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else math.nan


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for."""
    t = os.times()
    return t.children_user + t.children_system


def machine_busy() -> tuple[float, float, float]:
    """(busy, stolen, total) jiffies of all CPUs so far (/proc/stat). Stolen time (a virtual
    machine's CPU given to another guest) is neither this machine's work nor idle."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7]
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle - steal, steal, total


def process_cpu(pids: Iterable[int]) -> float:
    """User + system CPU seconds the live processes ``pids`` have used so far (/proc)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def settle(limit: float, window: float = 0.5, idle_below: float = 0.15) -> float:
    """Wait (up to ``limit`` s) until the machine's CPUs are idle over a ``window``, so that
    what the previous phase left running (or other work on a shared machine) does not land
    on the next measurement. Returns how many cores were busy in the last window."""
    started = time.monotonic()
    while True:
        busy0, _, total0 = machine_busy()
        await asyncio.sleep(window)
        busy1, _, total1 = machine_busy()
        cores = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
        if cores < idle_below or time.monotonic() - started >= limit:
            return rnd(cores, 2)


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


async def http_ok(connect: Connect, path: str = "/") -> bool:
    """One ``GET path`` over a fresh connection made by ``connect()``; True on 2xx/3xx."""
    try:
        async with asyncio.timeout(HTTP_TIMEOUT):
            reader, writer = await connect()
            return await runtime_http_ok(reader, writer, path, "localhost")
    except (OSError, TimeoutError):
        return False


# --- the peer: the same servers, started directly ---------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


async def peer(n: int, folder: Path, deadline: float) -> dict[str, Any]:
    """Start N ``python3 -m http.server`` directly and wait until each answers ``GET /``."""
    python = shutil.which("python3", path=PATH) or "python3"  # the binary replicas run
    ports = free_ports(n)
    env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": str(folder)}
    cpu0, children0 = time.process_time(), children_cpu()
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []

    async def ready(port: int) -> float:
        while time.monotonic() < started + deadline:
            if await http_ok(functools.partial(asyncio.open_connection, "127.0.0.1", port)):
                return time.monotonic() - started
            await asyncio.sleep(POLL)
        return math.inf

    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [python, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                    cwd=folder,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        spawned = time.monotonic() - started
        times = await asyncio.gather(*(ready(p) for p in ports))
        cpu = time.process_time() - cpu0
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "seconds": rnd(max(times)),
        "spawn_seconds": rnd(spawned),
        "median_ready_seconds": rnd(statistics.median(times)),
        "failed": sum(1 for t in times if t == math.inf),
        "bench_cpu_seconds": rnd(cpu),
        "servers_cpu_seconds": rnd(children_cpu() - children0),
    }


# --- the engine -------------------------------------------------------------------------------


@dataclass
class Passes:
    """Every pass the engine reported, with when it ended (monotonic)."""

    reports: Timeline = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, report: PassReport) -> None:
        self.reports.append((time.monotonic(), report))
        self.changed.set()

    async def until(self, condition: Callable[[Timeline], bool], deadline: float) -> bool:
        """Wait until ``condition(reports)`` holds, or the monotonic ``deadline`` passes."""
        while not condition(self.reports):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True


class Warnings(logging.Handler):
    """Counts (and keeps a few of) the engine's warnings and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(record.getMessage()[:300])


def all_healthy(n: int) -> Callable[[Timeline], bool]:
    def check(reports: Timeline) -> bool:
        if not reports:
            return False
        r = reports[-1][1]
        return r.desired == n and r.replicas == n and r.healthy == n

    return check


def cpu_figures(reports: Iterable[PassReport], n: int) -> dict[str, Any]:
    cpu = [r.cpu_seconds for r in reports]
    if not cpu:
        return {"passes": 0}
    median, p95 = statistics.median(cpu), percentile(cpu, 95)
    return {
        "passes": len(cpu),
        "cpu_ms_median": rnd(median * 1e3, 2),
        "cpu_ms_p95": rnd(p95 * 1e3, 2),
        "cpu_ms_max": rnd(max(cpu) * 1e3, 2),
        "cpu_ms_total": rnd(sum(cpu) * 1e3, 1),
        "cpu_us_per_service_median": rnd(median / n * 1e6, 1),
        "cpu_us_per_service_p95": rnd(p95 / n * 1e6, 1),
    }


def describe(pid: int) -> str:
    """``(state) command line`` of a process, for the leftovers list."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, IndexError):
        return "(gone)"
    return f"({stat[0]}, parent {stat[1]}) {argv.strip()[:80]}"


def replica_pids(runtime: ProcessRuntime) -> dict[int, str | None]:
    """Every process of the runtime's replicas now, with its start time: all processes in its
    cgroups when sandboxed (bwrap and what runs inside), else each record's process."""
    found: dict[int, str | None] = {}
    if runtime.sandboxed:
        parent = Path("/sys/fs/cgroup/pids") / f"terrace-{runtime.prefix}"
        groups = [g for g in parent.iterdir() if g.is_dir()] if parent.is_dir() else []
        pids = [int(x) for g in groups for x in (g / "cgroup.procs").read_text().split()]
    else:
        records = [json.loads(p.read_text()) for p in runtime.records.glob("*.json")]
        pids = [r["pid"] for r in records if r.get("pid")]
    for pid in pids:
        found[pid] = start_time(pid)
    return found


def survivors(pids: dict[int, str | None], wait: float = 5.0) -> tuple[list[str], int]:
    """The processes of ``pids`` that still exist (same pid, same start time), after up to
    ``wait`` seconds: (live ones, described; zombies). When bwrap ends, the sandbox's inner
    init is re-parented to PID 1, which reaps it on its own schedule (seconds, on some
    machines): a zombie there is dead and holds nothing but its pid, so it is counted apart."""
    deadline = time.monotonic() + wait
    while True:
        left = {p: describe(p) for p, st in pids.items() if st is not None and start_time(p) == st}
        live = [f"process {p} {d}" for p, d in left.items() if not d.startswith(("(Z", "(gone"))]
        zombies = sum(1 for d in left.values() if d.startswith("(Z"))
        if live or not zombies or time.monotonic() >= deadline:
            return live, zombies
        time.sleep(0.1)


def leftovers(runtime: ProcessRuntime, pids: dict[int, str | None]) -> tuple[list[str], int]:
    """What is left of the landscape after stop_everything (should be nothing), and how many
    of its processes are zombies not yet reaped by PID 1."""
    left: list[str] = []
    if shutil.which("ip"):
        listing = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout
        left += [
            f"netns {line.split()[0]}"
            for line in listing.splitlines()
            if line.startswith(f"{runtime.prefix}-")
        ]
    live, zombies = survivors(pids)
    left += live
    left += [f"record {p.name}" for p in runtime.records.glob("*.json")]
    for controller in ("pids", "memory", "cpu"):
        parent = Path("/sys/fs/cgroup") / controller / f"terrace-{runtime.prefix}"
        if parent.is_dir():
            left += [f"cgroup {controller}/{d.name}" for d in parent.iterdir() if d.is_dir()]
            if not left:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # the runtime's empty parent group: this run made it
    return left, zombies


async def converge(n: int, steady: int, workdir: Path, deadline: float) -> dict[str, Any]:
    home, folder = workdir / "home", workdir / "app"
    folder.mkdir()
    (folder / "ci.yml").write_text(landscape(n))
    (folder / "index.html").write_text("ok\n")
    environ = {"TERRACE_HOME": str(home)}
    ctx = AppContext.from_environment(environ)
    bootstrap(ctx, environ)
    ctx = make_engine(ctx)
    engine = ctx.engine
    assert engine is not None
    runtime = engine.runtime
    assert isinstance(runtime, ProcessRuntime)
    workspace_id = await asyncio.to_thread(local_workspace, ctx, folder)

    passes = Passes()
    engine.on_pass.append(passes)
    warnings = Warnings()
    logging.getLogger("terrace").addHandler(warnings)
    task = asyncio.create_task(engine.run())
    result: dict[str, Any] = {"n": n, "sandboxed": runtime.sandboxed}
    pids: dict[int, str | None] = {}
    try:
        idle = await passes.until(bool, time.monotonic() + 30)
        assert idle, "the engine made no pass in 30 s"
        first = len(passes.reports)

        busy0, steal0, total0 = machine_busy()
        cpu0, children0 = time.process_time(), children_cpu()
        t0 = time.monotonic()
        await asyncio.to_thread(deploy_now, ctx, engine, workspace_id)
        deployed = time.monotonic() - t0
        engine.poke()
        ok = await passes.until(all_healthy(n), t0 + deadline)
        t1 = time.monotonic()
        cpu = time.process_time() - cpu0
        children = children_cpu() - children0
        busy1, steal1, total1 = machine_busy()
        pids = replica_pids(runtime)
        replicas_cpu = process_cpu(pids)  # each replica is one exec chain plus bwrap's init
        # From the pass that started the replicas (a pass may run while the deploy commits).
        after_deploy = passes.reports[first:]
        starting = next((i for i, (_, r) in enumerate(after_deploy) if r.started), 0)
        bringup = after_deploy[starting:]
        last = bringup[-1][1] if bringup else None

        def reached(k: int) -> float:
            return next((t - t0 for t, r in bringup if r.healthy >= k), math.nan)

        result["bringup"] = {
            "seconds": rnd(t1 - t0) if ok else None,
            "deploy_call_seconds": rnd(deployed),
            "start_pass_wall_seconds": rnd(bringup[0][1].wall_seconds) if bringup else None,
            "start_pass_cpu_seconds": rnd(bringup[0][1].cpu_seconds) if bringup else None,
            "first_healthy_seconds": rnd(reached(1)),
            "half_healthy_seconds": rnd(reached((n + 1) // 2)),
            "healthy_at_end": last.healthy if last else 0,
            "engine_cpu_seconds": rnd(cpu),
            "helper_commands_cpu_seconds": rnd(children),
            "replicas_cpu_seconds": rnd(replicas_cpu),
            "machine_cpu_seconds": rnd((busy1 - busy0) / os.sysconf("SC_CLK_TCK")),
            "stolen_cpu_seconds": rnd((steal1 - steal0) / os.sysconf("SC_CLK_TCK")),
            "machine_busy_cores": rnd(
                (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
            ),
            **cpu_figures((r for _, r in bringup), n),
            "timeline": [[rnd(t - t0, 2), r.healthy] for t, r in bringup],
        }
        if not ok:
            result["failed"] = f"only {last.healthy if last else 0} of {n} healthy in {deadline} s"
            return result

        # Serving: every service answers through its service address (what the router uses).
        t2 = time.monotonic()
        answers = await asyncio.gather(
            *(
                http_ok(functools.partial(runtime.connect, workspace_id, f"s{i}", PORT))
                for i in range(n)
            )
        )
        result["serving"] = {
            "answered": sum(answers),
            "of": n,
            "seconds_to_fetch_all": rnd(time.monotonic() - t2),
        }

        mark = len(passes.reports)
        ok = await passes.until(
            lambda r: len(r) >= mark + steady, time.monotonic() + steady * 3 + 30
        )
        steady_reports = [r for _, r in passes.reports[mark : mark + steady]]
        result["steady"] = {
            **cpu_figures(steady_reports, n),
            "wall_ms_median": rnd(
                statistics.median(r.wall_seconds for r in steady_reports) * 1e3, 1
            )
            if steady_reports
            else None,
            "all_healthy": all(r.healthy == n for r in steady_reports),
        }
        if not ok or not result["steady"]["all_healthy"]:
            result["failed"] = (
                f"steady state: {len(steady_reports)} of {steady} passes, not all healthy"
            )
    finally:
        engine.stop()
        await asyncio.gather(task, return_exceptions=True)
        pids.update({p: st for p, st in replica_pids(runtime).items() if p not in pids})
        t3 = time.monotonic()
        await engine.stop_everything()
        result["stop_seconds"] = rnd(time.monotonic() - t3)
        await runtime.close()
        logging.getLogger("terrace").removeHandler(warnings)
        result["leftovers"], result["zombies_left_to_pid1"] = leftovers(runtime, pids)
        result["engine_warnings"] = warnings.count
        if warnings.examples:
            result["warning_examples"] = warnings.examples
        ctx.db.dispose()
    return result


# --- one size ---------------------------------------------------------------------------------


async def one_size(n: int, steady: int, deadline: float, quiet: float) -> dict[str, Any]:
    load = os.getloadavg()[0]  # other work on the machine slows everything: say so
    busy: list[float] = []  # cores busy just before each phase (after waiting for quiet)
    with tempfile.TemporaryDirectory(prefix=f"terrace-bench-converge-{n}-") as tmp:
        workdir = Path(tmp)
        peer_dir = workdir / "peer"
        peer_dir.mkdir()
        (peer_dir / "index.html").write_text("ok\n")
        busy.append(await settle(quiet))
        before = await peer(n, peer_dir, deadline)
        busy.append(await settle(quiet))
        engine = await converge(n, steady, workdir, deadline)
        busy.append(await settle(quiet))
        after = await peer(n, peer_dir, deadline)
    floor = (before["seconds"] + after["seconds"]) / 2
    result = {**engine, "peer": {"before": before, "after": after, "seconds": rnd(floor)}}
    seconds = engine.get("bringup", {}).get("seconds")
    result["ratio_to_peer"] = ratio(seconds, floor) if seconds is not None else None
    result["loadavg_at_start"] = round(load, 2)
    result["busy_cores_before"] = {"peer_before": busy[0], "engine": busy[1], "peer_after": busy[2]}
    return result


# --- output -----------------------------------------------------------------------------------


def linear_fit(points: list[tuple[int, float]]) -> dict[str, float] | None:
    """Least squares ``y = fixed + per_service * N`` and the largest miss, relative to y."""
    if len({n for n, _ in points}) < 2:
        return None
    ns, ys = [float(n) for n, _ in points], [y for _, y in points]
    mean_n, mean_y = statistics.fmean(ns), statistics.fmean(ys)
    slope = sum((n - mean_n) * (y - mean_y) for n, y in zip(ns, ys, strict=True)) / sum(
        (n - mean_n) ** 2 for n in ns
    )
    fixed = mean_y - slope * mean_n
    miss = max(abs(fixed + slope * n - y) / y for n, y in zip(ns, ys, strict=True))
    return {"fixed_ms": rnd(fixed, 2), "per_service_ms": rnd(slope, 3), "max_miss": rnd(miss, 3)}


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>4} {'healthy s':>9} {'peer s':>7} {'ratio':>6} {'1st pass s':>10} "
        f"{'up ms/pass':>11} {'up p95':>7} {'steady ms':>9} {'p95':>6} "
        f"{'us/svc':>7} {'p95':>6} {'stop s':>7} {'left':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        up, st = r.get("bringup", {}), r.get("steady", {})

        def f(value: Any, width: int, digits: int = 2) -> str:
            return f"{value:>{width}.{digits}f}" if isinstance(value, float | int) else " " * width

        lines.append(
            f"{r['n']:>4} {f(up.get('seconds'), 9)} {f(r['peer']['seconds'], 7)} "
            f"{f(r.get('ratio_to_peer'), 6)} {f(up.get('start_pass_wall_seconds'), 10)} "
            f"{f(up.get('cpu_ms_median'), 11, 1)} {f(up.get('cpu_ms_p95'), 7, 1)} "
            f"{f(st.get('cpu_ms_median'), 9, 1)} {f(st.get('cpu_ms_p95'), 6, 1)} "
            f"{f(st.get('cpu_us_per_service_median'), 7, 0)} "
            f"{f(st.get('cpu_us_per_service_p95'), 6, 0)} "
            f"{f(r.get('stop_seconds'), 7)} {len(r['leftovers']):>5}"
        )
    lines.append(
        "healthy s: deploy -> every replica healthy (engine); peer s: the same servers started"
        " directly; ms/pass: engine CPU per reconcile pass (median), us/svc: steady median / N"
    )
    lines.append("CPU seconds during bring-up (2 cores: machine = 2 x wall at most):")
    for r in results:
        up, p = r.get("bringup", {}), r["peer"]
        if up.get("start_pass_cpu_seconds") is None or "replicas_cpu_seconds" not in up:
            continue
        servers = (p["before"]["servers_cpu_seconds"] + p["after"]["servers_cpu_seconds"]) / 2
        rest = up["machine_cpu_seconds"] - sum(
            up[k]
            for k in ("replicas_cpu_seconds", "engine_cpu_seconds", "helper_commands_cpu_seconds")
        )
        lines.append(
            f"  N={r['n']}: machine {up['machine_cpu_seconds']:.2f} = replicas "
            f"{up['replicas_cpu_seconds']:.2f} (peer's servers {servers:.2f}) + engine "
            f"{up['engine_cpu_seconds']:.2f} (start pass {up['start_pass_cpu_seconds']:.2f}) + "
            f"ip/nft {up['helper_commands_cpu_seconds']:.2f} + the rest {rest:.2f}; "
            f"stolen {up['stolen_cpu_seconds']:.2f}; cores busy before each phase: "
            f"{', '.join(str(v) for v in r['busy_cores_before'].values())}"
        )
    return "\n".join(lines)


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the clean-ups


def main() -> None:
    signal.signal(signal.SIGTERM, interrupted)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10, 50; 5 steady passes")
    parser.add_argument("--sizes", default=None, help="comma-separated N (10,50,100; quick 10,50)")
    parser.add_argument("--steady", type=int, default=None, help="steady passes (20; quick 5)")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to converge")
    parser.add_argument(
        "--quiet", type=float, default=None, help="most seconds to wait for idle CPUs (10; quick 3)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10,50" if args.quick else "10,50,100")).split(",")]
    steady = args.steady if args.steady is not None else (5 if args.quick else 20)
    quiet = args.quiet if args.quiet is not None else (3.0 if args.quick else 10.0)
    if not sizes or min(sizes) < 1 or steady < 1:
        parser.error("--sizes takes positive numbers; --steady must be positive")
    logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s: %(message)s")
    load = os.getloadavg()[0]
    results = []
    for n in sizes:
        print(f"N = {n} ...", file=sys.stderr)
        results.append(asyncio.run(one_size(n, steady, args.deadline, quiet)))
    print(table(results), file=sys.stderr)
    print(f"1-minute load average at start: {load:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    by_n = {r["n"]: r for r in results}
    goal = by_n.get(GOAL_N, {}).get("bringup", {}).get("seconds")
    steady_us = [r["steady"]["cpu_us_per_service_median"] for r in results if "steady" in r]
    summary = {
        "bench": "converge",
        "sizes": sizes,
        "steady_passes": steady,
        "healthy_seconds": {str(r["n"]): r.get("bringup", {}).get("seconds") for r in results},
        "peer_seconds": {str(r["n"]): r["peer"]["seconds"] for r in results},
        "ratio_to_peer": {str(r["n"]): r.get("ratio_to_peer") for r in results},
        "steady_cpu_ms_per_pass": {
            str(r["n"]): [r["steady"]["cpu_ms_median"], r["steady"]["cpu_ms_p95"]]
            for r in results
            if "steady" in r
        },
        "bringup_cpu_ms_per_pass": {
            str(r["n"]): [r["bringup"].get("cpu_ms_median"), r["bringup"].get("cpu_ms_p95")]
            for r in results
            if "bringup" in r
        },
        "steady_cpu_us_per_service": {
            str(r["n"]): r["steady"]["cpu_us_per_service_median"] for r in results if "steady" in r
        },
        "steady_per_service_spread": ratio(max(steady_us), min(steady_us)) if steady_us else None,
        "steady_cpu_ms_fit": linear_fit(
            [(r["n"], r["steady"]["cpu_ms_median"]) for r in results if "steady" in r]
        ),
        "goal_100_within_15s": None if goal is None else goal <= GOAL_SECONDS,
        "leftovers": sum(len(r["leftovers"]) for r in results),
        "runs": results,
        "sandboxed": all(r["sandboxed"] for r in results),
        "cpus": os.cpu_count(),
        "loadavg_at_start": round(load, 2),
        "python": sys.version.split()[0],
    }
    print(json.dumps(summary))
    if any("failed" in r or r["leftovers"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
