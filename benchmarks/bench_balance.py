"""Language balancing on the shared Debian corpus: UniMax (20 MB, 4 epochs) and temperature (α = 0.3).

Reports, per strategy, the largest gap between a language's byte share after sampling and its
computed target share (percentage points: the acceptance bar is 2), the stage's throughput beside a
raw single-process pyarrow + xxhash sampler over the same Parquet parts (the floor: read, hash ids,
take, write; no counting pass, no calibration, no Ray), and whether the sampled Parquet is
byte-identical when the run is repeated with one Ray worker instead of two.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, ROOT, manifest, print_table, run_cli, save
from pipeline.parquet_io import read_table

SPEC = """
name: bal
seed: 1
output: out
inputs:
  debian: {{paths: [{corpus}]}}
stages:
  - {{name: ingest, type: ingest, inputs: [debian]}}
  - {{name: unimax, type: balance, inputs: [ingest], strategy: unimax, unit: bytes, budget: {budget}, max_epochs: 4}}
  - {{name: temperature, type: balance, inputs: [ingest], strategy: temperature, alpha: 0.3, unit: bytes,
      budget: {budget}}}
"""


def digest(files: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def raw_baseline(parts: list[Path], rates: dict[str, float], out: Path) -> float:
    """Seconds for the floor: per part, read, hash ids with xxhash, keep ⌊r⌋ + [u < frac r] copies, write."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p in parts:
        t = pq.read_table(p)
        u = np.array([xxhash.xxh64_intdigest(i.encode(), seed=1) for i in t["id"].to_pylist()]) / 2.0**64
        r = np.array([rates.get(x, 0.0) for x in t["lang"].to_pylist()])
        copies = (np.floor(r) + (u < r - np.floor(r))).astype(np.int64)
        pq.write_table(t.take(pa.array(np.repeat(np.arange(t.num_rows), copies))), out / p.name)
    return time.perf_counter() - t0


def run_once(d: Path, workers: str | None) -> float:
    env_before = os.environ.get("TOKENMILL_MAX_WORKERS")
    if workers:
        os.environ["TOKENMILL_MAX_WORKERS"] = workers
    try:
        _, peak = run_cli(["run", "spec.yaml", "--quiet"], d)
    finally:
        if env_before is None:
            os.environ.pop("TOKENMILL_MAX_WORKERS", None)
        else:
            os.environ["TOKENMILL_MAX_WORKERS"] = env_before
    return peak


def run(quick: bool) -> list[dict]:
    rows = []
    budget = 3_000_000 if quick else 20_000_000
    corpus = DEBIAN
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if quick:  # the quickstart's 5.6 MB sample of the same corpus
            corpus = ROOT / "yaml_specs" / "data" / "debian-sample.jsonl.zst"
        (d / "spec.yaml").write_text(SPEC.format(corpus=corpus, budget=budget))
        peak = run_once(d, None)
        first = {s: digest(sorted((d / "out" / s / "data").glob("*.parquet"))) for s in ("unimax", "temperature")}
        stats = {s: manifest(d / "out", s) for s in ("unimax", "temperature")}
        tables = {s: read_table(sorted((d / "out" / s / "data").glob("*.parquet")), columns=["lang", "text"])
                  for s in ("unimax", "temperature")}
        parts = sorted((d / "out" / "ingest" / "data").glob("*.parquet"))
        bytes_in = sum(pq.read_metadata(p).num_rows and p.stat().st_size for p in parts)
        import shutil

        shutil.rmtree(d / "out")
        run_once(d, "1")
        second = {s: digest(sorted((d / "out" / s / "data").glob("*.parquet"))) for s in ("unimax", "temperature")}
        for stage in ("unimax", "temperature"):
            m, t = stats[stage], tables[stage]
            size = pc.binary_length(t["text"]).to_numpy(zero_copy_only=False)
            by: Counter[str] = Counter()
            for lang, n in zip(t.column("lang").to_pylist(), size, strict=True):
                by[lang] += int(n)
            total = sum(by.values())
            langs = m["stats"]["languages"]
            gaps = {lang: abs(by[lang] / total - v["share_target"]) * 100 for lang, v in langs.items()}
            worst = max(gaps, key=gaps.get)
            rates = {lang: v["rate"] for lang, v in langs.items()}
            base_s = raw_baseline(parts, rates, d / "baseline" / stage)
            text_mb = sum(v["bytes"] for v in langs.values()) / 1e6
            rows.append({"strategy": stage, "languages": len(langs), "MB text in": text_mb, "MB out": total / 1e6,
                         "max gap (pp)": gaps[worst], "worst": worst,
                         "max epochs": max(v["epochs"] for v in langs.values()),
                         "stage s": m["wall_time_s"], "stage MB/s": text_mb / m["wall_time_s"],
                         "docs/s": m["rows_in"] / m["wall_time_s"],
                         "raw pyarrow+xxhash s": base_s, "raw MB/s": text_mb / base_s,
                         "ratio": (text_mb / m["wall_time_s"]) / (text_mb / base_s),
                         "same with 1 and 2 workers": "yes" if first[stage] == second[stage] else "NO",
                         "peak MB (process tree)": peak, "parquet MB in": bytes_in / 1e6})
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    out = run(p.parse_args().quick)
    print_table("language balancing on the Debian corpus", out)
    save("balance", out)
