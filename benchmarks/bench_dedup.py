"""Dedup: tokenmill's stage and its signature pass vs datasketch.

Same documents, same num_perm, bands and rows. The datasketch loop is what a user would write:
MinHash per document, update_batch, insert into MinHashLSH, query. The signature rows compare like
with like: datasketch ``MinHash`` fed tokenmill's shingle hashes (signatures only, checked equal
value for value on every document), tokenmill's shingling + MinHash core, and the whole signature
pass of the stage (``SignatureJob.run``: exact hashes, shingles, signatures, band keys, bucket and
signature files) on one process. MB/CPU-s: MB of text per second of this process's CPU time (the
in-process rows), robust to other jobs on the machine. Peak MB: PSS of the benchmark process during
an in-process run (the corpus it holds included), of the whole process tree (driver, Ray's
processes and workers) for the stage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, load_jsonl_zst, manifest, measure, print_table, run_cli, save, write_jsonl


def measure_cpu(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """(result, wall seconds, CPU seconds of this process, peak MB) of one in-process call."""
    t0 = time.process_time()
    out, wall, peak = measure(fn)
    return out, wall, time.process_time() - t0, peak


def signature_pass(docs: list[dict], tmp: Path) -> Callable[[], int]:
    """The stage's whole signature pass on one shard holding every document, as a Ray worker runs it."""
    from pipeline.executor import ShardTask
    from pipeline.locations import Location
    from stages.dedup.config import DedupConfig
    from stages.dedup.pairs import SignatureJob

    src = tmp / "docs.parquet"
    pq.write_table(pa.table({"id": [str(d["id"]) for d in docs], "text": [d["text"] for d in docs]}), src)
    cfg = DedupConfig(type="dedup", name="dedup", inputs=["ingest"], partitions=8)  # as the stage resolves "auto"
    job = SignatureJob(cfg, Location.of(tmp / "work"), {"k": 0})
    return lambda: job.run(ShardTask("k", Location.of(src)), None)["docs"]


def run(quick: bool) -> list[dict]:
    from datasketch import MinHash, MinHashLSH

    from stages.dedup.config import NearConfig
    from stages.dedup.signatures import batch_shingles, lsh_params, minhash_signatures, permutations, split_words

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    near = NearConfig()
    bands, rows = lsh_params(near)
    perm = permutations(near.num_perm, near.seed)
    batches = [pa.array([d["text"] for d in docs[i:i + 2048]], pa.string()) for i in range(0, len(docs), 2048)]

    def core() -> np.ndarray:
        """Shingles and signatures of every document, as the signature pass computes them."""
        sigs = []
        for texts in batches:
            sets = batch_shingles(texts, near.shingle, split_words(texts)).distinct()
            sigs.append(minhash_signatures(sets, *perm))
        return np.concatenate(sigs)

    ours, t_core, cpu_core, peak_core = measure_cpu(core)

    shingles = [s for texts in batches for s in batch_shingles(texts, near.shingle).to_list()]

    def datasketch_signatures() -> np.ndarray:
        """datasketch MinHash (affine32) fed the same shingle hashes: signatures only."""
        out = np.empty((len(shingles), near.num_perm), np.uint32)
        for i, sh in enumerate(shingles):
            m = MinHash(num_perm=near.num_perm, seed=near.seed, hashfunc=int)
            m.update_batch(sh.tolist())
            out[i] = m.hashvalues
        return out

    theirs, t_dsig, cpu_dsig, peak_dsig = measure_cpu(datasketch_signatures)
    equal = bool(np.array_equal(ours, theirs))
    del theirs

    with tempfile.TemporaryDirectory() as tmp:
        n_pass, t_pass, cpu_pass, peak_pass = measure_cpu(signature_pass(docs, Path(tmp)))
    assert n_pass == len(docs)

    word = re.compile(r"\w+")

    def datasketch_loop() -> int:
        lsh = MinHashLSH(num_perm=near.num_perm, params=(bands, rows))
        dups = 0
        for d in docs:
            words = word.findall(d["text"].lower())
            grams = {" ".join(words[j:j + 5]).encode() for j in range(max(1, len(words) - 4))} if words else set()
            m = MinHash(num_perm=near.num_perm, seed=near.seed)
            m.update_batch(list(grams))
            if lsh.query(m):
                dups += 1
            else:
                lsh.insert(d["id"], m)
        return dups

    ds_dups, t_ds, peak_ds = measure(datasketch_loop)

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_jsonl(docs, d / "docs.jsonl")
        (d / "spec.yaml").write_text(
            "name: b\noutput: out\ninputs: {docs: {paths: [docs.jsonl]}}\nstages:\n"
            "  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}\n"
            "  - {name: dedup, type: dedup, inputs: [ingest], exact: {enabled: false}}\n"
        )
        _, peak = run_cli(["run", "spec.yaml", "--quiet"], d)
        m = manifest(d / "out", "dedup")
    t_stage = m["wall_time_s"]
    removed = sum(m["dropped"].values())
    base = {"docs": len(docs), "MB": mb}
    out = [
        {"what": "datasketch loop: MinHash + MinHashLSH (1 process)", **base, "seconds": t_ds,
         "MB/s": mb / t_ds, "docs/s": len(docs) / t_ds, "near dups removed": ds_dups, "ratio": 1.0,
         "peak MB": peak_ds},
        {"what": "datasketch MinHash on tokenmill's shingle hashes (signatures only, 1 process)", **base,
         "seconds": t_dsig, "MB/s": mb / t_dsig, "MB/CPU-s": mb / cpu_dsig, "docs/s": len(docs) / t_dsig,
         "ratio": t_ds / t_dsig, "signatures equal": equal, "peak MB": peak_dsig},
        {"what": "tokenmill shingles + signatures (1 process)", **base, "seconds": t_core, "MB/s": mb / t_core,
         "MB/CPU-s": mb / cpu_core, "docs/s": len(docs) / t_core, "ratio": t_ds / t_core,
         "vs datasketch signatures": cpu_dsig / cpu_core, "signatures equal": equal, "peak MB": peak_core},
        {"what": "tokenmill signature pass: exact + near keys, bucket files (1 process)", **base,
         "seconds": t_pass, "MB/s": mb / t_pass, "MB/CPU-s": mb / cpu_pass, "docs/s": len(docs) / t_pass,
         "ratio": t_ds / t_pass, "vs datasketch signatures": cpu_dsig / cpu_pass, "peak MB": peak_pass},
        {"what": "tokenmill dedup stage (Ray, 2 CPUs)", **base, "seconds": t_stage,
         "MB/s": mb / t_stage, "docs/s": len(docs) / t_stage, "near dups removed": removed,
         "ratio": t_ds / t_stage, "peak MB": peak},
    ]
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    rows = run(p.parse_args().quick)
    print_table("dedup: tokenmill vs datasketch", rows)
    save("dedup", rows)
