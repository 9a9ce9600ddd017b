"""Benchmarks: each prints a JSON line per measurement as it goes, then writes the JSON and prints a table."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(results: list[dict], out: str | Path, table: str) -> None:
    """The benchmark's ``results`` as one JSON file at ``out`` (its folder made) and ``table`` on stdout."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2))
    print(table)
