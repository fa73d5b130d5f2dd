"""Code shared by every service of the shop, copied into lib/ by the prepare stage."""

import json
import urllib.request

PRODUCTS = [
    {"id": 1, "name": "terracotta pot", "price": 12},
    {"id": 2, "name": "olive tree", "price": 45},
]


def fetch_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)
