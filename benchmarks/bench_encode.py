"""Encode stage vs ``Tokenizer.encode_batch`` on the same text and the same cores.

Raw baselines (text already in memory, no Parquet): ``encode_batch`` over all texts at once and in
batches of 1,024 documents, with the Rust thread pool on (all cores) and off (one core). The stage
reads Parquet, encodes on a Ray actor pool and writes Parquet; its rate counts all of that. Two
splits of the cores are measured for the stage: one actor per core with Rust threads off (the
default) and one actor using the Rust pool. Throughput is the stage's own wall time from its
manifest; peak memory is the PSS of this process during a raw run (the texts it holds included)
and of the whole process tree (driver, Ray's processes, actors) during a stage run. The 1-minute load
average is printed beside each row: on a shared host, rows measured under different loads are
not comparable, and the ratio is only meaningful when the load stays near the core count.

    python benchmarks/bench_encode.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    DEBIAN,
    load_jsonl_zst,
    manifest,
    measure,
    print_table,
    run_cli,
    save,
    write_jsonl,
)

SPEC = """name: bench_encode
output: out
inputs:
  docs: {paths: [docs.jsonl]}
  tok: {kind: artifact, path: tokenizer.json}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok, rust_threads: RUST}
"""


def _raw(tok: object, texts: list[str], batch: int | None, threads: bool) -> tuple[int, float, float]:
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"

    def go() -> int:
        if batch is None:
            return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
        return sum(len(e.ids) for i in range(0, len(texts), batch)
                   for e in tok.encode_batch(texts[i:i + batch], add_special_tokens=False))

    return measure(go)


def run(quick: bool) -> list[dict]:
    from tokenizers import Tokenizer

    from stages.tokenizer_train import TrainTokenizerConfig, build_tokenizer

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=32000)
        tok, trainer = build_tokenizer(cfg)
        tok.train_from_iterator(texts[::8], trainer=trainer)
        tok.save(str(d / "tokenizer.json"))
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        raws = []
        for label, batch, threads in [("all at once, Rust pool on", None, True),
                                      ("batches of 1024, Rust pool on", 1024, True),
                                      ("batches of 1024, 1 thread", 1024, False)]:
            raws.append((label, *_raw(tok, texts, batch, threads)))
        best = max(n / s for _, n, s, _ in raws)
        for label, n_tok, secs, peak in raws:
            rows.append({"what": f"encode_batch: {label}", "docs": len(texts), "MB": mb, "tokens": n_tok,
                         "seconds": secs, "tokens/s": n_tok / secs, "MB/s": mb / secs, "docs/s": len(texts) / secs,
                         "ratio": (n_tok / secs) / best, "peak MB": peak,
                         "load avg": os.getloadavg()[0]})
        del tok
        write_jsonl(docs, d / "docs.jsonl")
        for label, rust, workers, force in [("stage: 1 actor/core, Rust pool off (default)", "false", "", []),
                                            ("stage: 1 actor, Rust pool on", "true", "1", ["--force", "encode"])]:
            (d / "spec.yaml").write_text(SPEC.replace("RUST", rust))
            if workers:
                os.environ["TOKENMILL_MAX_WORKERS"] = workers
            else:
                os.environ.pop("TOKENMILL_MAX_WORKERS", None)
            _, peak = run_cli(["run", "spec.yaml", "--quiet", *force], d)
            m = manifest(d / "out", "encode")
            secs, n_tok = m["wall_time_s"], m["stats"]["tokens"]
            rows.append({"what": label, "docs": len(texts), "MB": mb, "tokens": n_tok, "seconds": secs,
                         "tokens/s": n_tok / secs, "MB/s": mb / secs, "docs/s": len(texts) / secs,
                         "ratio": (n_tok / secs) / best, "peak MB": peak,
                         "load avg": os.getloadavg()[0]})
        os.environ.pop("TOKENMILL_MAX_WORKERS", None)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="first 20k documents")
    out = run(p.parse_args().quick)
    print_table("encode stage vs tokenizers encode_batch (ratio: tokens/s over the best raw rate)", out)
    save("encode", out)
