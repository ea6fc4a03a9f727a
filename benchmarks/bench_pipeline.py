"""Whole pipeline at 1x, 2x and 4x the shared Debian corpus: how wall time and peak memory grow.

The corpus is repeated k times with new ids (``<id>~r<k>``), as the issue asks. Copies are exact
duplicates, so dedup removes them all: its own work grows with the input while its output stays
constant. To measure the other stages on a growing stream, they read the ingest output (the DAG is
ingest -> dedup, ingest -> balance, ingest -> train_tokenizer, ingest -> encode -> pack); the
tokenizer trains on a fixed ``sample_mb`` budget, so its time should stay flat. Stages run two at a
time as their inputs complete (``pipeline.runner._run_stages``): the tokenizer's training (HF's, for
the default llama3 pattern) beside dedup, then encode, balance and pack beside what is left of it, so
the per-stage seconds overlap and add up to more than ``wall_s``. Token cleaning (an
n-gram model over all tokens) is left out of this run to keep the 4x full-corpus run under an hour
on 2 cores; it has its own benchmark.

Memory: a sampler thread reads the proportional set size (PSS, /proc/PID/smaps_rollup, so Ray's
shared object store is not counted once per process) of the pipeline process and all its
descendants (GCS, raylet, workers) every 0.25 s; samples are assigned to the stage that was running
by the manifests' ``started_at`` + ``wall_time_s``. ``*_workers_peak_MB`` counts only the Ray worker
processes (``ray::...``) without the object-store pages they map: that is where a stage's work and
data live. The driver only schedules during a streaming stage; Ray's services (GCS, raylet,
dashboard) keep per-task bookkeeping that grows with the number of tasks run so far in the whole
run (``ray_services_peak_MB``: every descendant of the driver that is not a Ray worker); and the
object store's shared pages stay resident at the high-water mark of the stage that put the most
into it (dedup's signatures), mapped by idle workers into the next stages (``object_store_peak_MB``).
Stages run side by side (``pipeline.runner._run_stages``): encode runs beside dedup once the tokenizer
is trained, so the samples of a stage's time window also hold what ran beside it. ``*_task_peak_MB``
is each stage's own figure: the largest peak resident size of a worker during one of its tasks
(the manifest's ``peak_task_rss_mb``, reset at each task's start), whatever ran before or beside it.
Run: ``python benchmarks/bench_pipeline.py [--quick] [--repeat N]`` (N runs of each scale, one after
the other: the row is the median run's, ``wall_s_runs`` every run's wall time).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import zstandard

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, ROOT, print_table, run_child, save

SCALES = (1, 2, 4)
QUICK_DOCS = 4000

SPEC = """
name: bench_pipeline
seed: 1
output: out
inputs:
  debian: {{paths: [corpus.jsonl.zst], keep_fields: [locale]}}
stages:
  - {{name: ingest, type: ingest, inputs: [debian], shard_mb: {shard_mb}}}
  - {{name: dedup, type: dedup, inputs: [ingest], near: {{threshold: 0.8}}}}
  - {{name: balance, type: balance, inputs: [ingest], langid: {{mode: missing}}, strategy: natural}}
  - {{name: tokenizer, type: train_tokenizer, inputs: [ingest], vocab_size: 16000, sample_mb: 8,
      report: {{heldout_docs: 200}}}}
  - {{name: encode, type: encode, inputs: [ingest], tokenizer: tokenizer, add_eos: true, keep_text: false}}
  - {{name: pack, type: pack, inputs: [encode], method: best_fit, seq_len: 2048, writers: [numpy]}}
"""
STREAMING = ("ingest", "encode", "pack")


def repeated_corpus(lines: list[bytes], k: int, path: Path) -> int:
    """Write the corpus k times, copy r under ids ``<id>~r<r>`` (copy 0 keeps its id); returns bytes."""
    import orjson

    cctx = zstandard.ZstdCompressor(level=3)
    total = 0
    with open(path, "wb") as f, cctx.stream_writer(f) as w:
        for r in range(k):
            for line in lines:
                if r:
                    doc = orjson.loads(line)
                    doc["id"] = f"{doc['id']}~r{r}"
                    line = orjson.dumps(doc)
                w.write(line + b"\n")
                total += len(line) + 1
    return total


def run_measured(spec: Path) -> tuple[float, list[tuple[float, ...]]]:
    """Run ``pipeline run spec`` in a child process; (wall seconds, the samples of
    :class:`benchmarks.common.PeakMemory`)."""
    wall, mem = run_child([sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"], spec.parent)
    return wall, mem.samples


def per_stage(out: Path, samples: list[tuple[float, ...]]) -> dict[str, dict[str, float]]:
    res = {}
    for name in json.loads((out / "run.json").read_text())["stages"]:
        m = json.loads((out / name["name"] / "manifest.json").read_text())
        start = datetime.fromisoformat(m["started_at"].replace("Z", "+00:00")).timestamp()
        end = start + m["wall_time_s"] + 1.0
        inside = [(s[1], s[3]) for s in samples if start - 0.5 <= s[0] <= end]
        res[m["stage"]] = {"s": m["wall_time_s"], "peak_mb": max((a for a, _ in inside), default=0.0),
                           "workers_peak_mb": max((b for _, b in inside), default=0.0), "rows_in": m["rows_in"],
                           "bytes_in": m["bytes_in"],
                           "task_peak_mb": max(m["stats"].get("peak_task_rss_mb", {}).values(), default=0.0)}
    return res


def measured_run(d: Path, repeat: int) -> tuple[float, list[tuple[float, ...]], list[float]]:
    """Run the spec in ``d`` ``repeat`` times, each into a fresh output: the median run's wall time
    and samples (its output is the one left in ``d / "out"``), and every run's wall time in order.
    Why: the same run's time moves by 10-20 % on this host from one minute to the next."""
    runs = []
    for i in range(repeat):
        out = d / "out"
        if out.exists():
            shutil.rmtree(out)
        wall, samples = run_measured(d / "spec.yaml")
        if i < repeat - 1:
            out.rename(d / f"out-{i}")
        runs.append((wall, samples, d / ("out" if i == repeat - 1 else f"out-{i}")))
    walls = [w for w, _, _ in runs]
    wall, samples, out = sorted(runs, key=lambda r: r[0])[(repeat - 1) // 2]
    if out != d / "out":
        shutil.rmtree(d / "out")
        out.rename(d / "out")
    return wall, samples, walls


def run(quick: bool, base_docs: int | None = None, repeat: int = 1) -> list[dict[str, Any]]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(DEBIAN.read_bytes())).read()
    lines = raw.splitlines()
    n = base_docs or (QUICK_DOCS if quick else len(lines))
    lines = lines[:n]
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_", dir=os.environ.get("TMPDIR")) as tmp:
        for k in SCALES:
            d = Path(tmp) / f"x{k}"
            d.mkdir()
            nbytes = repeated_corpus(lines, k, d / "corpus.jsonl.zst")
            (d / "spec.yaml").write_text(SPEC.format(shard_mb=8 if quick else 32))
            wall, samples, walls = measured_run(d, repeat)
            stages = per_stage(d / "out", samples)
            tokens = json.loads((d / "out" / "encode" / "manifest.json").read_text())["stats"]["tokens"]
            row: dict[str, Any] = {"scale": f"{k}x", "docs": n * k, "MB": round(nbytes / 1e6, 1),
                                   "wall_s": round(wall, 1),
                                   "MB/s": round(nbytes / 1e6 / wall, 2), "docs/s": round(n * k / wall),
                                   "tokens/s": round(tokens / wall),
                                   "peak_MB_all": round(max((s[1] for s in samples), default=0.0)),
                                   "object_store_peak_MB": round(max((s[4] for s in samples), default=0.0)),
                                   "ray_services_peak_MB": round(max((s[5] for s in samples), default=0.0)),
                                   **({"wall_s_runs": " / ".join(f"{w:.1f}" for w in walls)} if repeat > 1 else {})}
            for name, st in stages.items():
                row[f"{name}_s"] = round(st["s"], 1)
            for name in STREAMING:
                row[f"{name}_peak_MB"] = round(stages[name]["peak_mb"])
                row[f"{name}_workers_peak_MB"] = round(stages[name]["workers_peak_mb"])
                row[f"{name}_task_peak_MB"] = round(stages[name]["task_peak_mb"])
            if k == 1:
                base = row
            row["time_ratio"] = round(row["wall_s"] / base["wall_s"], 2)
            row["time_ratio/scale"] = round(row["time_ratio"] / k, 2)
            for name in STREAMING:
                row[f"{name}_mem_ratio"] = round(row[f"{name}_peak_MB"] / max(1, base[f"{name}_peak_MB"]), 2)
                row[f"{name}_workers_mem_ratio"] = round(
                    row[f"{name}_workers_peak_MB"] / max(1, base[f"{name}_workers_peak_MB"]), 2)
                row[f"{name}_task_mem_ratio"] = round(
                    row[f"{name}_task_peak_MB"] / max(1, base[f"{name}_task_peak_MB"]), 2)
            rows.append(row)
            print(f"  {k}x done in {wall:.0f} s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"the first {QUICK_DOCS} documents as 1x")
    p.add_argument("--base-docs", type=int, help="documents of the 1x corpus (default: all, or the quick subset)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each scale; the row is the median run's, "
                   "with every run's wall time beside it")
    args = p.parse_args()
    rows = run(args.quick, args.base_docs, max(1, args.repeat))
    print_table("whole pipeline at 1x/2x/4x", rows)
    save("pipeline", rows)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
