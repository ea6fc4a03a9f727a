"""Tokenizer training: the pipeline stage vs ``Tokenizer.train_from_iterator`` on the same text and cores
(32k byte-level BPE with the GPT-2 pre-tokenizer, which the stage trains with ``gigatoken.train_bpe``
from pre-token counts; ``speedup vs HF`` is HF's time over the stage's, side by side in one run, ``same
merges`` compares the stage's merges with HF's, order included), and SuperBPE vs plain byte-level BPE
at the same vocabulary size on held-out Debian text."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/bench_tokenizer.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DEBIAN, load_jsonl_zst, manifest, print_table, run_cli, save, timed, write_jsonl


def run_training(quick: bool, vocab: int = 32000, pretokenizer: str = "gpt2") -> list[dict]:
    """``train_from_iterator`` and the stage (with its defaults: pre-token counts on the driver for a
    sample of this size; and, as a second stage of the same run, counted on Ray workers with
    ``parallel_count_mb: 0``) on the same text; ``speedup vs HF`` is HF's training time over the stage's,
    ``same merges`` compares the whole merge list, order included."""
    import json

    from tokenizers import Tokenizer

    from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer

    docs = load_jsonl_zst(DEBIAN, 20000 if quick else None)
    heldout = docs[::50]
    train = [d for i, d in enumerate(docs) if i % 50]
    texts = [d["text"][:100_000] for d in train]  # what the stage trains on (max_doc_chars)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=vocab, max_doc_chars=100_000,
                               pretokenizer=pretokenizer)
    tok, trainer = build_tokenizer(cfg)
    _, t_raw = timed(lambda: tok.train_from_iterator(texts, trainer=trainer))
    held = [d["text"] for d in heldout]
    held_bytes = sum(len(t.encode()) for t in held)

    def bpt(t: Tokenizer) -> float:
        return held_bytes / sum(len(e.ids) for e in t.encode_batch(held, add_special_tokens=False))

    hf_merges = json.loads(tok.to_str())["model"]["merges"]
    rows = [{"what": "train_from_iterator", "vocab": vocab, "MB": mb, "seconds": t_raw, "MB/s": mb / t_raw,
             "held-out bytes/token": bpt(tok), "speedup vs HF": 1.0, "merges": len(hf_merges)}]
    stages = {"tok": "", "tok_ray": " parallel_count_mb: 0,"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_jsonl(train, d / "train.jsonl")
        spec = "name: b\noutput: out\ninputs: {docs: {paths: [train.jsonl]}}\nstages:\n" \
               "  - {name: ingest, type: ingest, inputs: [docs]}\n"
        for name, extra in stages.items():
            spec += (f"  - {{name: {name}, type: train_tokenizer, inputs: [ingest], vocab_size: {vocab},"
                     f" sample_mb: 100000, pretokenizer: {pretokenizer},{extra} report: {{heldout_docs: 0}}}}\n")
        (d / "spec.yaml").write_text(spec)
        run_cli(["run", "spec.yaml", "--quiet"], d)
        for name, extra in stages.items():
            m = manifest(d / "out", name)
            stage_tok = Tokenizer.from_file(str(d / "out" / name / "tokenizer.json"))
            merges = json.loads(stage_tok.to_str())["model"]["merges"]
            s, tr = m["stats"], m["stats"].get("trainer", {})
            how = tr.get("trainer", "hf") + (f", counted on {tr['counted_on']}" if "counted_on" in tr else "")
            rows.append({"what": f"train_tokenizer stage (training: {how})", "vocab": vocab,
                         "MB": s["training_bytes"] / 1e6, "seconds": s["train_seconds"],
                         "MB/s": s["training_mb_per_s"], "held-out bytes/token": bpt(stage_tok),
                         "speedup vs HF": t_raw / s["train_seconds"], "merges": len(merges),
                         "same merges": "yes" if merges == hf_merges else "NO"})
            rows.append({"what": f"train_tokenizer stage (whole, with report{', Ray counts' if extra else ''})",
                         "vocab": vocab, "seconds": m["wall_time_s"], "speedup vs HF": t_raw / m["wall_time_s"]})
    return rows


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) so each row reports its own peak (Linux clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


#: (vocabulary, transition) pairs compared: the paper's gain grows with the vocabulary (Liu et al. 2025).
SIZES = ((32000, 16000), (64000, 32000))


def run_superbpe(quick: bool, sizes: tuple[tuple[int, int], ...] = SIZES) -> list[dict]:
    """Plain BPE vs SuperBPE (stage 1 to ``transition``, then :mod:`stages.tokenizer.superbpe`) on the
    same training sample and at the same vocabulary size; tokens on held-out documents (every 50th,
    never trained on)."""
    from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer
    from stages.tokenizer.superbpe import count_chunks, extend_tokenizer

    docs = load_jsonl_zst(DEBIAN)
    held = [d["text"] for d in docs[::50]]
    held_bytes = sum(len(t.encode()) for t in held)
    rows = []
    for (vocab, transition), step in itertools.product(sizes, (16,) if quick else (16, 1)):
        train = [d["text"][:100_000] for i, d in enumerate(docs) if i % 50 and i % step == 0]
        mb = sum(len(t.encode()) for t in train) / 1e6

        def bpe(v: int, texts: list[str] = train) -> object:
            tok, trainer = build_tokenizer(TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=v))
            tok.train_from_iterator(texts, trainer=trainer)
            return tok

        _reset_peak()
        plain, t_plain = timed(lambda v=vocab: bpe(v))
        peak_plain = _peak_mb()
        _reset_peak()
        stage1, t1 = timed(lambda t=transition: bpe(t))
        chunks, t_count = timed(lambda texts=train: count_chunks(texts))
        (sb, st), t2 = timed(lambda s1=stage1, c=chunks, v=vocab: extend_tokenizer(s1, c, v))
        peak_sb = _peak_mb()
        n_plain = sum(len(e.ids) for e in plain.encode_batch(held, add_special_tokens=False))
        n_sb = sum(len(e.ids) for e in sb.encode_batch(held, add_special_tokens=False))
        assert all(sb.decode(e.ids) == t for e, t in zip(sb.encode_batch(held[:500]), held[:500], strict=True))
        rows.append({"what": "BPE (train_from_iterator)", "vocab": vocab, "train MB": mb, "seconds": t_plain,
                     "MB/s": mb / t_plain, "peak MB": peak_plain, "held-out tokens": n_plain,
                     "bytes/token": held_bytes / n_plain, "tokens vs BPE": 1.0})
        rows.append({"what": f"SuperBPE t={transition}", "vocab": sb.get_vocab_size(), "train MB": mb,
                     "seconds": t1 + t_count + t2, "MB/s": mb / (t1 + t_count + t2), "peak MB": peak_sb,
                     "held-out tokens": n_sb, "bytes/token": held_bytes / n_sb, "tokens vs BPE": n_sb / n_plain,
                     "stage-2 s": t2, "chunks": st["distinct_chunks"], "superwords": st["superwords"]})
    return rows


def run(quick: bool) -> list[dict]:
    """Both comparisons (the rows run_all prints)."""
    return run_training(quick) + run_superbpe(quick)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["train", "superbpe"], help="run one of the two comparisons")
    p.add_argument("--pretokenizer", default="gpt2", choices=["gpt2", "llama3", "digits"],
                   help="training comparison: the pre-tokenizer (gigatoken trains gpt2, HF the others)")
    p.add_argument("--sizes", default=",".join(f"{v}:{t}" for v, t in SIZES),
                   help="SuperBPE comparisons as VOCAB:TRANSITION,...")
    a = p.parse_args()
    if a.only != "superbpe":
        out = run_training(a.quick, pretokenizer=a.pretokenizer)
        print_table("tokenizer training: stage vs train_from_iterator", out)
        save("tokenizer", out)
    if a.only != "train":
        sizes = tuple((int(v), int(t)) for v, t in (x.split(":") for x in a.sizes.split(",")))
        sb_rows = run_superbpe(a.quick, sizes)
        print_table("SuperBPE vs BPE, same vocabulary, held-out Debian text", sb_rows)
        save("tokenizer_superbpe", sb_rows)
