"""Dedup at 1x, 2x, 4x, 8x of a duplicate-heavy corpus: time per phase, driver and worker memory.

The corpus is the Debian corpus followed by ``scale - 1`` copies of it in which every document
carries small random word edits (seeded: each word is replaced with probability 0.02), so every
copy is a near-duplicate of its original and the number of clustered documents grows with the
scale. Each size runs ``ingest -> dedup`` in a child process (``pipeline run``) at a fixed shard
size and a fixed partition size (``partition_rows: 14000``: 8 partitions at 1x, 64 at 8x) and
reports, from the manifest and from /proc sampling:

* seconds per dedup phase (signatures, pairs, components, representatives, filter), per document,
  and the number of large-star rounds;
* peak driver memory (PSS of the ``pipeline`` process) and peak per-worker memory (the largest PSS
  of one Ray worker process without its object-store pages), during the dedup stage only (from its
  manifest's ``started_at`` for its wall time), and the largest peak RSS of one shard as the
  manifest records it per pass (``task_peak_rss_MB``, shared libraries included);
* documents in clusters and removed, candidate pairs, and time per unit of each pass's own work:
  signatures per document, pairs per candidate pair, components per clustered document (the copies
  make the clustered share rise from about 5 % at 1x to about 77 % at 8x, so the passes that work on
  duplicates grow faster than the document count while their cost per unit of work stays flat).

Targets (issue 19): driver peak at 8x <= 1.2x its 1x figure, per-worker peak at 8x <= 1.3x.
``--repeat 4`` runs the largest scale four times and checks that the outputs (kept documents and
clusters table) are byte-identical.
Run: ``python benchmarks/bench_dedup_scale.py --scales 1 2`` (8x takes a while on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import zstandard

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, PeakMemory, is_ray_worker, print_table, process_tree, pss_parts, save

EDIT_RATE = 0.02
SPEC = """name: scale
output: out
inputs: {docs: {paths: [corpus/*.jsonl.zst]}}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}
  - {name: dedup, type: dedup, inputs: [ingest], partition_rows: 14000}
"""


def build_corpus(scale: int, folder: Path, seed: int = 19) -> int:
    """The Debian corpus and ``scale - 1`` edited copies (ids suffixed ``~copyK``), one file per copy
    (as a crawl arrives in many files: a compressed file is cut into at most 16 shards, so one file
    per copy keeps the shard size, hence every per-part task's memory, the same at every scale);
    returns the count."""
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(DEBIAN.read_bytes())).read()
    lines = raw.splitlines()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for k in range(scale):
        out = io.BytesIO()
        with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
            for line in lines:
                d = orjson.loads(line)
                if k:
                    words = d["text"].split(" ")
                    d["text"] = " ".join(f"w{rng.randrange(10**6)}" if rng.random() < EDIT_RATE else x for x in words)
                    d["id"] = f"{d['id']}~copy{k}"
                w.write(orjson.dumps(d) + b"\n")
                n += 1
        (folder / f"copy-{k:03d}.jsonl.zst").write_bytes(out.getvalue())
    return n


class WorkerPeak(PeakMemory):
    """Also keeps the largest PSS (object-store pages excluded) of any single Ray worker."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(pid, interval)
        self.per_worker: list[tuple[float, float]] = []

    def _sample(self) -> None:
        while True:
            tree = process_tree(self.pid)
            workers = [p for p in tree[1:] if is_ray_worker(p)]
            biggest = max((a - b for a, b in (pss_parts(p) for p in workers)), default=0.0)
            self.per_worker.append((time.time(), biggest))
            self.samples.append((time.time(), 0.0, pss_parts(self.pid)[0], 0.0, 0.0, 0.0))
            if self._stop.wait(self.interval):
                return


def output_digest(out: Path) -> str:
    """sha256 over the dedup stage's Parquet files (kept documents and clusters table), in name order."""
    h = hashlib.sha256()
    for f in sorted((out / "dedup").rglob("*.parquet")):
        h.update(str(f.relative_to(out)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run_scale(scale: int, root: Path, run: int = 0) -> dict[str, Any]:
    import shutil
    import subprocess

    d = root / f"x{scale}"
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus"
    docs = build_corpus(scale, corpus) if not run else sum(len(_lines(f)) for f in corpus.glob("*.jsonl.zst"))
    shutil.rmtree(d / "out", ignore_errors=True)
    (d / "spec.yaml").write_text(SPEC)
    env = {**__import__("os").environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "spec.yaml", "--quiet"], cwd=d, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with WorkerPeak(proc.pid) as mem:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(err.decode(errors="replace")[-3000:])
    m = json.loads((d / "out" / "dedup" / "manifest.json").read_text())
    # the dedup stage's window: from its manifest's start, for its wall time and not a moment more (the
    # run report is built on the driver right after the last stage, while Ray shuts down)
    start = datetime.datetime.fromisoformat(m["started_at"].replace("Z", "+00:00")).timestamp()
    end = start + m.get("wall_time_s", wall)
    driver = max((s[2] for s in mem.samples if start <= s[0] <= end), default=0.0)
    worker = max((w for t, w in mem.per_worker if start <= t <= end), default=0.0)
    st = m["stats"]
    return {"scale": scale, "docs": docs, "dedup_s": m.get("wall_time_s"), **{f"{k}_s": v for k, v in
            st.get("seconds", {}).items()}, "us_per_doc": round(1e6 * m.get("wall_time_s", 0) / docs, 1),
            "in_clusters": st.get("documents_in_clusters"), "removed": sum(m["dropped"].values()),
            # the pair and cluster passes grow with the duplicates, not the documents: their time per
            # unit of their own work is what must stay flat as the clustered share rises with the copies
            "clustered_share": round(st.get("documents_in_clusters", 0) / docs, 3),
            "candidate_pairs": st.get("candidate_pairs"),
            "pairs_us_per_candidate": round(1e6 * st.get("seconds", {}).get("pairs", 0)
                                            / max(1, st.get("candidate_pairs") or 0), 2),
            "components_us_per_clustered": round(1e6 * st.get("seconds", {}).get("components", 0)
                                                 / max(1, st.get("documents_in_clusters") or 0), 2),
            # the byte-copy passes (before the signatures) count as signature work
            "signatures_us_per_doc": round(1e6 * sum(st.get("seconds", {}).get(k, 0) for k in
                                                     ("byte_copies", "signatures")) / docs, 2),
            "rounds": st.get("component_rounds"), "partitions": st.get("parameters", {}).get("partitions"),
            "driver_peak_MB": round(driver), "worker_peak_MB": round(worker),
            "task_peak_rss_MB": round(max(st.get("peak_task_rss_mb", {0: 0}).values())), "run_wall_s": round(wall, 1),
            "digest": output_digest(d / "out")[:16]}


def _lines(path: Path) -> list[bytes]:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read().splitlines()


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeat", type=int, default=1, help="runs of the largest scale (outputs must be identical)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dedup_scale_") as tmp:
        for s in args.scales:
            rows.append(run_scale(s, Path(tmp)))
            base = rows[0]
            rows[-1]["driver_ratio"] = round(rows[-1]["driver_peak_MB"] / max(1, base["driver_peak_MB"]), 2)
            rows[-1]["worker_ratio"] = round(rows[-1]["worker_peak_MB"] / max(1, base["worker_peak_MB"]), 2)
            rows[-1]["task_ratio"] = round(rows[-1]["task_peak_rss_MB"] / max(1, base["task_peak_rss_MB"]), 2)
            print_table("dedup scale", rows[-1:])
        largest = max(args.scales)
        digests = [next(r["digest"] for r in rows if r["scale"] == largest)]
        for k in range(1, args.repeat):
            digests.append(run_scale(largest, Path(tmp), run=k)["digest"])
            print(f"run {k + 1} of {largest}x: {digests[-1]}")
        for r in rows:
            if r["scale"] == largest:
                r["identical_runs"] = f"{sum(d == digests[0] for d in digests)} of {len(digests)}"
    print_table("dedup at scale", rows)
    save("dedup_scale", rows, quick=args.scales != [1, 2, 4, 8])


if __name__ == "__main__":
    main()
