"""Dedup: tokenmill's stage and its signature core vs a plain datasketch MinHash + MinHashLSH loop.

Same documents, same shingles (word 5-grams), same num_perm, bands and rows. The datasketch loop
is what a user would write: MinHash per document, update_batch, insert into MinHashLSH, query.
Peak MB: PSS of the benchmark process during an in-process run (the corpus it holds included), of
the whole process tree (driver, Ray's processes and workers) for the stage.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from benchmarks.common import DEBIAN, load_jsonl_zst, manifest, measure, print_table, run_cli, save, write_jsonl


def run(quick: bool) -> list[dict]:
    from datasketch import MinHash, MinHashLSH

    from stages.dedup.config import NearConfig
    from stages.dedup.signatures import batch_shingle_hashes, lsh_params, minhash_signatures, permutations

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    near = NearConfig()
    bands, rows = lsh_params(near)
    perm = permutations(near.num_perm, near.seed)

    def core() -> int:
        n = 0
        for i in range(0, len(docs), 2048):
            sh = batch_shingle_hashes([d["text"] for d in docs[i:i + 2048]], near.shingle)
            n += len(minhash_signatures(sh, *perm))
        return n

    _, t_core, peak_core = measure(core)

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
    out = [
        {"what": "datasketch loop (1 process)", "docs": len(docs), "MB": mb, "seconds": t_ds,
         "MB/s": mb / t_ds, "docs/s": len(docs) / t_ds, "near dups removed": ds_dups, "ratio": 1.0,
         "peak MB": peak_ds},
        {"what": "tokenmill signatures (1 process)", "docs": len(docs), "MB": mb, "seconds": t_core,
         "MB/s": mb / t_core, "docs/s": len(docs) / t_core, "ratio": t_ds / t_core,
         "peak MB": peak_core},
        {"what": "tokenmill dedup stage (Ray, 2 CPUs)", "docs": len(docs), "MB": mb, "seconds": t_stage,
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
