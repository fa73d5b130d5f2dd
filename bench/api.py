"""How long a mutating API call takes under a steady open-loop load, on SQLite and PostgreSQL,
against `GET /api/health` under the same load on the same server.

The mutating operation is the pair "set one workspace env var, then delete it" (`PUT` then
`DELETE /api/workspaces/{id}/env-vars`): each request authenticates its API key and writes in
its own transaction. The peer is the same pair shape made of two `GET /api/health` requests (one
`SELECT 1`, no authentication, no write), so the ratio isolates what authentication and the write
cost. Requests start on a fixed schedule (`--rate` operations per second) whatever the server
does, and latency counts from the scheduled start, so a slow response cannot slow the offered
load and hide itself (no coordinated omission). Any non-2xx answer or transport error counts as
an error.

For each store a fresh `terrace server --port 0` runs (SQLite in a temporary `TERRACE_HOME`;
PostgreSQL in a database created for the run and dropped after it). After a warm-up, the peer
runs for half the time, the mutating operation for the whole time, then the peer for the other
half, so slow drift affects both alike.

    .venv/bin/python bench/api.py [--quick] [--rate 50] [--seconds 30]
                                  [--stores sqlite,postgresql] [--postgres URL]

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the same server helper the tests use

from tests.support.live import LiveServer, start_server  # noqa: E402

STORES = ("sqlite", "postgresql")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUEST_TIMEOUT = 10.0  # seconds; a request slower than this is an error
ENV_VALUE = "v" * 32

# One request of an operation: given the client and the operation's number, send it.
Step = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass
class Samples:
    """Latencies in seconds of the operations that succeeded, and how many did not."""

    pair: list[float] = field(default_factory=list)  # scheduled start -> second answer
    first: list[float] = field(default_factory=list)  # scheduled start -> first answer
    second: list[float] = field(default_factory=list)  # second request sent -> its answer
    lag: list[float] = field(default_factory=list)  # scheduled start -> first request sent
    errors: int = 0
    problems: list[str] = field(default_factory=list)
    span: float = 0.0  # seconds over which the operations were started

    def extend(self, other: Samples) -> None:
        self.pair += other.pair
        self.first += other.first
        self.second += other.second
        self.lag += other.lag
        self.errors += other.errors
        self.problems += other.problems
        self.span += other.span


# --- the load ---------------------------------------------------------------------------------


async def operation(
    client: httpx.AsyncClient, steps: tuple[Step, Step], number: int, due: float, into: Samples
) -> None:
    loop = asyncio.get_running_loop()
    into.lag.append(loop.time() - due)
    answered: list[float] = []
    failed = False
    for step in steps:
        try:
            response = await step(client, number)
            if not response.is_success:
                failed = True
                into.problems.append(f"{response.request.method} {response.status_code}")
        except httpx.HTTPError as exc:
            failed = True
            into.problems.append(f"{type(exc).__name__}: {exc}")
        answered.append(loop.time())
    if failed:
        into.errors += 1
        return
    into.first.append(answered[0] - due)
    into.second.append(answered[1] - answered[0])
    into.pair.append(answered[1] - due)


async def open_loop(
    client: httpx.AsyncClient, steps: tuple[Step, Step], rate: float, count: int, first: int
) -> Samples:
    """Start ``count`` operations ``1/rate`` apart, never waiting for answers to start the next."""
    loop = asyncio.get_running_loop()
    samples = Samples()
    running: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.01
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(operation(client, steps, first + i, due, samples))
        running.add(task)
        task.add_done_callback(running.discard)
    samples.span = loop.time() - start + 1 / rate
    if running:
        await asyncio.gather(*running)
    return samples


def env_var_steps(workspace_id: int) -> tuple[Step, Step]:
    path = f"/workspaces/{workspace_id}/env-vars"

    def put(client: httpx.AsyncClient, number: int) -> Awaitable[httpx.Response]:
        return client.put(path, json=[{"name": f"BENCH_{number}", "value": ENV_VALUE}])

    def delete(client: httpx.AsyncClient, number: int) -> Awaitable[httpx.Response]:
        return client.request("DELETE", path, json=[f"BENCH_{number}"])

    return put, delete


def health_steps() -> tuple[Step, Step]:
    def get(client: httpx.AsyncClient, _number: int) -> Awaitable[httpx.Response]:
        return client.get("/health")

    return get, get


@dataclass
class Phases:
    warmup: float
    seconds: float
    rate: float


async def measure(
    server: LiveServer, admin_key: str, workdir: Path, phases: Phases
) -> dict[str, Any]:
    """Set up a team and a workspace, warm up, then peer / mutating / peer."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=server.url + "/api",
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=REQUEST_TIMEOUT,
        limits=limits,
    ) as client:
        team = await client.post("/teams", json={"name": "bench"})
        team.raise_for_status()
        folder = workdir / "workspace"
        folder.mkdir()
        workspace = await client.post(
            "/workspaces", json={"teamId": team.json()["id"], "name": "bench", "path": str(folder)}
        )
        workspace.raise_for_status()
        mutating = env_var_steps(workspace.json()["id"])
        peer = health_steps()
        rate = phases.rate

        def count(seconds: float) -> int:
            return max(1, round(rate * seconds))

        number = 0

        async def run(steps: tuple[Step, Step], seconds: float) -> Samples:
            nonlocal number
            n = count(seconds)
            samples = await open_loop(client, steps, rate, n, number)
            number += n
            return samples

        await run(peer, phases.warmup / 2)
        await run(mutating, phases.warmup)
        pid = server.process.pid
        cpu = [server_cpu_seconds(pid)]
        baseline = await run(peer, phases.seconds / 2)
        cpu.append(server_cpu_seconds(pid))
        client_cpu = time.process_time()
        writes = await run(mutating, phases.seconds)
        client_cpu = time.process_time() - client_cpu
        cpu.append(server_cpu_seconds(pid))
        baseline.extend(await run(peer, phases.seconds / 2))
        cpu.append(server_cpu_seconds(pid))
    known = [c for c in cpu if c is not None]
    write_cpu = baseline_cpu = None
    if len(known) == len(cpu):
        write_cpu = known[2] - known[1]
        baseline_cpu = (known[1] - known[0]) + (known[3] - known[2])
    result = summarise(writes, baseline, write_cpu=write_cpu, baseline_cpu=baseline_cpu)
    result["client_cpu_ms_per_op"] = ms(client_cpu / max(1, result["ops"]))
    return result


# --- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (a value that was observed), in the unit of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def ms(value: float) -> float:
    return round(value * 1e3, 2)


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else math.nan


def summarise(
    writes: Samples, baseline: Samples, *, write_cpu: float | None, baseline_cpu: float | None
) -> dict[str, Any]:
    ops = len(writes.pair) + writes.errors
    peer_ops = len(baseline.pair) + baseline.errors
    health_requests = baseline.first + baseline.second
    result: dict[str, Any] = {
        "p50_ms": ms(percentile(writes.pair, 50)),
        "p99_ms": ms(percentile(writes.pair, 99)),
        "max_ms": ms(max(writes.pair, default=math.nan)),
        "errors": writes.errors,
        "ops": ops,
        "achieved_rate": round(ops / writes.span, 1) if writes.span else None,
        "put_p50_ms": ms(percentile(writes.first, 50)),
        "put_p99_ms": ms(percentile(writes.first, 99)),
        "delete_p50_ms": ms(percentile(writes.second, 50)),
        "delete_p99_ms": ms(percentile(writes.second, 99)),
        "baseline_p50_ms": ms(percentile(baseline.pair, 50)),
        "baseline_p99_ms": ms(percentile(baseline.pair, 99)),
        "baseline_max_ms": ms(max(baseline.pair, default=math.nan)),
        "baseline_errors": baseline.errors,
        "baseline_ops": peer_ops,
        "health_get_p50_ms": ms(percentile(health_requests, 50)),
        "health_get_p99_ms": ms(percentile(health_requests, 99)),
        "p50_ratio_to_baseline": ratio(percentile(writes.pair, 50), percentile(baseline.pair, 50)),
        "p99_ratio_to_baseline": ratio(percentile(writes.pair, 99), percentile(baseline.pair, 99)),
        "max_start_lag_ms": ms(max(writes.lag + baseline.lag, default=0.0)),
    }
    if write_cpu is not None and baseline_cpu is not None and ops and peer_ops:
        result["server_cpu_ms_per_op"] = ms(write_cpu / ops)
        result["baseline_server_cpu_ms_per_op"] = ms(baseline_cpu / peer_ops)
    if writes.problems or baseline.problems:
        result["error_examples"] = sorted(set(writes.problems + baseline.problems))[:5]
    return result


def server_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / ticks


# --- servers and stores -----------------------------------------------------------------------


@contextmanager
def postgres_database(admin_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh database for one run (its URL and the server's settings), dropped afterwards."""
    name = f"terrace_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        settings = {
            key: str(conn.execute(f"SHOW {key}").fetchone()[0])  # type: ignore[index]
            for key in ("server_version", "fsync", "synchronous_commit")
        }
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name, settings
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_store(store: str, phases: Phases, postgres_url: str) -> dict[str, Any]:
    admin_key = "bench_" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix=f"terrace-bench-{store}-") as tmp:
        workdir = Path(tmp)
        home = workdir / "home"
        if store == "sqlite":
            about = {"sqlite_version": sqlite3.sqlite_version}
            return about | run_server(home, admin_key, None, workdir, phases)
        with postgres_database(postgres_url) as (url, settings):
            about = {f"postgres_{k}": v for k, v in settings.items()}
            return about | run_server(home, admin_key, url, workdir, phases)


def run_server(
    home: Path, admin_key: str, database_url: str | None, workdir: Path, phases: Phases
) -> dict[str, Any]:
    server = start_server(home, database_url, TERRACE_ADMIN_KEY=admin_key)
    try:
        result = asyncio.run(measure(server, admin_key, workdir, phases))
    except Exception:
        print(f"server log:\n{server.log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()
    locked = server.log.read_text(errors="replace").count("database is locked")
    if locked:
        result["log_database_locked"] = locked
    return result


# --- output -----------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'store':11} {'operation':24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'errors':>6} {'p50 x':>6} {'p99 x':>6}"
    )
    lines = [head, "-" * len(head)]
    for store, r in results.items():
        rows = [
            ("PUT+DELETE env var", r["p50_ms"], r["p99_ms"], r["max_ms"], r["errors"]),
            ("  PUT alone", r["put_p50_ms"], r["put_p99_ms"], None, None),
            ("  DELETE alone", r["delete_p50_ms"], r["delete_p99_ms"], None, None),
            (
                "peer: 2 x GET health",
                r["baseline_p50_ms"],
                r["baseline_p99_ms"],
                r["baseline_max_ms"],
                r["baseline_errors"],
            ),
            ("  GET health alone", r["health_get_p50_ms"], r["health_get_p99_ms"], None, None),
        ]
        for i, (label, p50, p99, top, errors) in enumerate(rows):
            ratios = (
                f" {r['p50_ratio_to_baseline']:>6.2f} {r['p99_ratio_to_baseline']:>6.2f}"
                if i == 0
                else ""
            )
            lines.append(
                f"{store if i == 0 else '':11} {label:24} {p50:8.2f} {p99:8.2f} "
                f"{'' if top is None else f'{top:8.2f}':>8} "
                f"{'' if errors is None else errors:>6}{ratios}".rstrip()
            )
        lines.append(
            f"{'':11} {r['ops']} operations at {r['achieved_rate']}/s;"
            f" latest start {r['max_start_lag_ms']:.2f} ms after schedule"
        )
        cpu = f"load generator {r['client_cpu_ms_per_op']:.2f} ms"
        if "server_cpu_ms_per_op" in r:
            cpu = (
                f"server {r['server_cpu_ms_per_op']:.2f} ms"
                f" (peer {r['baseline_server_cpu_ms_per_op']:.2f} ms), {cpu}"
            )
        lines.append(f"{'':11} CPU per operation: {cpu}")
    return "\n".join(lines)


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the clean-ups


def main() -> None:
    signal.signal(signal.SIGTERM, interrupted)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s per store, under a minute")
    parser.add_argument("--rate", type=float, default=50.0, help="operations per second")
    parser.add_argument("--seconds", type=float, default=None, help="measured time (30; quick 8)")
    parser.add_argument(
        "--stores", default=",".join(STORES), help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="a PostgreSQL URL allowed to create databases"
    )
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = sorted(set(stores) - set(STORES))
    if unknown or not stores or args.rate <= 0:
        parser.error(f"--stores takes {','.join(STORES)}; --rate must be positive")
    seconds = args.seconds if args.seconds is not None else (8.0 if args.quick else 30.0)
    phases = Phases(warmup=2.0, seconds=seconds, rate=args.rate)
    load = os.getloadavg()[0]  # a busy machine makes the tail meaningless: say so
    results: dict[str, dict[str, Any]] = {}
    for store in stores:
        print(f"{store}: warm-up {phases.warmup:g} s, then {seconds:g} s ...", file=sys.stderr)
        results[store] = bench_store(store, phases, args.postgres)
    print(table(results), file=sys.stderr)
    print(f"1-minute load average at start: {load:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    failed = sum(r["errors"] + r["baseline_errors"] for r in results.values())
    result = {
        "bench": "api",
        "rate": args.rate if args.rate % 1 else int(args.rate),
        "seconds": seconds if seconds % 1 else int(seconds),
        **results,
        "cpus": os.cpu_count(),
        "loadavg_at_start": round(load, 2),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
