"""Language balancing on the shared Debian corpus: UniMax (20 MB, 4 epochs) and temperature (α = 0.3).

Reports, per strategy, the largest gap between a language's byte share after sampling and its
computed target share (percentage points), and the stage's throughput.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from benchmarks.common import DEBIAN, manifest, print_table, run_cli, save
from pipeline.parquet_io import read_table

SPEC = f"""
name: bal
seed: 1
output: out
inputs:
  debian: {{paths: [{DEBIAN}]}}
stages:
  - {{name: ingest, type: ingest, inputs: [debian]}}
  - {{name: unimax, type: balance, inputs: [ingest], strategy: unimax, unit: bytes, budget: 20000000, max_epochs: 4}}
  - {{name: temperature, type: balance, inputs: [ingest], strategy: temperature, alpha: 0.3, unit: bytes,
      budget: 20000000}}
"""


def run(quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(SPEC)
        _, peak = run_cli(["run", "spec.yaml", "--quiet"], d)
        for stage in ("unimax", "temperature"):
            m = manifest(d / "out", stage)
            t = read_table(sorted((d / "out" / stage / "data").glob("*.parquet")), columns=["lang", "text"])
            size = pc.binary_length(t["text"]).to_numpy(zero_copy_only=False)
            by: Counter[str] = Counter()
            for lang, n in zip(t.column("lang").to_pylist(), size, strict=True):
                by[lang] += int(n)
            total = sum(by.values())
            langs = m["stats"]["languages"]
            gaps = {lang: abs(by[lang] / total - v["share_target"]) * 100 for lang, v in langs.items()}
            worst = max(gaps, key=gaps.get)
            rows.append({"strategy": stage, "languages": len(langs), "MB out": total / 1e6,
                         "max gap (pp)": gaps[worst], "worst": worst,
                         "max epochs": max(v["rate"] for v in langs.values()),
                         "seconds": m["wall_time_s"], "MB/s in": m["bytes_in"] / 1e6 / m["wall_time_s"],
                         "driver peak MB": peak})
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    out = run(p.parse_args().quick)
    print_table("language balancing on the Debian corpus (20 MB budget)", out)
    save("balance", out)
