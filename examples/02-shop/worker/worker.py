"""A background worker with no route: every few seconds it asks the api, by name, for products."""

import os
import time

import shoplib

API_URL = os.environ.get("API_URL", "http://api:3000")
INTERVAL = float(os.environ.get("INTERVAL_SECONDS", "5"))

if __name__ == "__main__":
    while True:
        try:
            products = shoplib.fetch_json(f"{API_URL}/products")
            print(f"worker: {len(products)} products", flush=True)  # type: ignore[arg-type]
        except OSError as exc:
            print(f"worker: api unreachable: {exc}", flush=True)
        time.sleep(INTERVAL)
