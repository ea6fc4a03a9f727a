"""Dedup quality on real near-duplicates, scored with brute-force Jaccard of every pair.

Corpus: the manual pages and the Debian Administrator's Handbook chapters of the shared Debian corpus
(``source`` ``manpages`` and ``debian-handbook``): natural near-copies (a manual page shipped by
several packages, handbook chapters left untranslated under another language label, licence and
copyright boilerplate), not synthetic edits. Truth: the word 5-gram Jaccard of every pair, with its
own shingle definition (lower-cased whitespace words joined as strings; not tokenmill's hashes),
computed exactly as a sparse product ``X @ X.T`` of the document-by-shingle incidence matrix.

Scores, per threshold t (default settings otherwise):

* **recall**: pairs with J >= t + 0.05 that end in one cluster (tokenmill: one ``cluster_id``; the
  datasketch loop: the same kept document);
* **twin >= t - 0.1**: removed documents whose kept document (tokenmill: ``kept_id``; the loop:
  its best-matching query result) has J >= t - 0.1 with them;
* removed documents and the largest cluster.

datatrove (0.10, its four-step MinHash pipeline with the same n-gram size, bands and rows, one
task so that document indices are line numbers) keeps one document per cluster: a removed document's
kept twin is the one kept member of its cluster.

The datasketch loop is what a user writes: for each document in corpus order, ``MinHashLSH.query``
then ``insert`` if nothing matched, same num_perm, bands and rows as the stage. tokenmill runs the
real stage (``ingest -> dedup``) in a child process on the local Ray.
Run: ``python benchmarks/bench_dedup_quality.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, load_jsonl_zst, print_table, run_cli, save, write_jsonl

SOURCES = ("manpages", "debian-handbook")


def corpus(quick: bool) -> list[dict[str, Any]]:
    docs = [d for d in load_jsonl_zst(DEBIAN) if d["source"] in SOURCES]
    docs = [{"id": d["id"], "text": d["text"], "lang": d["lang"], "source": d["source"]} for d in docs]
    return docs[:3000] if quick else docs


def shingle_sets(texts: list[str], n: int = 5) -> list[set[str]]:
    out = []
    for t in texts:
        w = t.lower().split()
        out.append({" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))} if w else set())
    return out


class Truth:
    """Exact Jaccard of every pair that shares a shingle (sparse incidence product)."""

    def __init__(self, sets: list[set[str]]):
        from scipy.sparse import csr_matrix

        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, s in enumerate(sets):
            for g in s:
                rows.append(i)
                cols.append(vocab.setdefault(g, len(vocab)))
        x = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(sets), len(vocab)))
        self.sizes = np.array([len(s) for s in sets], np.float64)
        inter = (x @ x.T).tocoo()
        upper = inter.row < inter.col
        self.i, self.j, inter_v = inter.row[upper], inter.col[upper], inter.data[upper].astype(np.float64)
        self.jac = inter_v / (self.sizes[self.i] + self.sizes[self.j] - inter_v)
        self.sets = sets

    def pairs_at_least(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        sel = self.jac >= t
        return self.i[sel], self.j[sel]

    def jaccard(self, a: int, b: int) -> float:
        sa, sb = self.sets[a], self.sets[b]
        return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def run_tokenmill(docs: list[dict[str, Any]], t: float, tmp: Path) -> tuple[dict[str, str], dict[str, str], float]:
    """(cluster_id per clustered id, kept_id per removed id, seconds)."""
    import pyarrow.parquet as pq

    d = tmp / f"tm{t}"
    d.mkdir()
    write_jsonl(docs, d / "docs.jsonl")
    (d / "spec.yaml").write_text(
        "name: q\noutput: out\ninputs: {docs: {paths: [docs.jsonl]}}\nstages:\n"
        "  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}\n"
        f"  - {{name: dedup, type: dedup, inputs: [ingest], near: {{threshold: {t}}}}}\n")
    wall, _ = run_cli(["run", "spec.yaml", "--quiet"], d)
    folder = next(p for p in (d / "out" / "dedup").iterdir() if p.is_dir() and p.name.strip("_") == "clusters")
    rows = pq.read_table(folder).to_pylist()
    cluster = {r["id"]: r["cluster_id"] for r in rows}
    kept = {r["id"]: r["kept_id"] for r in rows if not r["kept"]}
    return cluster, kept, wall


def run_datasketch(docs: list[dict[str, Any]], sets: list[set[str]], t: float,
                   truth: Truth) -> tuple[dict[str, str], dict[str, str]]:
    from datasketch import MinHash, MinHashLSH

    from stages.dedup.config import NearConfig
    from stages.dedup.signatures import lsh_params

    near = NearConfig(threshold=t)
    lsh = MinHashLSH(num_perm=near.num_perm, params=lsh_params(near))
    index = {d["id"]: i for i, d in enumerate(docs)}
    cluster: dict[str, str] = {}
    kept: dict[str, str] = {}
    for i, (doc, s) in enumerate(zip(docs, sets, strict=True)):
        m = MinHash(num_perm=near.num_perm, seed=near.seed)
        m.update_batch([g.encode() for g in s])
        hits = lsh.query(m)
        if hits:
            best = max(sorted(hits), key=lambda k: truth.jaccard(i, index[k]))
            kept[doc["id"]] = best
            cluster[doc["id"]] = best
            cluster.setdefault(best, best)
        else:
            lsh.insert(doc["id"], m)
    return cluster, kept


DT_CLUSTERS = """
import sys
sys.path.insert(0, {root!r})
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from benchmarks.bench_datatrove import WhitespaceWords, patch_xxhash
patch_xxhash()
cfg = MinhashConfig(n_grams=5, num_buckets={bands}, hashes_per_bucket={rows}, hash_config=HashConfig(precision=64))
if __name__ == "__main__":
    LocalPipelineExecutor([JsonlReader("in"), MinhashDedupSignature(output_folder="sigs", config=cfg,
                           language=WhitespaceWords())], tasks=1, logging_dir="logs/1").run()
    LocalPipelineExecutor([MinhashDedupBuckets(input_folder="sigs", output_folder="buckets", config=cfg)],
                          tasks=cfg.num_buckets, workers=2, logging_dir="logs/2").run()
    LocalPipelineExecutor([MinhashDedupCluster(input_folder="buckets", output_folder="remove", config=cfg,
                           save_cluster_id=True)], tasks=1, logging_dir="logs/3").run()
"""


def run_datatrove(docs: list[dict[str, Any]], t: float, tmp: Path) -> tuple[dict[str, str], dict[str, str]]:
    """datatrove's clusters: (cluster label per clustered id, kept id per removed id)."""
    import subprocess

    from benchmarks.common import ROOT
    from stages.dedup.config import NearConfig
    from stages.dedup.signatures import lsh_params

    bands, rows = lsh_params(NearConfig(threshold=t))
    d = tmp / f"dt{t}"
    (d / "in").mkdir(parents=True)
    write_jsonl([{"id": x["id"], "text": x["text"]} for x in docs], d / "in" / "docs.jsonl")
    (d / "run.py").write_text(DT_CLUSTERS.format(root=str(ROOT), bands=bands, rows=rows))
    subprocess.run([sys.executable, "run.py"], cwd=d, check=True, capture_output=True)
    removed = set(np.fromfile(d / "remove" / "000000.remove", "<u4").tolist()) \
        if (d / "remove" / "000000.remove").exists() else set()
    pairs = np.fromfile(d / "remove" / "000000.clusters", "<u4").reshape(-1, 2) \
        if (d / "remove" / "000000.clusters").exists() else np.zeros((0, 2), np.uint32)
    members: dict[int, list[int]] = {}
    for doc, c in pairs.tolist():
        members.setdefault(c, []).append(doc)
    cluster: dict[str, str] = {}
    kept: dict[str, str] = {}
    for group in members.values():
        (keeper,) = [x for x in group if x not in removed]  # datatrove keeps one document per cluster
        for x in group:
            cluster[docs[x]["id"]] = docs[keeper]["id"]
            if x != keeper:
                kept[docs[x]["id"]] = docs[keeper]["id"]
    return cluster, kept


def score(name: str, t: float, docs: list[dict[str, Any]], truth: Truth, cluster: dict[str, str],
          kept: dict[str, str]) -> dict[str, Any]:
    ids = [d["id"] for d in docs]
    index = {x: i for i, x in enumerate(ids)}
    pi, pj = truth.pairs_at_least(t + 0.05)
    found = sum(cluster.get(ids[a]) is not None and cluster.get(ids[a]) == cluster.get(ids[b])
                for a, b in zip(pi.tolist(), pj.tolist(), strict=True))
    twin = [truth.jaccard(index[r], index[k]) for r, k in kept.items()]
    sizes: dict[str, int] = {}
    for c in cluster.values():
        sizes[c] = sizes.get(c, 0) + 1
    return {"system": name, "threshold": t, "docs": len(docs), "true pairs": len(pi),
            "recall": round(found / max(1, len(pi)), 4), "removed": len(kept),
            "twin >= t-0.1": round(float(np.mean(np.array(twin) >= t - 0.1)) if twin else 1.0, 4),
            "removed without twin": int(sum(j < t - 0.1 for j in twin)),
            "largest cluster": max(sizes.values(), default=0)}


def run(quick: bool, thresholds: tuple[float, ...] = (0.7, 0.8)) -> list[dict[str, Any]]:
    docs = corpus(quick)
    sets = shingle_sets([d["text"] for d in docs])
    truth = Truth(sets)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dedup_quality_") as tmp:
        for t in thresholds:
            cluster, kept, _ = run_tokenmill(docs, t, Path(tmp))
            rows.append(score("tokenmill", t, docs, truth, cluster, kept))
            rows.append(score("datasketch query-then-insert", t, docs, truth, *run_datasketch(docs, sets, t, truth)))
            rows.append(score("datatrove", t, docs, truth, *run_datatrove(docs, t, Path(tmp))))
            print_table("dedup quality", rows[-3:])
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the first 3,000 documents")
    args = p.parse_args()
    rows = run(args.quick)
    print_table("dedup quality on real near-duplicates (brute-force Jaccard)", rows)
    save("dedup_quality", rows)
