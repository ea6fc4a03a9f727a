"""Dedup's giant-component path against the one-task path on the same corpus: same bytes, time, memory.

The corpus is synthetic so one component can be made as big as asked: a chain of ``--giant``
documents (each a 200-word window shifted 2 words from the last, so neighbours are near-duplicates
and the whole chain is one component), an exact copy of every tenth of them, 20 chains of 500 and
20,000 unrelated documents. Each size runs ``ingest -> dedup`` twice in a child process: with
``giant_component_docs`` above every component (the one-task ``representatives`` path) and with it
at 1,000 (every chain through :mod:`stages.dedup.giant`). Reported: whether ``data/`` and
``__clusters/`` are byte-identical, the seconds of the cluster-resolution phase (``representatives``
plus the giant passes), and the largest peak RSS of one task of those passes (a Ray worker's
baseline, about 300 MB, included) as the manifest records it.

Run: ``python benchmarks/bench_dedup_giant.py --giant 5000 20000``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import manifest, print_table, run_cli, save

SPEC = """name: giant
output: out
inputs: {{docs: {{paths: [{docs}]}}}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 4}}
  - {{name: dedup, type: dedup, inputs: [ingest], partition_rows: 5000, giant_component_docs: {threshold}}}
"""


def build_corpus(giant: int, path: Path, seed: int = 5) -> int:
    rng = random.Random(seed)
    vocab = [f"w{rng.randrange(10**9):09d}" for _ in range(20000)]

    def chain(c: int, length: int) -> list[dict[str, str]]:
        words = [rng.choice(vocab) for _ in range(200 + 2 * length)]
        out = [{"id": f"c{c:03d}-{i:06d}", "text": " ".join(words[2 * i: 2 * i + 200])} for i in range(length)]
        copies = rng.sample(range(length), length // 10)
        out += [{"id": f"{out[i]['id']}x", "text": out[i]["text"] + " "} for i in copies]
        return out

    docs = chain(0, giant)
    for c in range(1, 21):
        docs += chain(c, 500)
    docs += [{"id": f"s{k:06d}", "text": " ".join(rng.choice(vocab) for _ in range(150))} for k in range(20000)]
    rng.shuffle(docs)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return len(docs)


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(f for d in ("data", "__clusters") for f in (out / "dedup" / d).rglob("*.parquet")):
        h.update(f.read_bytes())
    return h.hexdigest()


def run(giant: int, work: Path) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    docs = work / "docs.jsonl"
    n = build_corpus(giant, docs)
    rows, digests = [], {}
    for mode, threshold in (("one task", 10**9), ("giant passes", 1000)):
        d = work / mode.replace(" ", "-")
        d.mkdir(exist_ok=True)
        (d / "spec.yaml").write_text(SPEC.format(docs=docs, threshold=threshold))
        wall, _ = run_cli(["run", "spec.yaml", "--quiet", "--force", "dedup"], d)
        m = manifest(d / "out", "dedup")["stats"]
        rss = {k: v for k, v in m["peak_task_rss_mb"].items() if k == "representatives" or k.startswith("giant-")}
        digests[mode] = digest(d / "out")
        rows.append({"documents": n, "largest cluster": m["largest_cluster"], "path": mode,
                     "resolution s": m["seconds"]["representatives"], "dedup wall s": round(wall, 1),
                     "peak task RSS MB": max(rss.values()), "identical": None})
    for r in rows:
        r["identical"] = len(set(digests.values())) == 1
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--giant", type=int, nargs="+", default=[5000, 20000], help="documents in the giant chain")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_dedup_giant"))
    args = ap.parse_args()
    rows = [r for g in args.giant for r in run(g, args.work / str(g))]
    print_table("dedup: giant components, one task vs giant passes", rows)
    save("dedup_giant", rows)


if __name__ == "__main__":
    main()
