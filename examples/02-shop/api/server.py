"""The shop's JSON API: /products, /healthz; an admin port answers /stats inside the landscape."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import shoplib

HITS = {"count": 0}


def reply(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        HITS["count"] += 1
        if self.path == "/healthz":
            reply(self, 200, {"ok": True})
        elif self.path == "/products":
            currency = os.environ.get("CURRENCY", "EUR")
            reply(self, 200, [{**p, "currency": currency} for p in shoplib.PRODUCTS])
        else:
            reply(self, 404, {"error": f"no route {self.path}"})


class Admin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        reply(self, 200, {"hits": HITS["count"], "replica": os.environ.get("HOSTNAME", "")})


if __name__ == "__main__":
    admin = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("ADMIN_PORT", "9000"))), Admin)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "3000"))), Api).serve_forever()
