"""What the router's data planes cost against nginx, and what waking a sleeping service adds.

Throughput and added latency against nginx in front of the same backend, and how long a request
to a sleeping service waits beyond the app's own boot.

**Proxying.** One backend, Debian nginx (one worker, ``access_log off``) answering
``GET /`` with a 13-byte static body (``return 200 "hello, world\\n"``) on a loopback port. In
front of it, on their own loopback ports, each as its own process tree:

- ``direct``: no proxy, ``wrk`` talks to the backend itself (the floor);
- ``nginx``: a second nginx with ``proxy_pass`` to an ``upstream`` with ``keepalive 32``,
  ``proxy_http_version 1.1`` and ``proxy_set_header Connection ""`` (upstream keep-alive, as
  production runs it), doing to the request what our planes do (``X-Forwarded-For``,
  ``-Proto``, ``-Port`` and ``X-Request-Id`` set, a client's ``X-Forwarded-Host`` and
  ``-Prefix`` removed; the response passed as it came), ``worker_processes auto`` (Debian's
  default: 2 here);
- ``haproxy`` and ``builtin``: our planes (:func:`terrace.router.planes.make_plane`), each in a
  process of its own (``bench/router.py --serve-plane NAME``: one event loop, uvloop when
  installed, ``gc.freeze()`` after start-up as ``terrace server`` does), following a route
  table with one route ``/`` to one pool holding the backend. The HAProxy plane runs its own
  ``haproxy`` child, configured as the plane configures it.

Load is ``wrk`` with keep-alive, one thread (``-t1``); a Lua ``done`` hook prints wrk's exact
latency percentiles. Two phases, each run peer by peer, the sequence repeated ``--rounds``
times (the order rotated each round), so slow drift of the machine lands on every peer alike:

- throughput: ``-c32`` for ``--seconds`` (after a short warm-up per peer): req/s, latency
  percentiles, and the CPU the peer's process tree used (per request, and in cores);
- one connection: ``-c1``: latency p50/p99; a peer's *added latency* is its p50 (p99) minus
  direct's.

Figures per peer are medians over the rounds; a ratio to nginx (and an added latency) is
taken within each round, between runs a few seconds apart, then the median over the rounds:
on this VM the speed of the same run drifts by up to 1.6x within minutes, and one round's
ratio can be anywhere from 0.7 to 1.4 for two peers of equal cost, hence many short rounds.

Everything shares the machine's CPUs (2 here): wrk, the backend, the proxy, the kernel's
loopback work. So each run also records who used them: the proxy's process tree, the backend,
wrk, interrupt time (softirq: much of loopback TCP), and the rest (other processes on the
machine). Before each run the script waits (up to 5 s) for idle CPUs, and a run during which
other processes used more than 0.25 cores is tried again (``--retries``), keeping the least
disturbed one; the table counts the runs that stayed disturbed.

Goals: the HAProxy plane at >= 1.0x nginx's req/s, the builtin plane at >= 0.35x.

**Waking.** A real ``terrace up`` (as ``tests/up/test_rollouts.py`` runs it: a temporary
``TERRACE_HOME``, ``--skip-tests``, ``--router PLANE``) of a landscape with one service
(``python3 app.py``, the test's small ``http.server`` app, one replica, ``sleepAfter: 1s``, a
``healthEndpoint``, routed at ``/``). Each time the API reports it asleep with no instance (and
no process of it is left), the floor is measured once: the app's standalone boot, ``python3
app.py`` spawned directly (no sandbox, a free port) until it answers ``GET /`` (polled every
2 ms); then one ``GET /`` on a fresh connection through the router is timed until its whole
answer. The first wake after ``terrace up`` starts (and its boot) is a warm-up, reported apart.
Overhead = wake p50 (p99) minus the median of the boots measured beside the wakes (the machine's
speed drifts, so the floor is taken at the same time). Goal: overhead p50 <= 30 ms, p99 <=
100 ms (with 20 wakes, p99 is the slowest). It needs root (the replica runs sandboxed, as in
production); without root it is skipped, and says so.

Each wake is also taken apart: the app appends wall-clock marks to a file in its workspace
(when its code starts, when it listens, its first health check, its first other request), and
the replica's first process's start time comes from /proc (to 1/100 s). So a wake is: ``spawn``
(the request reaches the router, the engine is told, plans and prepares the sandbox, spawns it),
``start`` (sandbox set-up and the interpreter's start until the app's first line), ``listen``
(the app's own imports and bind), ``health`` (until the engine's first health check reaches
it), ``request`` (the engine publishes the replica, the held request is forwarded), ``answer``.
A standalone boot has ``start``, ``listen``, and ``health`` (there: until the first poll).

    .venv/bin/python bench/router.py [--quick] [--rounds 10] [--seconds 3] [--connections 32]
                                     [--wakes 20] [--peers direct,nginx,haproxy,builtin]
                                     [--retries 2] [--quiet 10] [--nginx-workers auto]
                                     [--no-wake] [--no-load]

``--peers`` also takes ``haproxy@N``: the HAProxy plane with N threads (it runs 1 unless told
more), measured in the same rounds as the others (``--peers nginx,haproxy,haproxy@2
--no-wake`` compares one thread with two).

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import http.client
import importlib
import importlib.metadata
import json
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the `terrace up` helper the tests use

NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
BODY = b"hello, world\n"
PEERS = ("direct", "nginx", "haproxy", "builtin")
PLANES = ("haproxy", "builtin")
GOAL_RATIO = {"haproxy": 1.0, "builtin": 0.35}  # req/s, ours / nginx's
GOAL_WAKE_OVERHEAD_MS = {"p50": 30.0, "p99": 100.0}
SLEEP_AFTER = "1s"
START_TIMEOUT = 15.0  # seconds for a peer to answer after it is started

# wrk prints one JSON line at the end (latency in microseconds, exact percentiles).
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "p50": %d, ' ..
    '"p90": %d, "p99": %d, "p999": %d, "max": %d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

# The app of tests/up/test_rollouts.py, plus marks: with MARKS set, it appends to that file (in
# its working directory, the workspace) when its code starts, when it listens, and when its first
# health check and first other request arrive, so that a wake can be taken apart.
APP = """\
import time; T0 = time.time()
import json, os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

handled = 0
lock = threading.Lock()
marked = set()

def mark(event, when=None):
    if os.environ.get("MARKS") and event not in marked:
        marked.add(event)
        with open(os.environ["MARKS"], "a") as out:
            out.write(f"{os.getpid()} {event} {when or time.time():.6f}\\n")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global handled
        if self.path != "/healthz":
            with lock:
                handled += 1
        mark("health" if self.path == "/healthz" else "request")
        body = json.dumps({
            "version": os.environ["VERSION"], "slot": os.environ["HOSTNAME"],
            "handled": handled,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
mark("main", T0)
mark("listen")
server.serve_forever()
"""

LANDSCAPE = f"""\
# One service that sleeps after {SLEEP_AFTER} without a request (bench/router.py)
schemaVersion: v0.2
run:
  app:
    steps:
      - command: python3 app.py
    replicas: 1
    sleepAfter: {SLEEP_AFTER}
    healthEndpoint: http://localhost:3000/healthz
    network:
      ports:
        - port: 3000
          isPublic: false
      paths:
        - port: 3000
          path: /
    env:
      VERSION: "1"
      MARKS: marks.log
"""


# --- small tools ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (a value that was observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def rnd(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In a child before exec: SIGTERM it when this process ends, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tree(root: int) -> list[int]:
    """``root`` and every process descended from it (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def machine_busy() -> tuple[int, int, int]:
    """(busy, of which interrupts, total) jiffies of all CPUs so far (/proc/stat; stolen time
    counts as neither). Interrupt time (irq, softirq: much of loopback TCP) is no process's."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, irq, steal = fields[3] + fields[4], fields[5] + fields[6], fields[7]
    total = sum(fields[:8])
    return total - idle - steal, irq, total - steal


def settle(limit: float, window: float = 0.5, idle_below: float = 0.15) -> float:
    """Wait (up to ``limit`` s) until the CPUs are idle over a ``window``, so that other work on
    the machine does not land on the measurement; how many cores were busy in the last window."""
    started = time.monotonic()
    while True:
        busy0, _, total0 = machine_busy()
        time.sleep(window)
        busy1, _, total1 = machine_busy()
        cores = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
        if cores < idle_below or time.monotonic() - started >= limit:
            return round(cores, 2)


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for (wrk)."""
    t = os.times()
    return t.children_user + t.children_system


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the live processes ``pids`` have used so far."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One ``GET`` on a fresh connection to 127.0.0.1:``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_answering(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(port, timeout=1.0)[0] == 200:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not answer on port {port} within {START_TIMEOUT:g} s")


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the peers --------------------------------------------------------------------------------


def nginx_conf(prefix: Path, port: int, workers: str, server: str, http_extra: str = "") -> str:
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{http_extra}    server {{
        listen 127.0.0.1:{port} backlog=1024;
{server}    }}
}}
"""


BACKEND_SERVER = """\
        location / {
            default_type text/plain;
            return 200 "hello, world\\n";
        }
"""

PROXY_SERVER = """\
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host "";
            proxy_set_header X-Forwarded-Prefix "";
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Request-Id $request_id;
        }
"""


@dataclass
class Peer:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None  # None: this is the backend itself
    root: int  # the process tree whose CPU is the peer's
    about: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return tree(self.root)


def start_nginx(workdir: Path, name: str, workers: str, server: str, extra: str = "") -> Peer:
    prefix = workdir / name
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, workers, server, extra))
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(prefix / "stderr.log", "wb"),  # noqa: SIM115 (the child keeps it)
        preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads here yet)
    )
    try:
        wait_answering(port, process, f"nginx ({name})")
    except RuntimeError as exc:
        stop(process)
        log = (
            (prefix / "error.log").read_text(errors="replace")[-2000:]
            if (prefix / "error.log").exists()
            else ""
        )
        raise RuntimeError(f"{exc}\n{log}") from None
    return Peer(name, port, process, process.pid, {"worker_processes": workers})


def start_plane(workdir: Path, name: str, backend_port: int) -> Peer:
    """``bench/router.py --serve-plane NAME`` in a process of its own; waits for its port.
    ``haproxy@N``: the HAProxy plane with N threads."""
    plane, threads = split_peer(name)
    state = workdir / f"plane-{name}"
    state.mkdir()
    log = state / "runner.log"
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-plane",
            plane,
            "--backend",
            f"127.0.0.1:{backend_port}",
            "--state-dir",
            str(state),
            *(["--threads", str(threads)] if threads else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=open(log, "wb"),  # noqa: SIM115 (the child keeps it)
        cwd=ROOT,
        preexec_fn=die_with_parent,  # noqa: PLW1509
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()  # "listening PORT {json}" or nothing
    if not line.startswith("listening "):
        stop(process)
        raise RuntimeError(
            f"the {name} plane did not start:\n{log.read_text(errors='replace')[-3000:]}"
        )
    _, port, about = line.split(" ", 2)
    peer = Peer(name, int(port), process, process.pid, json.loads(about))
    wait_answering(peer.port, process, f"the {name} plane")
    return peer


def serve_plane(name: str, backend: str, state_dir: Path, threads: int | None) -> None:
    """The runner of ``--serve-plane``: one plane on a free port, routing ``/`` to ``backend``,
    until SIGTERM or SIGINT. Prints ``listening PORT {about}`` once it routes."""
    from terrace.router.planes import make_plane  # noqa: PLC0415
    from terrace.router.table import Backend, Pool, Route, RouteTable  # noqa: PLC0415

    host, port = backend.rsplit(":", 1)
    table = RouteTable(
        [Route(prefix="/", pool="bench")],
        [Pool("bench", (Backend("backend-1", host, int(port)),))],
    )

    async def main(loop_name: str) -> None:
        plane = make_plane(name, state_dir=state_dir, threads=threads)
        bound = await plane.start("127.0.0.1", 0)
        await plane.apply(table)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        gc.collect()
        gc.freeze()  # as `terrace server` does after start-up
        about: dict[str, Any] = {"loop": loop_name, "pid": os.getpid()}
        if name == "haproxy":
            about["haproxy_threads"] = threads or default_threads()
        print(f"listening {bound} {json.dumps(about)}", flush=True)
        try:
            await stopping.wait()
        finally:
            await plane.close()

    try:
        import uvloop  # noqa: PLC0415

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        loop_name = f"uvloop {importlib.metadata.version('uvloop')}"
    except ImportError:
        loop_factory, loop_name = None, "asyncio"
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(loop_name))


@contextlib.contextmanager
def peers(workdir: Path, wanted: list[str], proxy_workers: str) -> Iterator[dict[str, Peer]]:
    """The backend and each wanted peer in front of it, stopped on the way out."""
    started: list[Peer] = []
    found: dict[str, Peer] = {}
    try:
        backend = start_nginx(workdir, "backend", "1", BACKEND_SERVER)
        started.append(backend)
        status, body = get(backend.port)
        assert (status, body) == (200, BODY), (status, body)
        for name in wanted:
            if name == "direct":
                found[name] = Peer("direct", backend.port, None, backend.root)
                continue
            if name == "nginx":
                upstream = (
                    "    upstream backend {\n"
                    f"        server 127.0.0.1:{backend.port};\n"
                    "        keepalive 32;\n"
                    "        keepalive_requests 1000000;\n"
                    "    }\n"
                )
                peer = start_nginx(workdir, "nginx", proxy_workers, PROXY_SERVER, upstream)
            else:
                peer = start_plane(workdir, name, backend.port)
            started.append(peer)
            status, body = get(peer.port)
            if (status, body) != (200, BODY):
                raise RuntimeError(f"{name}: GET / answered {status} {body[:100]!r}")
            found[name] = peer
        found["backend"] = backend
        yield found
    finally:
        for peer in reversed(started):
            if peer.process is not None:
                stop(peer.process)


def split_peer(name: str) -> tuple[str, int | None]:
    """A peer's name as (peer, threads): ``haproxy@N`` is the HAProxy plane with N threads;
    ValueError for anything but that and :data:`PEERS`."""
    peer, at, threads = name.partition("@")
    if not at and peer in PEERS:
        return peer, None
    if peer == "haproxy" and threads.isdigit() and int(threads) >= 1:
        return peer, int(threads)
    raise ValueError(name)


def default_threads() -> int:
    from terrace.router.haproxy_config import DEFAULT_THREADS  # noqa: PLC0415

    return DEFAULT_THREADS


def plane_unavailable(name: str) -> str | None:
    """Why the plane ``name`` cannot run here (None: it can)."""
    try:
        from terrace.router.planes import available  # noqa: PLC0415

        if not available(name):
            return f"{name}: its binary is not installed"
        importlib.import_module(f"terrace.router.{name}")
    except ImportError as exc:
        return f"{name}: {exc}"
    return None


# --- load -------------------------------------------------------------------------------------


def wrk(port: int, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    """One ``wrk -t1`` run against 127.0.0.1:``port``: the Lua hook's figures plus req/s."""
    out = subprocess.run(
        [
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next((s for s in reversed(out.stdout.splitlines()) if s.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures:\n{out.stdout}\n{out.stderr}")
    figures: dict[str, Any] = json.loads(line)
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["error_count"] = sum(figures["errors"].values())
    return figures


def rotated(items: list[str], turn: int) -> list[str]:
    k = turn % len(items)
    return items[k:] + items[:k]


DISTURBED = 0.25
"""Cores that processes other than the peer, the backend and wrk used during a run, above which
the run counts as disturbed by other work on the machine (and is tried again, ``--retries``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    seconds: float
    connections: int
    warmup: float
    script: Path
    quiet: float
    """Most seconds to wait for idle CPUs before each run."""
    retries: int


def measured_run(peer: Peer, backend: Peer, connections: int, load: Load) -> dict[str, Any]:
    """One wrk run with who used the CPUs meanwhile; tried again (up to ``load.retries``
    times) while other work disturbs it, keeping the least disturbed run."""
    best: dict[str, Any] | None = None
    for attempt in range(load.retries + 1):
        idle_before = settle(load.quiet) if load.quiet > 0 else None
        pids, backend_pids = peer.pids(), backend.pids()
        cpu0, bcpu0, wcpu0 = cpu_seconds(pids), cpu_seconds(backend_pids), children_cpu()
        busy0, irq0, total0 = machine_busy()
        t0 = time.monotonic()
        run = wrk(peer.port, connections, load.seconds, load.script)
        wall = time.monotonic() - t0
        busy1, irq1, total1 = machine_busy()
        share = (os.cpu_count() or 1) / max(1, total1 - total0)
        cpu = cpu_seconds(pids) - cpu0 if peer.process is not None else 0.0
        run["proxy_cores"] = cpu / wall
        run["proxy_cpu_us_per_request"] = cpu / max(1, run["requests"]) * 1e6
        run["backend_cores"] = (cpu_seconds(backend_pids) - bcpu0) / wall
        run["wrk_cores"] = (children_cpu() - wcpu0) / wall
        run["machine_cores"] = (busy1 - busy0) * share
        run["interrupt_cores"] = (irq1 - irq0) * share
        run["other_cores"] = max(
            0.0,
            run["machine_cores"]
            - run["interrupt_cores"]
            - run["proxy_cores"]
            - run["backend_cores"]
            - run["wrk_cores"],
        )
        run["busy_cores_before"] = idle_before
        run["attempts"] = attempt + 1
        if best is None or run["other_cores"] < best["other_cores"]:
            best = run
        if run["other_cores"] <= DISTURBED:
            break
    assert best is not None
    best["attempts"] = attempt + 1
    return best


def load_phases(
    found: dict[str, Peer], names: list[str], rounds: int, load: Load
) -> dict[str, Any]:
    """Throughput (``-c connections``) then one-connection latency, peer by peer, ``rounds``
    times each; every run's figures, per peer."""
    backend = found["backend"]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"busy": {}, "single": {}}
    for name in names:  # warm-up: upstream connections made, caches filled
        wrk(found[name].port, load.connections, load.warmup, load.script)
    for phase, connections in (("busy", load.connections), ("single", 1)):
        for turn in range(rounds):
            for name in rotated(names, turn):
                run = measured_run(found[name], backend, connections, load)
                runs[phase].setdefault(name, []).append(run)
                print(
                    f"  round {turn + 1} -c{connections:<2} {name:8} {run['rps']:7.0f} req/s"
                    f"  p50 {run['latency_us']['p50']:5} us  p99 {run['latency_us']['p99']:6} us"
                    f"  cores: proxy {run['proxy_cores']:.2f} backend {run['backend_cores']:.2f}"
                    f" wrk {run['wrk_cores']:.2f} irq {run['interrupt_cores']:.2f}"
                    f" other {run['other_cores']:.2f} (try {run['attempts']})"
                    f"  errors {run['error_count']}",
                    file=sys.stderr,
                )
    return runs


def load_figures(runs: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Medians over the rounds, ratios to nginx, latency added to direct's."""

    def med(rs: list[dict[str, Any]], get_: Callable[[dict[str, Any]], float]) -> float | None:
        return median([get_(r) for r in rs])

    per_peer: dict[str, Any] = {}
    for name in names:
        busy, single = runs["busy"][name], runs["single"][name]
        per_peer[name] = {
            "rps": rnd(med(busy, lambda r: r["rps"]), 0),
            "rps_rounds": [round(r["rps"]) for r in busy],
            "latency_us": {
                p: rnd(med(busy, lambda r, p=p: r["latency_us"][p]), 0)  # type: ignore[misc]
                for p in ("p50", "p90", "p99", "p999", "max")
            },
            "one_connection_rps": rnd(med(single, lambda r: r["rps"]), 0),
            "one_connection_latency_us": {
                p: rnd(med(single, lambda r, p=p: r["latency_us"][p]), 0)  # type: ignore[misc]
                for p in ("p50", "p90", "p99", "p999", "max")
            },
            "proxy_cores": rnd(med(busy, lambda r: r["proxy_cores"]), 2),
            "proxy_cpu_us_per_request": rnd(med(busy, lambda r: r["proxy_cpu_us_per_request"]), 1),
            "backend_cores": rnd(med(busy, lambda r: r["backend_cores"]), 2),
            "wrk_cores": rnd(med(busy, lambda r: r["wrk_cores"]), 2),
            "machine_cores": rnd(med(busy, lambda r: r["machine_cores"]), 2),
            "interrupt_cores": rnd(med(busy, lambda r: r["interrupt_cores"]), 2),
            "other_cores": rnd(med(busy, lambda r: r["other_cores"]), 2),
            "errors": sum(r["error_count"] for r in busy + single),
            "disturbed_runs": sum(1 for r in busy + single if r["other_cores"] > DISTURBED),
            "one_connection_other_cores": rnd(med(single, lambda r: r["other_cores"]), 2),
        }
    # The machine's speed drifts over minutes (a VM: the same run varied by 1.6x within ten
    # minutes), so each ratio and difference is taken within a round, then the median.
    rps = {n: per_peer[n]["rps"] for n in names}
    ratios: dict[str, Any] = {}
    if "nginx" in names:
        nginx = runs["busy"]["nginx"]
        for name in names:
            if name != "nginx":
                per_round = [
                    r["rps"] / n["rps"] for r, n in zip(runs["busy"][name], nginx, strict=True)
                ]
                per_peer[name]["ratio_to_nginx_rounds"] = [round(x, 2) for x in per_round]
                ratios[name] = rnd(median(per_round), 2)
    added: dict[str, Any] = {}
    if "direct" in names:
        direct = runs["single"]["direct"]
        for name in names:
            if name != "direct":
                mine = runs["single"][name]
                added[name] = {
                    p: rnd(
                        median(
                            [
                                r["latency_us"][p] - d["latency_us"][p]
                                for r, d in zip(mine, direct, strict=True)
                            ]
                        ),
                        0,
                    )
                    for p in ("p50", "p99")
                }
    return {"rps": rps, "ratio_to_nginx": ratios, "added_latency_us": added, "peers": per_peer}


# --- waking -----------------------------------------------------------------------------------


class Marks:
    """The app's marks file: the lines appended since the last read, as {event: time}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> dict[str, float]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                text = f.read()
        except FileNotFoundError:
            return {}
        self.offset += len(text)
        found: dict[str, float] = {}
        for line in text.decode().splitlines():
            _pid, event, when = line.split()
            found.setdefault(event, float(when))
        return found


def started_at(pids: list[int]) -> float | None:
    """When the earliest of ``pids`` started, as a ``time.time()`` value (to 1/CLK_TCK s)."""
    ticks = os.sysconf("SC_CLK_TCK")
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    found = []
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found.append(int(stat[19]) / ticks + boot)
    return min(found, default=None)


def phases(marks: dict[str, float], sent: float, answered: float) -> dict[str, float] | None:
    """A wake (or a boot) taken apart, in ms: ``sent`` -> the replica's first process is
    spawned (``spawn``, only for a wake: from /proc, to 10 ms), -> the app's code starts
    (``start``), -> it listens (``listen``), -> the first health check (``health``), -> the
    first other request reaches it (``request``), -> the answer is in (``answer``)."""
    order: tuple[str, ...] = ("spawn", "main", "listen", "health", "request")
    if "spawn" not in marks:
        order = order[1:]
    if not all(e in marks for e in order):
        return None
    times = [sent, *(marks[e] for e in order), answered]
    names = ("spawn", "start", "listen", "health", "request", "answer")[-len(order) - 1 :]
    return {
        n: round((b - a) * 1e3, 2) for n, a, b in zip(names, times[:-1], times[1:], strict=True)
    }


class Standalone:
    """The floor: ``python3 app.py`` spawned directly (no sandbox), until it answers."""

    def __init__(self, folder: Path) -> None:
        from terrace.runtimes.sandbox import PATH  # noqa: PLC0415

        folder.mkdir()
        (folder / "app.py").write_text(APP)
        self.folder = folder
        self.path = PATH
        self.python = shutil.which("python3", path=PATH) or "python3"  # the binary replicas run
        self.marks = Marks(folder / "marks.log")
        self.count = 0

    def boot(self) -> tuple[float, dict[str, float] | None]:
        """Seconds from spawning it until it answers ``GET /`` (polled every 2 ms), and the
        boot taken apart (``health`` is then until the first poll that got an answer)."""
        self.count += 1
        port = free_port()
        env = {
            "PATH": self.path,
            "LANG": "C.UTF-8",
            "HOME": str(self.folder),
            "PORT": str(port),
            "VERSION": "1",
            "HOSTNAME": f"standalone-{self.count}",
            "MARKS": "marks.log",
        }
        sent = time.time()
        t0 = time.perf_counter()
        process = subprocess.Popen(
            [self.python, "app.py"],
            cwd=self.folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    if get(port, timeout=5.0)[0] == 200:
                        break
                except (OSError, http.client.HTTPException):
                    if process.poll() is not None:
                        raise RuntimeError(f"app.py exited {process.returncode}") from None
                    time.sleep(0.002)
            took = time.perf_counter() - t0
            answered = time.time()
        finally:
            stop(process)
        found = self.marks.read()
        if "request" in found:
            found.setdefault("health", found["request"])
        return took, phases(found, sent, answered)


def wake_times(workdir: Path, plane: str, count: int, standalone: Standalone) -> dict[str, Any]:
    """``terrace up --router PLANE``; ``count`` times (after one warm-up): wait until the
    service sleeps, boot the app standalone once (the floor, measured beside each wake since
    the machine's speed drifts), then time one ``GET /`` through the router."""
    from tests.support.up import Installation, eventually  # noqa: PLC0415

    base = workdir / f"wake-{plane}"
    folder = base / "app"
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(APP)
    (folder / "ci.yml").write_text(LANDSCAPE)
    marks = Marks(folder / "marks.log")
    installation = Installation(home=base / "home", folder=folder)
    times: list[float] = []
    parts: list[dict[str, float]] = []
    boots: list[float] = []
    boot_parts: list[dict[str, float]] = []
    slept: list[float] = []  # seconds from an answer until the service is asleep and gone
    failures: list[str] = []
    first: dict[str, Any] | None = None
    started = math.nan
    t_up = time.monotonic()
    installation.up("--skip-tests", "--router", plane)
    try:
        installation.wait_serving()
        started = time.monotonic() - t_up
        if f"router: {plane}" not in installation.output():
            raise RuntimeError(
                f"terrace up did not use the {plane} plane:\n{installation.output()}"
            )

        def asleep() -> bool:
            (service,) = installation.run_status()["services"]
            return bool(service["asleep"]) and not service["instances"]

        def failed(text: str) -> None:
            failures.append(text)
            print(f"  {plane}: {text}", file=sys.stderr)

        last = time.monotonic()
        for i in range(count + 1):  # wake 0, the first after start-up, is a warm-up
            try:
                eventually(asleep, timeout=60, what="the app to sleep")
                eventually(lambda: not installation.processes(), timeout=30, what="no process")
            except AssertionError as exc:
                failed(f"wake {i}: {exc}")
                break
            slept.append(time.monotonic() - last)
            boot, boot_part = standalone.boot()
            time.sleep(0.05)  # let the stop's last clean-up and the boot's end settle
            marks.read()  # skip what the previous replica wrote
            sent = time.time()
            t0 = time.perf_counter()
            try:
                status, body = get(installation.port, timeout=60)
            except (OSError, http.client.HTTPException) as exc:
                failed(f"wake {i}: {type(exc).__name__}: {exc}")
                last = time.monotonic()
                continue
            elapsed = time.perf_counter() - t0
            answered = time.time()
            last = time.monotonic()
            if status != 200 or b'"version": "1"' not in body:
                failed(f"wake {i}: {status} {body[:100]!r}")
                continue
            found = marks.read()
            spawned = started_at(installation.processes())
            if spawned is not None:
                found["spawn"] = max(sent, spawned)  # a tick's rounding may put it before
            part = phases(found, sent, answered)
            if i == 0:
                first = {"ms": round(elapsed * 1e3, 1), "phases_ms": part}
            else:
                times.append(elapsed)
                boots.append(boot)
                if part:
                    parts.append(part)
                if boot_part:
                    boot_parts.append(boot_part)
            print(
                f"  {plane}: wake {i}/{count}{' (warm-up)' if i == 0 else ''}"
                f" {elapsed * 1e3:.1f} ms (boot alone {boot * 1e3:.1f} ms)"
                + (f" ({', '.join(f'{k} +{v:.1f}' for k, v in part.items())})" if part else ""),
                file=sys.stderr,
            )
    finally:
        code = installation.kill(signal.SIGINT) if installation.runs[-1].poll() is None else None
        if code not in (0, None):
            failures.append(f"terrace up exited {code} on Ctrl-C")
        try:
            installation.assert_nothing_left()
        except AssertionError as exc:
            failures.append(str(exc))
            installation.clean_up()
    return {
        "times": times,
        "boots": boots,
        "phases_ms_median": median_phases(parts),
        "boot_phases_ms_median": median_phases(boot_parts),
        "warm_up_wake": first,
        "failures": failures,
        "up_seconds": round(started, 2),
        "seconds_to_sleep_median": rnd(median(slept), 2),
    }


def median_phases(parts: list[dict[str, float]]) -> dict[str, float | None]:
    if not parts:
        return {}
    return {k: rnd(median([p[k] for p in parts]), 1) for k in parts[0]}


def wake_figures(by_plane: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per plane: wake p50/p99, the standalone boot beside it, overhead = wake - boot median."""
    wake_ms: dict[str, Any] = {}
    boot_ms: dict[str, Any] = {}
    overhead: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    for plane, found in by_plane.items():
        times, boots = found["times"], found["boots"]
        if not times:
            goals[f"wake_overhead_{plane}"] = False
            continue
        boot = statistics.median(boots)
        p50, p99 = percentile(times, 50), percentile(times, 99)
        wake_ms[plane] = {
            "p50": rnd(p50 * 1e3),
            "p99": rnd(p99 * 1e3),
            "min": rnd(min(times) * 1e3),
            "n": len(times),
            "failures": len(found["failures"]),
        }
        boot_ms[plane] = {
            "p50": rnd(boot * 1e3),
            "p99": rnd(percentile(boots, 99) * 1e3),
            "min": rnd(min(boots) * 1e3),
            "n": len(boots),
        }
        overhead[plane] = {"p50": rnd((p50 - boot) * 1e3), "p99": rnd((p99 - boot) * 1e3)}
        goals[f"wake_overhead_{plane}"] = (
            not found["failures"]
            and (p50 - boot) * 1e3 <= GOAL_WAKE_OVERHEAD_MS["p50"]
            and (p99 - boot) * 1e3 <= GOAL_WAKE_OVERHEAD_MS["p99"]
        )
    return {"boot_ms": boot_ms, "wake_ms": wake_ms, "wake_overhead_ms": overhead, "goals": goals}


# --- output -----------------------------------------------------------------------------------


def table(load: dict[str, Any] | None, wake: dict[str, Any] | None) -> str:
    lines: list[str] = []
    if load:
        head = (
            f"{'peer':8} {'req/s':>8} {'x nginx':>7} {'p50 us':>7} {'p99 us':>7} "
            f"{'cores':>5} {'us/req':>6} {'c1 p50':>7} {'c1 p99':>7} {'+p50':>5} {'+p99':>5} "
            f"{'errors':>6} {'disturbed':>9}"
        )
        lines += [head, "-" * len(head)]
        for name, p in load["peers"].items():
            added = load["added_latency_us"].get(name, {})
            x = load["ratio_to_nginx"].get(name)

            def f(value: Any, width: int) -> str:
                return f"{value:>{width}g}" if isinstance(value, int | float) else " " * width

            lines.append(
                f"{name:8} {f(p['rps'], 8)} {f(x, 7)} {f(p['latency_us']['p50'], 7)} "
                f"{f(p['latency_us']['p99'], 7)} {f(p['proxy_cores'], 5)} "
                f"{f(p['proxy_cpu_us_per_request'], 6)} "
                f"{f(p['one_connection_latency_us']['p50'], 7)} "
                f"{f(p['one_connection_latency_us']['p99'], 7)} {f(added.get('p50'), 5)} "
                f"{f(added.get('p99'), 5)} {p['errors']:>6} {p['disturbed_runs']:>9}"
            )
        lines.append(
            "req/s, p50/p99: -c32 (medians of the rounds); cores, us/req: the proxy's CPU;"
            " c1: one connection; +p50/+p99: over direct at one connection; disturbed: runs"
            f" during which other processes used > {DISTURBED} cores"
        )
    if wake:

        def parts(found: dict[str, Any]) -> str:
            return ", ".join(f"{k} {v}" for k, v in found.items())

        for plane, w in wake["wake_ms"].items():
            o, b, r = wake["wake_overhead_ms"][plane], wake["boot_ms"][plane], wake["runs"][plane]
            lines += [
                f"wake via {plane:8}: p50 {w['p50']} ms, p99 {w['p99']} ms (n={w['n']},"
                f" failures {w['failures']}); overhead p50 {o['p50']} ms, p99 {o['p99']} ms",
                f"  its phases (medians, ms): {parts(r['phases_ms_median'])}",
                f"  standalone boot beside it: p50 {b['p50']} ms, p99 {b['p99']} ms;"
                f" phases: {parts(r['boot_phases_ms_median'])}",
            ]
        lines.append(
            "phases: spawn = until the replica's first process (to 10 ms), start = until"
            " the app's code runs, listen = its own start-up, health ="
            " until the first health check, request = until the request reaches it, answer ="
            " until the answer is back"
        )
    return "\n".join(lines)


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the clean-ups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 3 wakes per plane")
    parser.add_argument("--rounds", type=int, default=None, help="repeats of each phase (10)")
    parser.add_argument("--seconds", type=float, default=None, help="per wrk run (3; quick 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c for throughput")
    parser.add_argument("--wakes", type=int, default=None, help="wakes per plane (20; quick 3)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument(
        "--nginx-workers", default="auto", help="worker_processes of the nginx proxy (auto)"
    )
    parser.add_argument(
        "--quiet", type=float, default=None, help="most seconds to wait for idle CPUs (10; quick 2)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        help=f"runs tried again while other work uses > {DISTURBED} cores (2; quick 0)",
    )
    parser.add_argument("--no-wake", action="store_true", help="skip waking (for iterating)")
    parser.add_argument("--no-load", action="store_true", help="skip proxying (for iterating)")
    parser.add_argument("--serve-plane", choices=PLANES, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plane:
        serve_plane(args.serve_plane, args.backend, args.state_dir, args.threads)
        return
    signal.signal(signal.SIGTERM, interrupted)
    rounds = args.rounds or (1 if args.quick else 10)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    wakes = args.wakes or (3 if args.quick else 20)
    warmup = 1.0
    quiet = args.quiet if args.quiet is not None else (2.0 if args.quick else 10.0)
    busy_before: dict[str, float] = {}
    run_quiet = 0.0 if args.quick else min(quiet, 5.0)
    retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    names = [p.strip() for p in args.peers.split(",") if p.strip()]
    try:
        planes_of = {name: split_peer(name)[0] for name in names}
    except ValueError:
        planes_of = {}
    if not planes_of:
        parser.error(f"--peers takes {','.join(PEERS)} and haproxy@N (N threads)")
    load_avg = os.getloadavg()[0]
    started = time.monotonic()
    skipped: dict[str, str] = {}
    for name in [n for n in names if planes_of[n] in PLANES]:
        why = plane_unavailable(planes_of[name])
        if why:
            skipped[name] = why
            names.remove(name)
            print(f"skipping {why}", file=sys.stderr)
    load: dict[str, Any] | None = None
    wake: dict[str, Any] | None = None
    about: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="terrace-bench-router-") as tmp:
        workdir = Path(tmp)
        if not args.no_load:
            script = workdir / "figures.lua"
            script.write_text(WRK_SCRIPT)
            print(
                f"proxying: {rounds} round(s) of {seconds:g} s per peer, -c{args.connections}"
                " then -c1 ...",
                file=sys.stderr,
            )
            with peers(workdir, names, args.nginx_workers) as found:
                about = {n: p.about for n, p in found.items() if p.about}
                busy_before["load"] = settle(quiet)
                load_setup = Load(
                    seconds=seconds,
                    connections=args.connections,
                    warmup=warmup,
                    script=script,
                    quiet=run_quiet,
                    retries=retries,
                )
                runs = load_phases(found, names, rounds, load_setup)
            load = load_figures(runs, names)
        planes = [p for p in PLANES if p in names]
        if not args.no_wake and planes:
            if os.geteuid() != 0:
                skipped["wake"] = "needs root (sandboxed replicas)"
                print("skipping the wake part: it needs root", file=sys.stderr)
            else:
                standalone = Standalone(workdir / "standalone")
                busy_before["wake"] = settle(quiet)
                by_plane = {p: wake_times(workdir, p, wakes, standalone) for p in planes}
                wake = wake_figures(by_plane)
                wake["runs"] = {
                    p: {k: v for k, v in r.items() if k not in ("times", "boots")}
                    | {
                        "times_ms": [round(t * 1e3, 1) for t in r["times"]],
                        "boots_ms": [round(t * 1e3, 1) for t in r["boots"]],
                    }
                    for p, r in by_plane.items()
                }
    print(table(load, wake), file=sys.stderr)
    print(
        f"1-minute load average at start: {load_avg:.2f} on {os.cpu_count()} CPUs;"
        f" {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    goals: dict[str, Any] = {}
    if load:
        for plane, goal in GOAL_RATIO.items():
            x = load["ratio_to_nginx"].get(plane)
            if x is not None:
                goals[f"rps_{plane}_ge_{goal}x_nginx"] = x >= goal
    if wake:
        goals.update(wake.pop("goals"))
    summary: dict[str, Any] = {
        "bench": "router",
        "quick": args.quick,
        "rps": load["rps"] if load else {},
        "ratio_to_nginx": load["ratio_to_nginx"] if load else {},
        "added_latency_us": load["added_latency_us"] if load else {},
        "wake_ms": {p: {k: w[k] for k in ("p50", "p99")} for p, w in wake["wake_ms"].items()}
        if wake
        else {},
        "wake_overhead_ms": wake["wake_overhead_ms"] if wake else {},
        "boot_ms": wake["boot_ms"] if wake else None,
        "goals": goals,
        "peers": load["peers"] if load else {},
        "wake": {"wake_ms": wake["wake_ms"], "runs": wake["runs"], "sleep_after": SLEEP_AFTER}
        if wake
        else None,
        "skipped": skipped,
        "setup": {
            "rounds": rounds,
            "seconds": seconds,
            "connections": args.connections,
            "wrk_threads": 1,
            "retries": retries,
            "wakes": wakes,
            "backend_workers": 1,
            "nginx_proxy_workers": args.nginx_workers,
            "haproxy_threads": default_threads(),
            "processes": about,
        },
        "cpus": os.cpu_count(),
        "busy_cores_before": busy_before,
        "loadavg_at_start": round(load_avg, 2),
        "python": sys.version.split()[0],
    }
    print(json.dumps(summary))
    errors = sum(p["errors"] for p in load["peers"].values()) if load else 0
    wake_failures = sum(w["failures"] for w in wake["wake_ms"].values()) if wake else 0
    if errors or wake_failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
