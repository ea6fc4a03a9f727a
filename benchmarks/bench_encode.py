"""Encode stage (default settings) vs raw HF ``encode_batch`` vs raw gigatoken, same text, same cores.

Raw rows (text already in memory, no Parquet): HF ``Tokenizer.encode_batch`` over all texts at once
with the Rust thread pool on (all cores) -- the reference rate --, and ``gigatoken.Tokenizer
.encode_batch`` with its thread pool (all cores). The stage row runs ``pipeline run`` with the encode
stage's defaults (``engine: auto``, one actor per core, the sampled HF parity check on): it reads
Parquet, encodes and writes Parquet, and its rate counts all of that (wall time from its
manifest). Ids are compared with HF's on every document (gigatoken's raw output and the stage's
Parquet output), not a sample; a difference fails the benchmark. Ratios are tokens/s over the raw
HF rate; ``vs fast`` is over the raw gigatoken rate (the stage's own overhead). The 1-minute load
average is printed beside each row: on a shared host rows under different loads are not comparable.

    python benchmarks/bench_encode.py [--quick | --docs N]
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
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok}
"""


def _row(what: str, docs: int, mb: float, n_tok: int, secs: float, peak: float) -> dict:
    return {"what": what, "docs": docs, "MB": mb, "tokens": n_tok, "seconds": secs, "tokens/s": n_tok / secs,
            "MB/s": mb / secs, "peak MB": peak, "load avg": os.getloadavg()[0]}


def run(limit: int | None) -> list[dict]:
    import gigatoken
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer

    docs = load_jsonl_zst(DEBIAN, limit)
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=32000)  # default pre-tokenizer
        tok, trainer = build_tokenizer(cfg)
        tok.train_from_iterator(texts[::8], trainer=trainer)
        tok.save(str(d / "tokenizer.json"))
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        hf_ids: list[list[int]] = []

        def hf() -> int:
            hf_ids[:] = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
            return sum(map(len, hf_ids))

        n_tok, secs, peak = measure(hf)
        rows.append(_row("HF encode_batch, all threads", len(texts), mb, n_tok, secs, peak))

        fast = gigatoken.Tokenizer.from_json((d / "tokenizer.json").read_text(encoding="utf-8"))
        fast_ids: list = []

        def giga() -> int:
            fast_ids[:] = [fast.encode_batch(texts, parallel=True)]
            return len(fast_ids[0].layout.content)

        n_fast, secs, peak = measure(giga)
        rows.append(_row("gigatoken encode_batch, all threads", len(texts), mb, n_fast, secs, peak))
        fast_lists = fast_ids[0].to_list()
        bad = sum(a != b for a, b in zip(hf_ids, fast_lists, strict=True))
        assert bad == 0 and n_fast == n_tok, f"gigatoken differs from HF on {bad} documents"
        fast_ids.clear()
        del fast_lists
        write_jsonl(docs, d / "docs.jsonl")
        (d / "spec.yaml").write_text(SPEC)
        os.environ.pop("TOKENMILL_MAX_WORKERS", None)
        _, peak = run_cli(["run", "spec.yaml", "--quiet"], d)
        m = manifest(d / "out", "encode")
        secs, n_stage = m["wall_time_s"], m["stats"]["tokens"]
        eng = m["stats"]["engine"]["engine"]
        rows.append(_row(f"encode stage, defaults (engine {eng}, parity {m['stats']['parity_checked']} docs)",
                         len(texts), mb, n_stage, secs, peak))
        by_id = {doc["id"]: ids for doc, ids in zip(docs, hf_ids, strict=True)}
        checked = 0
        for part in sorted((d / "out" / "encode" / "data").glob("*.parquet")):
            t = pq.read_table(part, columns=["id", "input_ids"])
            for doc_id, ids in zip(t.column("id").to_pylist(), t.column("input_ids").to_pylist(), strict=True):
                assert ids[:-1] == by_id[doc_id], f"stage ids differ from HF on {doc_id}"  # last id: EOS
                checked += 1
        assert checked == len(docs), (checked, len(docs))
    hf_rate, fast_rate = rows[0]["tokens/s"], rows[1]["tokens/s"]
    for r in rows:
        r["vs HF"] = r["tokens/s"] / hf_rate
        r["vs fast"] = r["tokens/s"] / fast_rate
        r["ids = HF"] = f"{len(docs):,}/{len(docs):,} docs"
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="first 5k documents")
    p.add_argument("--docs", type=int, default=None, help="first N documents (default: the whole corpus)")
    a = p.parse_args()
    out = run(5000 if a.quick else a.docs)
    print_table("encode stage vs HF encode_batch vs gigatoken (vs HF / vs fast: tokens/s ratios)", out)
    save("encode", out, quick=a.quick or a.docs is not None)
