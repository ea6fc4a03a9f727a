"""Token-cleaning cores on the shared Debian corpus: n-gram counting, influence scoring, repetition masks.

Documents are turned into token ids by their UTF-8 bytes (vocabulary 256) so the benchmark needs no
tokenizer training; the cores only see integer ids, so the throughput carries over. Baseline in the
same run: trigram counting with ``collections.Counter`` over id tuples (what a plain Python n-gram
model does). Reported: tokens/s, MB/s of text, wall time, peak RSS, and the ratio to the baseline.

    python benchmarks/bench_clean.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, load_jsonl_zst, peak_rss_mb, print_table, save, timed
from stages.clean.core import NGramCounts, NGramLM, repetition_mask


def _row(name: str, wall: float, tokens: int, mb: float, base: float | None) -> dict:
    return {"case": name, "wall_s": round(wall, 3), "tokens/s": tokens / wall, "MB/s": mb / wall,
            "peak_rss_mb": round(peak_rss_mb(), 1), "x_baseline": (base / wall) if base else None}


def run(quick: bool) -> list[dict]:
    rows = load_jsonl_zst(DEBIAN, limit=2000 if quick else 20000)
    docs = [np.frombuffer(r["text"].encode(), np.uint8).astype(np.int64) for r in rows]
    tokens = sum(len(d) for d in docs)
    mb = tokens / 1e6
    ref_docs = [d for d, r in zip(docs, rows, strict=True) if r["source"] == "debian-handbook"] or docs[:100]

    def counter() -> Counter:
        c: Counter = Counter()
        for d in docs:
            t = d.tolist()
            c.update(zip(t, t[1:], t[2:], strict=False))
        return c

    _, t_counter = timed(counter)
    base, t_count = timed(lambda: NGramCounts(3).add_documents(docs))
    ref = NGramCounts(3).add_documents(ref_docs)
    b_lm, r_lm = NGramLM(base, 256), NGramLM(ref, 256)
    _, t_score = timed(lambda: [np.log(r_lm.prob(d)) - np.log(b_lm.prob(d)) for d in docs])
    _, t_rep = timed(lambda: [repetition_mask(d, 1, 13, 3) for d in docs])
    out = [
        _row("baseline: Counter of trigram tuples", t_counter, tokens, mb, None),
        _row("NGramCounts order 3 (uint64 keys)", t_count, tokens, mb, t_counter),
        _row("influence score (2 Witten-Bell LMs)", t_score, tokens, mb, None),
        _row("repetition_mask (periods 1-13)", t_rep, tokens, mb, None),
    ]
    for r in out:
        r["docs"] = len(docs)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    res = run(ap.parse_args().quick)
    print_table("clean cores (bytes as token ids)", res)
    save("clean", res)
