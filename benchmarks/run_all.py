"""Run every benchmark: ``python benchmarks/run_all.py [--quick] [--only NAME ...]`` from the repository root.

Discovers every ``benchmarks/bench_*.py`` and calls its ``run(quick)`` one after the other (never in
parallel: they share 2 cores), each in a fresh child process so one module's memory high-water mark,
imports or Ray session cannot leak into the next one's figures. Prints each table, then one combined
table of the headline columns (throughput, wall time, peak memory and the ratio to the module's
baseline), and writes ``benchmarks/results/<name>.json`` per module plus ``benchmarks/results/all.json``.
``--readme`` then rewrites the README's generated tables from those files (``readme_tables.py``), so
the README shows exactly what this run measured. A module that fails is reported in the combined
table with its error and does not stop the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, ROOT, machine, print_table, save

# The whole-pipeline and datatrove runs are the slowest: last, so the per-stage figures come first.
LAST = ("bench_pipeline", "bench_datatrove")
HEADLINE = ("MB/s", "docs/s", "tokens/s", "wall", "seconds", "peak", "ratio", "speedup", "baseline", " vs ")


def modules() -> list[str]:
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    return [n for n in names if n not in LAST] + [n for n in LAST if n in names]


def _headline(module: str, row: dict[str, Any]) -> dict[str, Any]:
    """The comparable columns of one row: its label (the first text column), throughput, time,
    memory and the ratio to the module's baseline, whatever each module calls them."""
    label = next((v for v in row.values() if isinstance(v, str)), "")[:60]
    out: dict[str, Any] = {"benchmark": module.removeprefix("bench_"), "case": label}
    for k, v in row.items():
        if isinstance(v, int | float) and any(h in k for h in HEADLINE):
            out[k] = v
    return out


def run_child(name: str, quick: bool, out: Path) -> None:
    """In the child process: run one module and write its rows to ``out``."""
    started = time.time()
    rows = importlib.import_module(f"benchmarks.{name}").run(quick)
    result = RESULTS / f"{name.removeprefix('bench_')}.json"
    if not result.exists() or result.stat().st_mtime < started:  # some modules save their own files
        save(name.removeprefix("bench_"), rows, quick)
    out.write_text(json.dumps(rows))


def run_module(name: str, quick: bool) -> list[dict[str, Any]]:
    """Run one module in a fresh interpreter (its own output streams through); its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--rows-file", str(out)]
        proc = subprocess.run([*cmd, *(["--quick"] if quick else [])], cwd=ROOT)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"exit code {proc.returncode}")
        return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subsets where the benchmark allows")
    p.add_argument("--only", nargs="*", help="run only these modules (e.g. bench_dedup or dedup)")
    p.add_argument("--readme", action="store_true", help="then rewrite the README's generated tables")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args.child, args.quick, args.rows_file)
        return 0
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in (args.only or [])] or modules()
    combined: list[dict[str, Any]] = []
    everything: dict[str, Any] = {"machine": machine(), "quick": args.quick, "modules": {}}
    failed = 0
    for name in wanted:
        t0 = time.perf_counter()
        try:
            rows = run_module(name, args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others
            failed += 1
            print(f"{name} FAILED: {exc}", file=sys.stderr)
            combined.append({"benchmark": name.removeprefix("bench_"), "case": f"FAILED: {exc}"[:60]})
            continue
        secs = time.perf_counter() - t0
        print_table(f"{name} ({secs:.0f} s)", rows)
        everything["modules"][name] = {"seconds": round(secs, 1), "rows": rows}
        combined += [_headline(name, r) for r in rows]
    print_table(f"all benchmarks{' (quick)' if args.quick else ''}: {machine()}", combined)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "all.json").write_text(json.dumps(everything, indent=2))
    if args.readme:
        from benchmarks.readme_tables import update_readme

        print(f"README tables rewritten: {', '.join(update_readme()) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
