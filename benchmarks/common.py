"""Shared helpers for the benchmarks: the shared corpus, timing, peak memory, and a printed table."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import threading
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
    """Peak resident memory of this process over its whole life (MB). Prefer :func:`measure`, which
    gives the peak of one call; kept for cores measured in-process where the life-time peak is the point."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from the parent links in /proc/*/stat."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [pid], {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier}
        out += sorted(frontier)
    return out


def pss_parts(pid: int) -> tuple[float, float]:
    """(proportional set size, its shared-memory part) of one process in MB, from one read of
    smaps_rollup. PSS splits shared pages (Ray's object store, shared libraries) between the processes
    that map them, so a sum over a tree counts them once; the shared-memory part is Ray's object
    store (a /dev/shm file)."""
    pss = shmem = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Pss_Shmem:"):
                shmem = int(line.split()[1])
                break
    except OSError:
        pass
    return pss / 1024, shmem / 1024


def is_ray_worker(pid: int) -> bool:
    """Ray worker processes retitle themselves ``ray::IDLE`` / ``ray::<task or actor>``."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


class PeakMemory:
    """Samples the PSS of a process tree in a background thread while the ``with`` block runs.

    Why not ``ru_maxrss``: it is a life-time high-water mark (a child even inherits its parent's
    across fork+exec), it misses Ray's worker processes, and it counts the object store's mapped
    pages in full in every process. ``samples`` keeps (unix time, MB of the tree, MB of the root
    process alone, MB of the Ray worker processes without their object-store pages, MB of the
    object store's pages across the tree, MB of Ray's services without those pages) for per-stage
    attribution: the root is the ``pipeline`` driver, which may still hold memory from an earlier
    stage while a streaming stage runs on the workers; Ray's own services (GCS, raylet, dashboard)
    keep bookkeeping that grows with the number of tasks run so far; and the object store's pages,
    once touched, stay resident (and mapped by idle workers) at the high-water mark of whatever
    stage put the most into it.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.1) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.samples: list[tuple[float, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            tree = process_tree(self.pid)
            parts = {p: pss_parts(p) for p in tree}  # one read of each process's smaps_rollup
            workers = {p for p in tree[1:] if is_ray_worker(p)}
            services = [p for p in tree[1:] if p not in workers]
            self.samples.append((time.time(), sum(a for a, _ in parts.values()), parts[self.pid][0],
                                 sum(parts[p][0] - parts[p][1] for p in workers),
                                 sum(b for _, b in parts.values()),
                                 sum(parts[p][0] - parts[p][1] for p in services)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max((s[1] for s in self.samples), default=0.0)


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Call ``fn`` in this process; (result, wall seconds, peak PSS MB of this process and its children
    during the call)."""
    with PeakMemory() as mem:
        out, secs = timed(fn)
    return out, secs, mem.peak_mb


def run_child(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
              interval: float = 0.25) -> tuple[float, PeakMemory]:
    """Run a child command; (wall seconds, its PeakMemory: the whole tree, Ray's GCS, raylet and
    workers included). Raises with the tail of stderr when it fails."""
    # Ray starts its workers at nice 15; the raw-library baselines run in this process at nice 0. Same
    # priority for both, or any other load on the machine would tilt every ratio against the stage.
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_worker_niceness": "0", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    with PeakMemory(proc.pid, interval) as mem:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')[-3000:]}")
    return wall, mem


def run_cli(args: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``pipeline ARGS`` in a child process; (wall seconds, peak PSS MB of its process tree)."""
    wall, mem = run_child([sys.executable, "-m", "pipeline", *args], cwd)
    return wall, mem.peak_mb


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


def machine() -> dict[str, Any]:
    """What a figure was measured on: cores, memory, Python, date, and the load average (a shared
    machine makes absolute times noisy; ratios measured in the same run much less so)."""
    import platform

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_GiB": round(mem_gib, 1), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def save(name: str, rows: list[dict[str, Any]], quick: bool | None = None) -> None:
    """Write ``benchmarks/results/<name>.json``: the rows and what they were measured on (the README's
    tables are rendered from these files by ``benchmarks/readme_tables.py``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if quick is None:
        quick = "--quick" in sys.argv
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    doc = {"measured": {**machine(), "quick": quick, "command": command}, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2))


def load_rows(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(measured-on metadata, rows) of a saved result; older files hold the bare row list."""
    doc = json.loads((RESULTS / f"{name}.json").read_text())
    if isinstance(doc, list):
        return {}, doc
    return doc["measured"], doc["rows"]


def markdown_table(rows: list[dict[str, Any]], exclude: tuple[str, ...] = ()) -> str:
    """Rows as a GitHub markdown table: every column that any row has, in first-seen order."""
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in exclude]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)
