"""A tiny web service: GET / greets, GET /healthz answers ok. Listens on $PORT (default 3000)."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def greeting() -> str:
    return os.environ.get("GREETING", "Hello")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b"ok"
            content_type = "text/plain"
        else:
            body = json.dumps({"message": greeting(), "path": self.path}).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "3000"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
