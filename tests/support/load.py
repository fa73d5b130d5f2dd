"""A bounded load loop in a process of its own: GET a URL over and over until a stop file
appears (or a limit is reached), and write what happened as JSON.

    python tests/support/load.py URL OUT.json STOP_FILE [--workers N] [--max-seconds S]

Half the workers keep one connection alive across requests (reconnecting when the server
closes it after a response, as clients do), the other half open a new connection per request.
Every request that does not get a 200 is a failure, with what went wrong.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import urllib.parse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("stop", type=Path)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    assert url.hostname is not None
    target = url.path or "/"
    lock = threading.Lock()
    ok = 0
    failures: list[str] = []
    seen: dict[str, int] = {}
    deadline = time.monotonic() + args.max_seconds

    def worker(keep_alive: bool) -> None:
        nonlocal ok
        conn: http.client.HTTPConnection | None = None
        while not args.stop.exists() and time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            try:
                conn.request("GET", target, headers={} if keep_alive else {"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                closing = response.will_close or not keep_alive
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
                continue
            if closing:
                conn.close()
                conn = None
            with lock:
                if response.status == 200:
                    ok += 1
                    version = json.loads(body).get("version", "?")
                    seen[version] = seen.get(version, 0) + 1
                else:
                    failures.append(f"HTTP {response.status}: {body[:200]!r}")

    threads = [
        threading.Thread(target=worker, args=(i % 2 == 0,), daemon=True)
        for i in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ok": ok, "failures": failures, "versions": seen}))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
