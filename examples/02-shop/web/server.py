"""The shop's front page: renders the products it gets from the api service, by name."""

import html
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import shoplib

API_URL = os.environ.get("API_URL", "http://api:3000")


class Web(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            status, body = 200, "ok"
        else:
            try:
                products = shoplib.fetch_json(f"{API_URL}/products")
                items = "".join(
                    f"<li>{html.escape(p['name'])}: {p['price']} {p['currency']}</li>"
                    for p in products  # type: ignore[union-attr]
                )
                status, body = 200, f"<h1>Shop</h1><ul>{items}</ul>"
            except OSError as exc:
                status, body = 502, f"api unreachable: {html.escape(str(exc))}"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "3000"))), Web).serve_forever()
