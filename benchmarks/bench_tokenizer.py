"""Tokenizer training: the pipeline stage vs ``Tokenizer.train_from_iterator`` on the same text and cores."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import DEBIAN, load_jsonl_zst, manifest, print_table, run_cli, save, timed, write_jsonl


def run(quick: bool, vocab: int = 32000) -> list[dict]:
    from tokenizers import Tokenizer

    from stages.tokenizer_train import TrainTokenizerConfig, build_tokenizer

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    heldout = docs[::50]
    train = [d for i, d in enumerate(docs) if i % 50]
    mb = sum(len(d["text"].encode()) for d in train) / 1e6
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=vocab, max_doc_chars=100_000)
    tok, trainer = build_tokenizer(cfg)
    _, t_raw = timed(lambda: tok.train_from_iterator([d["text"][:100_000] for d in train], trainer=trainer))
    held = [d["text"] for d in heldout]
    held_bytes = sum(len(t.encode()) for t in held)
    raw_bpt = held_bytes / sum(len(e.ids) for e in tok.encode_batch(held, add_special_tokens=False))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_jsonl(train, d / "train.jsonl")
        (d / "spec.yaml").write_text(
            "name: b\noutput: out\ninputs: {docs: {paths: [train.jsonl]}}\nstages:\n"
            "  - {name: ingest, type: ingest, inputs: [docs]}\n"
            f"  - {{name: tok, type: train_tokenizer, inputs: [ingest], vocab_size: {vocab}, sample_mb: 100000,"
            " report: {heldout_docs: 0}}\n")
        run_cli(["run", "spec.yaml", "--quiet"], d)
        m = manifest(d / "out", "tok")
        stage_tok = Tokenizer.from_file(str(d / "out" / "tok" / "tokenizer.json"))
    stage_bpt = held_bytes / sum(len(e.ids) for e in stage_tok.encode_batch(held, add_special_tokens=False))
    return [
        {"what": "train_from_iterator", "vocab": vocab, "MB": mb, "seconds": t_raw, "MB/s": mb / t_raw,
         "held-out bytes/token": raw_bpt, "time ratio": 1.0},
        {"what": "train_tokenizer stage (training)", "vocab": vocab, "MB": m["stats"]["training_bytes"] / 1e6,
         "seconds": m["stats"]["train_seconds"], "MB/s": m["stats"]["training_mb_per_s"],
         "held-out bytes/token": stage_bpt, "time ratio": m["stats"]["train_seconds"] / t_raw},
        {"what": "train_tokenizer stage (whole, with report)", "vocab": vocab, "seconds": m["wall_time_s"],
         "time ratio": m["wall_time_s"] / t_raw},
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    out = run(p.parse_args().quick)
    print_table("tokenizer training: stage vs train_from_iterator", out)
    save("tokenizer", out)
