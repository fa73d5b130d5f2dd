"""How long Terrace takes to read and check landscape and provider files, against ruamel.yaml
loading the same text without any checks.

Every deploy, every `terrace validate` and every API call that takes a landscape runs the full
parse (YAML with positions, normalisation, JSON Schema checks, expressions). The peers are the
two ways one would load the YAML alone: ruamel's round-trip loader (which keeps positions, as
Terrace needs) and its pure-Python safe loader. Ratios are Terrace's time over each peer's, on
the 52 real files of tests/data/conformance, in one process.

    .venv/bin/python bench/spec_parse.py [--quick]

Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML

from terrace.spec.files import FileKind, discover, kind_of
from terrace.spec.landscape_parser import parse_landscape
from terrace.spec.provider_parser import parse_provider

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "conformance"


def load_corpus() -> list[tuple[str, FileKind]]:
    return [(p.read_text(), kind_of(p.name) or FileKind.LANDSCAPE) for p in discover([CORPUS])]


def terrace(files: list[tuple[str, FileKind]]) -> None:
    for text, kind in files:
        if kind is FileKind.LANDSCAPE:
            parse_landscape(text)
        else:
            parse_provider(text)


def ruamel_loader(typ: str) -> Callable[[list[tuple[str, FileKind]]], None]:
    def load(files: list[tuple[str, FileKind]]) -> None:
        for text, _ in files:
            YAML(typ=typ, pure=True).load(text)

    return load


def measure(
    run: Callable[[list[tuple[str, FileKind]]], None],
    files: list[tuple[str, FileKind]],
    rounds: int,
) -> list[float]:
    run(files)  # warm up imports and caches
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run(files)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    args = parser.parse_args()
    rounds = 5 if args.quick else 40
    files = load_corpus()
    peers = {
        "terrace": terrace,
        "ruamel_rt": ruamel_loader("rt"),
        "ruamel_safe": ruamel_loader("safe"),
    }
    # Interleave the contenders round by round so that machine noise hits all of them alike.
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(rounds):
        for name, run in peers.items():
            samples[name] += measure(run, files, 1)
    median = {name: statistics.median(values) for name, values in samples.items()}
    per_file_us = {name: value / len(files) * 1e6 for name, value in median.items()}
    result = {
        "bench": "spec_parse",
        "files": len(files),
        "rounds": rounds,
        "median_ms_per_corpus": {k: round(v * 1e3, 2) for k, v in median.items()},
        "median_us_per_file": {k: round(v, 1) for k, v in per_file_us.items()},
        "ratio_terrace_vs_ruamel_rt": round(median["terrace"] / median["ruamel_rt"], 2),
        "ratio_terrace_vs_ruamel_safe": round(median["terrace"] / median["ruamel_safe"], 2),
        "python": sys.version.split()[0],
    }
    for name in peers:
        print(f"{name:12} {per_file_us[name]:9.1f} us/file", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
