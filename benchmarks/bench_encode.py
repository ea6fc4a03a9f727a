"""Encode stage (default settings) vs raw HF ``encode_batch`` vs raw gigatoken, same text, same cores.

Raw rows (text already in memory, no Parquet): HF ``Tokenizer.encode_batch`` over all texts at once
with the Rust thread pool on (all cores) -- the reference rate --, and ``gigatoken.Tokenizer
.encode_batch`` with its thread pool (all cores). The stage row runs ``pipeline run`` with the encode
stage's defaults (``engine: auto``, one worker per core keeping the tokenizer, the sampled HF parity
check on): it reads Parquet, encodes and writes Parquet, and its rate counts all of that (wall time
from its manifest: the workers' set-up included). A second stage row runs the same stage as one worker
whose engines use their thread pools (``rust_threads: true``, ``TOKENMILL_MAX_WORKERS=1``), the
alternative to one single-threaded worker per core. Ids are compared with HF's on every document
(gigatoken's raw output and each stage run's Parquet output), not a sample; a difference fails the
benchmark. ``stage/HF`` and ``stage/fast`` are MB/s over the raw HF and raw gigatoken rates (the
latter shows the stage's own overhead). A second table is the stage's own profile from its manifest
(``stats.seconds``): driver-side start, the span in which shards ran, and seconds per phase summed
over workers, and the workers' idle time inside the span (start skew, between shards, at the end).
The 1-minute load average is printed beside each row: on a shared host rows under
different loads are not comparable.

With ``--repeat N`` raw gigatoken and the stage run N times, alternating, and the rows show the
median run (each run's seconds beside it): on this shared 2-core host the same run varies by ~30 %.

    python benchmarks/bench_encode.py [--quick | --docs N] [--no-threads-variant] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

SPEC = """name: bench_encode
output: out
inputs:
  docs: {paths: [docs.jsonl]}
  tok: {kind: artifact, path: tokenizer.json}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok%s}
"""


#: the stage runs' profiles of the last :func:`run` (printed and saved beside the rows)
PROFILES: dict[str, dict] = {}


def _row(what: str, docs: int, mb: float, n_tok: int, secs: float, peak: float,
         runs: list[float] | None = None) -> dict:
    row = {"what": what, "docs": docs, "MB": mb, "tokens": n_tok, "seconds": secs, "tokens/s": n_tok / secs,
           "MB/s": mb / secs, "peak MB": peak, "load avg": os.getloadavg()[0]}
    if runs is not None and len(runs) > 1:
        row["seconds, each run"] = " / ".join(f"{s:.2f}" for s in runs)
    return row


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The median run by seconds (the lower middle of an even count): its seconds and its peak."""
    return sorted(runs)[(len(runs) - 1) // 2]


def _check_stage_ids(out: Path, docs: list[dict], hf_ids: list[list[int]]) -> int:
    """Every document of the stage's output equals HF's ids (plus the EOS); the number checked."""
    import pyarrow.parquet as pq

    by_id = {doc["id"]: ids for doc, ids in zip(docs, hf_ids, strict=True)}
    checked = 0
    for part in sorted((out / "encode" / "data").glob("*.parquet")):
        t = pq.read_table(part, columns=["id", "input_ids"])
        for doc_id, ids in zip(t.column("id").to_pylist(), t.column("input_ids").to_pylist(), strict=True):
            assert ids[:-1] == by_id[doc_id], f"stage ids differ from HF on {doc_id}"  # last id: EOS
            checked += 1
    assert checked == len(docs), (checked, len(docs))
    return checked


def profile_rows(profiles: dict[str, dict]) -> list[dict]:
    """One row per stage run: the manifest's ``stats.seconds`` flattened (driver, span, per phase)."""
    rows = []
    for what, sec in profiles.items():
        row: dict = {"stage run": what}
        row |= {k: v for k, v in sec.items() if k not in ("worker", "worker_first_shard", "idle_in_span")}
        row |= {f"idle {k}": v for k, v in sec.get("idle_in_span", {}).items()}
        row["worker starts (s)"] = ", ".join(f"{t:.2f}" for t in sec.get("worker_first_shard", []))
        row |= {f"Σ {k}": v for k, v in sec.get("worker", {}).items()}
        rows.append(row)
    return rows


def run(limit: int | bool | None, threads_variant: bool = True, repeat: int = 1) -> list[dict]:
    """The rows; ``limit``: first N documents, or run_all's quick flag (True: 5,000, False: all);
    ``repeat``: runs of raw gigatoken and of each stage variant, alternating (rows show medians)."""
    if isinstance(limit, bool):
        limit = 5000 if limit else None
    PROFILES.clear()
    import gigatoken
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

        json_text = (d / "tokenizer.json").read_text(encoding="utf-8")
        fast_ids: list = []

        fresh: list = []

        def giga() -> int:
            fast_ids[:] = [fresh.pop().encode_batch(texts, parallel=True)]
            return len(fast_ids[0].layout.content)

        write_jsonl(docs, d / "docs.jsonl")
        (d / "spec.yaml").write_text(SPEC % "")
        (d / "spec-threads.yaml").write_text(SPEC % ", rust_threads: true")
        variants = [("spec.yaml", "encode stage, defaults", {})]
        if threads_variant:
            variants.append(("spec-threads.yaml", "encode stage, 1 worker, engine threads",
                             {"TOKENMILL_MAX_WORKERS": "1"}))
        raw_runs: list[tuple[float, float]] = []
        stage_runs: dict[str, list[tuple[float, float, dict]]] = {label: [] for _, label, _ in variants}
        for i in range(repeat):  # alternating: raw gigatoken, then each stage variant, `repeat` times
            # a new tokenizer each run, loaded before the clock starts: its word cache starts empty, as each
            # stage worker's does (a second call on the same one was 2-3x faster here)
            fresh.append(gigatoken.Tokenizer.from_json(json_text))
            n_fast, secs, peak = measure(giga)
            raw_runs.append((secs, peak))
            if i == 0:
                fast_lists = fast_ids[0].to_list()
                bad = sum(a != b for a, b in zip(hf_ids, fast_lists, strict=True))
                assert bad == 0 and n_fast == n_tok, f"gigatoken differs from HF on {bad} documents"
                del fast_lists
            fast_ids.clear()
            for spec, label, env in variants:
                os.environ.pop("TOKENMILL_MAX_WORKERS", None)
                os.environ.update(env)
                try:  # ingest as well on every run: encode then starts on warm workers, as in the first run
                    _, peak = run_cli(["run", spec, "--quiet", *(["--force", "ingest", "--force", "encode"]
                                                                  if i else [])], d)
                finally:
                    os.environ.pop("TOKENMILL_MAX_WORKERS", None)
                m = manifest(d / "out", "encode")
                stage_runs[label].append((m["wall_time_s"], peak, m))
                _check_stage_ids(d / "out", docs, hf_ids)
        secs, peak = _median(raw_runs)
        rows.append(_row("gigatoken encode_batch, all threads", len(texts), mb, n_fast, secs, peak,
                         [s for s, _ in raw_runs]))
        for _, label, _ in variants:
            runs = stage_runs[label]
            secs, peak = _median([(s, p) for s, p, _ in runs])
            m = next(m for s, _, m in runs if s == secs)  # the median run's manifest and profile
            eng = m["stats"]["engine"]["engine"]
            rows.append(_row(f"{label} (engine {eng}, parity {m['stats']['parity_checked']} docs)",
                             len(texts), mb, m["stats"]["tokens"], secs, peak, [s for s, _, _ in runs]))
            PROFILES[label] = m["stats"].get("seconds", {})
    hf_rate, fast_rate = rows[0]["MB/s"], rows[1]["MB/s"]
    for r in rows:
        r["stage/HF"] = r["MB/s"] / hf_rate
        r["stage/fast"] = r["MB/s"] / fast_rate
        r["ids = HF"] = f"{len(docs):,}/{len(docs):,} docs"
    save("encode_profile", profile_rows(PROFILES), quick=limit is not None)
    return rows



if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="first 5k documents")
    p.add_argument("--docs", type=int, default=None, help="first N documents (default: the whole corpus)")
    p.add_argument("--no-threads-variant", action="store_true", help="skip the 1-worker, engine-threads stage run")
    p.add_argument("--repeat", type=int, default=1, help="runs of raw gigatoken and of each stage variant, "
                   "alternating; rows show the medians (the run-to-run spread on a shared host is ~30 %%)")
    a = p.parse_args()
    out = run(5000 if a.quick else a.docs, threads_variant=not a.no_threads_variant, repeat=a.repeat)
    print_table("encode stage vs HF encode_batch vs gigatoken (stage/HF, stage/fast: MB/s ratios)", out)
    print_table("encode stage profile (manifest stats.seconds; Σ = summed over workers)", profile_rows(PROFILES))
    save("encode", out, quick=a.quick or a.docs is not None)
