"""What a proxied request costs each proxy in its own code: user-space instructions per request,
counted by valgrind (callgrind), for our HAProxy plane's configuration, HAProxy with no rules,
and nginx as a reverse proxy, on the same backend.

``bench/router.py`` measures what users get (req/s, latency) against nginx, but on a shared VM
one 3 s round of it can read anywhere from 0.6x to 1.2x for the same two peers, so it cannot
tell a configuration that costs 5 % less from one that costs the same. Instructions counted by
a CPU simulator do not move with the machine's speed: the same run gives the same count to
within 0.1 %. They leave out the kernel (about two thirds of each proxy's CPU here, and about
the same per request for all three: each does two receives and two sends a request), so they
measure what differs between the peers, their own code.

Peers, each under ``valgrind --tool=callgrind`` in turn, one thread or worker each:

- ``nginx``: the proxy of ``bench/router.py`` (upstream keepalive, the request headers our
  planes set, ``X-Request-Id`` from ``$request_id``), one worker, no master;
- ``haproxy``: the real :class:`~terrace.router.haproxy.HaproxyPlane` (its configuration, maps
  and dynamic server set over the runtime API), routing ``/`` to the backend;
- ``haproxy-bare``: HAProxy 2.6 with a frontend, a backend and nothing else: HAProxy's floor;
- with ``--rules``, the plane's configuration without one of its frontend lines at a time (and
  without ``option forwardfor``): what each costs.

Each gets 200 requests to warm up, then its counters are zeroed, then ``--requests`` requests
(4 keep-alive connections, ``GET /items?page=2`` with a ``Host`` and a ``User-Agent``), then
the counters are dumped: instructions per request = the dump's total / requests.

    .venv/bin/python bench/proxy_instructions.py [--quick] [--requests 3000] [--rules]

Needs valgrind (``scripts/setup --bench`` installs it), nginx and haproxy. Ends with one line
of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import router as rb
from terrace.router.haproxy import HaproxyPlane
from terrace.router.haproxy_config import MAPS
from terrace.router.table import Backend, Pool, Route, RouteTable

VALGRIND = "valgrind"
WARM_UP = 200
CONNECTIONS = 4
DUMP_TIMEOUT = 60.0  # seconds for callgrind to write its dump

BARE_HAPROXY = """\
global
  nbthread 1
  stats socket unix@admin.sock mode 600 level admin
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend bare
  bind 127.0.0.1:{port}
  default_backend app
backend app
  server app 127.0.0.1:{backend} pool-max-conn -1 pool-purge-delay 5s
"""


def callgrind(out: Path, program: list[str]) -> list[str]:
    return [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}", *program]


def requests(port: int, count: int) -> None:
    """``count`` requests over :data:`CONNECTIONS` keep-alive connections; raises unless all are
    answered 200."""
    failures: list[str] = []

    def one_connection(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(n):
                conn.request(
                    "GET",
                    "/items?page=2",
                    headers={"Host": f"localhost:{port}", "User-Agent": "bench"},
                )
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    failures.append(f"status {answer.status}")
                    return
        except (OSError, http.client.HTTPException) as exc:
            failures.append(repr(exc))
        finally:
            conn.close()

    share = [count // CONNECTIONS + (i < count % CONNECTIONS) for i in range(CONNECTIONS)]
    threads = [threading.Thread(target=one_connection, args=(n,)) for n in share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"requests failed: {failures[:3]}")


def count(pid: int, port: int, out: Path, n: int) -> float:
    """Instructions per request of process ``pid`` (running under callgrind, writing ``out``)."""
    requests(port, WARM_UP)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    requests(port, n)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + DUMP_TIMEOUT
    while time.monotonic() < deadline:
        for dump in sorted(out.parent.glob(out.name + ".*")):
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1]) / n
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump of {out.name}")


@contextlib.contextmanager
def running(argv: list[str], cwd: Path, port: int, what: str) -> Iterator[int]:
    log = (cwd / "stderr.log").open("wb")
    process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        try:
            rb.wait_answering(port, process, what)
        except RuntimeError as exc:
            tail = (cwd / "stderr.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{exc}:\n{tail}") from None
        yield process.pid
    finally:
        rb.stop(process)
        log.close()


def nginx(workdir: Path, backend: int, n: int) -> float:
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = rb.free_port()
    upstream = f"    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}\n"
    conf = rb.nginx_conf(prefix, port, "1", rb.PROXY_SERVER, upstream).replace(
        "master_process on;", "master_process off;"
    )
    (prefix / "nginx.conf").write_text(conf)
    out = prefix / "callgrind.out"
    argv = callgrind(out, [rb.NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    with running(argv, prefix, port, "nginx") as pid:
        return count(pid, port, out, n)


def haproxy(folder: Path, config: str, maps: dict[str, str], port: int, n: int) -> float:
    """A static HAProxy configuration (bound to ``port``) under callgrind."""
    folder.mkdir()
    (folder / "haproxy.cfg").write_text(config)
    for name, entries in maps.items():
        (folder / name).write_text(entries)
    out = folder / "callgrind.out"
    argv = callgrind(out, ["haproxy", "-db", "-f", "haproxy.cfg"])
    with running(argv, folder, port, f"haproxy ({folder.name})") as pid:
        return count(pid, port, out, n)


def plane(workdir: Path, backend: int, n: int) -> tuple[float, str, dict[str, str]]:
    """The plane under callgrind: instructions per request, and its configuration and maps as
    HAProxy held them (for ``--rules``)."""
    folder = workdir / "haproxy"
    out = workdir / "haproxy-callgrind.out"
    wrapper = workdir / "haproxy-under-callgrind"
    command = " ".join(callgrind(out, [shutil.which("haproxy") or "haproxy"]))
    wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    table = RouteTable(
        [Route(prefix="/", pool="bench")], [Pool("bench", (Backend("b1", "127.0.0.1", backend),))]
    )

    async def main() -> tuple[float, str, dict[str, str]]:
        the_plane = HaproxyPlane(state_dir=folder, executable=str(wrapper))
        port = await the_plane.start("127.0.0.1", 0)
        try:
            await the_plane.apply(table)
            pid = the_plane.pid
            assert pid is not None
            per_request = await asyncio.to_thread(count, pid, port, out, n)
            maps = {name: await haproxy_map(the_plane, name) for name in MAPS}
            return per_request, (folder / "haproxy.cfg").read_text(), maps
        finally:
            await the_plane.close()

    return asyncio.run(main())


async def haproxy_map(the_plane: HaproxyPlane, name: str) -> str:
    """A map's entries as HAProxy holds them, as a map file."""
    listed = await the_plane._api.show(f"show map {name}")
    return "".join(
        " ".join(line.split()[1:3]) + "\n" for line in listed.splitlines() if line.strip()
    )


def without_each_rule(config: str, backend: int, port: int) -> dict[str, str]:
    """The plane's configuration made static (a fixed bind, its dynamic server written in), and
    that without each frontend rule in turn, keyed by what was left out."""
    static = config.replace("bind fd@", "#").replace(
        "frontend terrace\n", f"frontend terrace\n  bind 127.0.0.1:{port}\n"
    )
    static = static.replace(
        "backend rr0\n  balance roundrobin\n",
        f"backend rr0\n  balance roundrobin\n  server b1 127.0.0.1:{backend}\n",
    )
    lines = static.splitlines()
    variants = {"(all of it, static)": static}
    frontend = lines.index("frontend terrace")
    end = lines.index("", frontend)
    for i, line in enumerate(lines):
        text = line.strip()
        if not frontend < i < end and text != "option forwardfor":
            continue
        optional = text.startswith(("http-request", "http-after-response", "unique-id-format"))
        if optional or text == "option forwardfor":
            if text.startswith(
                ("http-request set-var(txn.path)", "http-request set-var(txn.route)")
            ):
                # the routing: nothing works without it
                continue
            variants[text] = "\n".join(lines[:i] + lines[i + 1 :]) + "\n"
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 requests a peer")
    parser.add_argument("--requests", type=int, default=None, help="requests a peer (3000)")
    parser.add_argument("--rules", action="store_true", help="also: the plane without each rule")
    args = parser.parse_args()
    n = args.requests or (500 if args.quick else 3000)
    missing = [
        t for t in (VALGRIND, "callgrind_control", "haproxy", rb.NGINX) if not shutil.which(t)
    ]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (scripts/setup --bench installs them)")
    with tempfile.TemporaryDirectory(prefix="terrace-bench-instr-") as tmp:
        workdir = Path(tmp)
        backend = rb.start_nginx(workdir, "backend", "1", rb.BACKEND_SERVER)
        try:
            figures: dict[str, float] = {}
            print("nginx ...", file=sys.stderr)
            figures["nginx"] = nginx(workdir, backend.port, n)
            print("haproxy (the plane) ...", file=sys.stderr)
            figures["haproxy"], config, maps = plane(workdir, backend.port, n)
            print("haproxy-bare ...", file=sys.stderr)
            port = rb.free_port()
            bare = BARE_HAPROXY.format(port=port, backend=backend.port)
            figures["haproxy-bare"] = haproxy(workdir / "bare", bare, {}, port, n)
            rules: dict[str, float] = {}
            if args.rules:
                port = rb.free_port()
                variants = without_each_rule(config, backend.port, port)
                for i, (left_out, text) in enumerate(variants.items()):
                    print(f"without: {left_out[:70]} ...", file=sys.stderr)
                    rules[left_out] = haproxy(workdir / f"rule-{i}", text, maps, port, n)
        finally:
            rb.stop(backend.process)  # type: ignore[arg-type]
    nginx_count = figures["nginx"]
    print(f"{'peer':14} {'instructions/request':>21} {'x nginx':>8}", file=sys.stderr)
    for name, value in figures.items():
        print(f"{name:14} {value:21,.0f} {value / nginx_count:8.2f}", file=sys.stderr)
    if rules:
        whole = rules.pop("(all of it, static)")
        print(f"\nthe plane's configuration, static: {whole:,.0f}; without:", file=sys.stderr)
        for left_out, value in sorted(rules.items(), key=lambda kv: kv[1]):
            print(f"  {whole - value:7,.0f}  {left_out}", file=sys.stderr)
        rules = {"static": whole, **{k: whole - v for k, v in rules.items()}}
    summary = {
        "bench": "proxy_instructions",
        "quick": args.quick,
        "requests": n,
        "instructions_per_request": {k: round(v) for k, v in figures.items()},
        "ratio_to_nginx": {k: round(v / nginx_count, 3) for k, v in figures.items()},
        "rule_costs": {k: round(v) for k, v in rules.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
