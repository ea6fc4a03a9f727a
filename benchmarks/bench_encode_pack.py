"""Encode vs ``Tokenizer.encode_batch`` on the same text and cores; then packing at seq_len 2048.

The raw baseline is ``encode_batch`` over all texts in one process with the Rust thread pool on
both cores (text already in memory). The stage reads Parquet, encodes on a 2-actor pool and writes
Parquet; its tokens/s includes all of that.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import DEBIAN, load_jsonl_zst, manifest, print_table, run_cli, save, timed, write_jsonl


def run(quick: bool) -> list[dict]:
    from tokenizers import Tokenizer

    from stages.tokenizer_train import TrainTokenizerConfig, build_tokenizer

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=32000)
        tok, trainer = build_tokenizer(cfg)
        tok.train_from_iterator(texts[::4], trainer=trainer)
        tok.save(str(d / "tokenizer.json"))
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        encs, t_raw = timed(lambda: tok.encode_batch(texts, add_special_tokens=False))
        n_tok = sum(len(e.ids) for e in encs)
        del encs
        write_jsonl(docs, d / "docs.jsonl")
        (d / "spec.yaml").write_text(
            "name: b\noutput: out\ninputs:\n  docs: {paths: [docs.jsonl]}\n"
            "  tok: {kind: artifact, path: tokenizer.json}\nstages:\n"
            "  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}\n"
            "  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok}\n"
            "  - {name: best_fit, type: pack, inputs: [encode], method: best_fit, seq_len: 2048, writers: []}\n"
            "  - {name: concat, type: pack, inputs: [encode], method: concat, seq_len: 2048, writers: []}\n")
        _, peak = run_cli(["run", "spec.yaml", "--quiet"], d)
        m = manifest(d / "out", "encode")
        t_stage = m["wall_time_s"]
        stage_tokens = m["stats"]["tokens"]
        rows.append({"what": "encode_batch (2 Rust threads)", "MB": mb, "tokens": n_tok, "seconds": t_raw,
                     "tokens/s": n_tok / t_raw, "MB/s": mb / t_raw, "ratio": 1.0})
        rows.append({"what": "encode stage (2 actors, Parquet in/out)", "MB": mb, "tokens": stage_tokens,
                     "seconds": t_stage, "tokens/s": stage_tokens / t_stage, "MB/s": mb / t_stage,
                     "ratio": (stage_tokens / t_stage) / (n_tok / t_raw), "driver peak MB": peak})
        for method in ("best_fit", "concat"):
            s = manifest(d / "out", method)["stats"]
            rows.append({"what": f"pack {method} @2048", "seconds": manifest(d / "out", method)["wall_time_s"],
                         "tokens": s["tokens"], "sequences": s["sequences"],
                         "padding %": 100 * s["padding_share"], "docs split %": 100 * s["documents_split_share"],
                         "docs split": s["documents_split"], "docs/seq": s["avg_documents_per_sequence"]})
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    out = run(p.parse_args().quick)
    print_table("encode and pack on the Debian corpus", out)
    save("encode_pack", out)
