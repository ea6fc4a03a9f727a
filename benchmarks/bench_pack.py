"""Packing on the tokenized shared Debian corpus: best_fit vs concat at seq_len 2048.

The corpus is ingested and encoded by the pipeline (a 32k BPE trained on an eighth of it), then
packed by both methods with the Megatron, OLMo and numpy writers on. Reported per method: padding
share, documents split (for best_fit this must equal the documents longer than ``seq_len``),
documents per sequence, tokens/s of the stage. Baselines in the same run: the pure packing core
(``best_fit_decreasing`` over one unbounded buffer: the padding floor) and numpy's reshape of the
flat token stream (the speed ceiling of concat-and-chunk).

    python benchmarks/bench_pack.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow.parquet as pq

if __package__ in (None, ""):
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

SEQ_LEN = 2048
SPEC = f"""name: bench_pack
output: out
inputs:
  docs: {{paths: [docs.jsonl]}}
  tok: {{kind: artifact, path: tokenizer.json}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 16}}
  - {{name: encode, type: encode, inputs: [ingest], tokenizer: tok, keep_text: false}}
  - {{name: best_fit, type: pack, inputs: [encode], method: best_fit, seq_len: {SEQ_LEN},
      writers: [numpy, megatron, olmo]}}
  - {{name: concat, type: pack, inputs: [encode], method: concat, seq_len: {SEQ_LEN},
      writers: [numpy, megatron, olmo]}}
"""


def run(quick: bool) -> list[dict]:
    from stages.pack.packing import best_fit_decreasing, split_long
    from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=32000)
        tok, trainer = build_tokenizer(cfg)
        tok.train_from_iterator([x["text"] for x in docs[::8]], trainer=trainer)
        tok.save(str(d / "tokenizer.json"))
        write_jsonl(docs, d / "docs.jsonl")
        del docs, tok
        (d / "spec.yaml").write_text(SPEC)
        _, peak = run_cli(["run", "spec.yaml", "--quiet"], d)
        parts = sorted((d / "out" / "encode" / "data").glob("part-*.parquet"))
        lengths = np.concatenate([pq.read_table(p, columns=["n_tokens"]).column("n_tokens").to_numpy()
                                  for p in parts])
        long_docs = int((lengths > SEQ_LEN).sum())
        for method in ("best_fit", "concat"):
            m = manifest(d / "out", method)
            s = m["stats"]
            rows.append({"what": f"pack stage {method} @{SEQ_LEN} (3 writers)", "docs": s["documents"],
                         "tokens": s["tokens"], "sequences": s["sequences"], "seconds": m["wall_time_s"],
                         "tokens/s": s["tokens"] / m["wall_time_s"], "padding %": 100 * s["padding_share"],
                         "docs split": s["documents_split"], "docs > seq_len": long_docs,
                         "docs/seq": s["avg_documents_per_sequence"], "peak MB": peak})
        n_tok = int(lengths.sum())
        chunks = split_long(lengths.tolist(), SEQ_LEN)
        bins, secs, core_peak = measure(lambda: best_fit_decreasing(chunks, SEQ_LEN))
        rows.append({"what": "core best_fit_decreasing, one unbounded buffer", "docs": len(lengths),
                     "tokens": n_tok, "sequences": len(bins), "seconds": secs, "tokens/s": n_tok / secs,
                     "padding %": 100 * (1 - n_tok / (len(bins) * SEQ_LEN)), "docs split": long_docs,
                     "docs > seq_len": long_docs, "docs/seq": len(chunks) / len(bins), "peak MB": core_peak})
        flat = np.concatenate([pq.read_table(p, columns=["input_ids"]).column("input_ids").combine_chunks()
                               .flatten().to_numpy() for p in parts])
        n_seq = len(flat) // SEQ_LEN
        _, secs, flat_peak = measure(lambda: flat[:n_seq * SEQ_LEN].reshape(n_seq, SEQ_LEN).copy())
        rows.append({"what": "numpy reshape of the flat stream (concat floor)", "docs": len(lengths),
                     "tokens": len(flat), "sequences": n_seq, "seconds": secs, "tokens/s": len(flat) / secs,
                     "peak MB": flat_peak})
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="first 20k documents")
    out = run(p.parse_args().quick)
    print_table(f"packing at seq_len {SEQ_LEN} on the Debian corpus", out)
    save("pack", out)
