"""Shared helpers for the benchmarks: the shared corpus, timing, peak memory, and a printed table."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import zstandard

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEBIAN = SHARED / "debian-multilingual.jsonl.zst"
UDHR = SHARED / "udhr.jsonl.zst"
RESULTS = ROOT / "benchmarks" / "results"


def load_jsonl_zst(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()
    lines = raw.splitlines()
    return [orjson.loads(x) for x in (lines[:limit] if limit else lines)]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cli(args: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``pipeline ARGS`` in a child process; (wall seconds, peak RSS MB of the driver process)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = float(proc.stdout.strip().splitlines()[-1])
    return wall, peak


_CHILD = """
import resource, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def manifest(out: Path, stage: str) -> dict[str, Any]:
    return json.loads((out / stage / "manifest.json").read_text())


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print(f"\n## {title}  ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})")
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-|-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(width[c]) for c in cols))


def save(name: str, rows: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)
