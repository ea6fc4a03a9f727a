"""gigatoken's BPE trainer from pre-token counts against HF's trainer on real text: the same vocabulary
and merges in the same order for every pre-tokenizer option (gigatoken where it reproduces HF, HF
otherwise), the min_frequency cut, the counts the trainer's input file re-creates, and the stage
counting on Ray workers (map/reduce) and on the driver to byte-identical tokenizers."""

from __future__ import annotations

import json
from collections import Counter

import orjson
import pytest
from conftest import shared_corpus_rows

from pipeline.locations import Location
from pipeline.parquet_io import read_table
from stages.tokenizer.fast_trainer import count_pretokens, write_repeated
from stages.tokenizer.sample import HashSample, calibrate, iter_sample
from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer, train


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rows = shared_corpus_rows(1200)
    return [r["text"][:50_000] for r in rows[::3]]  # ~3 MB, several languages


def _model(tok) -> dict:
    return json.loads(tok.to_str())["model"]


def _hf(cfg: TrainTokenizerConfig, texts: list[str]):
    ref, trainer = build_tokenizer(cfg)
    ref.train_from_iterator(texts, trainer=trainer)
    return ref


@pytest.mark.parametrize("pretokenizer", ["gpt2", "llama3", "digits"])
def test_stage_trainer_equals_hf_for_every_pretokenizer(texts, pretokenizer):
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer=pretokenizer, vocab_size=2000)
    tok, trainer = build_tokenizer(cfg)
    got, info = train(cfg, tok, trainer, iter(texts), cfg.vocab_size)
    if pretokenizer == "gpt2":
        assert info["trainer"] == "gigatoken" and info["merges_cut_by_min_frequency"] == 0, info
        assert info["counted_on"] == "driver" and info["merges"] == cfg.vocab_size - 258, info
    else:  # gigatoken's trainer splits with GPT-2's pattern only: HF trains, and says why
        assert info["trainer"] == "hf" and f"pretokenizer {pretokenizer}" in info["reason"]
    want = _model(_hf(cfg, texts))
    assert len(want["merges"]) > 1500
    assert _model(got)["merges"] == want["merges"]  # same merges, same order
    assert _model(got)["vocab"] == want["vocab"]
    assert json.loads(got.to_str())["model"] == want


def test_fast_tokenizer_json_is_hfs(texts):
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="gpt2", vocab_size=1000)
    tok, trainer = build_tokenizer(cfg)
    got, _ = train(cfg, tok, trainer, iter(texts[:100]), cfg.vocab_size)
    assert json.loads(got.to_str()) == json.loads(_hf(cfg, texts[:100]).to_str())  # the whole tokenizer.json


@pytest.mark.parametrize("min_frequency", [2, 9])
def test_min_frequency_cuts_gigatokens_merges_where_hf_stops(texts, min_frequency):
    small = [t[:2000] for t in texts[:60]]  # too little text to fill the vocabulary with frequent pairs
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="gpt2", vocab_size=6000,
                               min_frequency=min_frequency)
    tok, trainer = build_tokenizer(cfg)
    got, info = train(cfg, tok, trainer, iter(small), cfg.vocab_size)
    assert info["trainer"] == "gigatoken" and info["merges_cut_by_min_frequency"] > 100, info
    want = _model(_hf(cfg, small))
    assert 300 < len(want["merges"]) < 6000 - 258  # HF stopped before the vocabulary was full
    assert _model(got)["merges"] == want["merges"]
    assert _model(got)["vocab"] == want["vocab"]


def test_nul_in_a_document_trains_with_hf(texts):
    docs = [*texts[:20], "a\x00b " * 50]
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="gpt2", vocab_size=600)
    tok, trainer = build_tokenizer(cfg)
    got, info = train(cfg, tok, trainer, iter(docs), cfg.vocab_size)
    assert info["trainer"] == "hf" and "NUL" in info["reason"]
    assert _model(got)["merges"] == _model(_hf(cfg, docs))["merges"]


def test_repeated_pretokens_recount_to_the_same_counts(texts, tmp_path):
    """The trainer's input file (each pre-token `count` times, NUL after each) pre-tokenizes back to
    exactly the counts it was written from: gigatoken sees the sample's pre-tokens, no more, no fewer."""
    counts = count_pretokens(t.encode() for t in texts)
    words = sorted(counts)
    path = tmp_path / "w.bin"
    size = write_repeated(words, [counts[w] for w in words], path)
    assert size == sum((len(w) + 1) * c for w, c in counts.items())
    again = count_pretokens(path.read_bytes().split(b"\x00"))
    assert again == counts
    assert sum(1 for w in counts if w.startswith(b" ") and len(w.strip()) == 0) > 1  # whitespace runs too


SPEC = """
name: fast
seed: 3
output: out
inputs:
  docs: {{paths: [docs.jsonl]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.3}}
  - name: tok
    type: train_tokenizer
    inputs: [ingest]
    vocab_size: 1500
    pretokenizer: gpt2
    parallel_count_mb: {par}
    report: {{heldout_docs: 20}}
"""


def test_stage_counts_on_ray_and_driver_to_the_same_tokenizer(run_spec, tmp_path):
    rows = shared_corpus_rows(1200)[1::3]
    lines = b"".join(orjson.dumps({"id": r["id"], "text": r["text"][:20_000], "lang": r.get("lang")}) + b"\n"
                     for r in rows)
    outs = {}
    for par in (0, 1000):
        d = tmp_path / f"p{par}"
        d.mkdir()
        (d / "docs.jsonl").write_bytes(lines)
        outs[par] = run_spec(SPEC.format(par=par), directory=d)[1]
    assert len(list((outs[0] / "ingest" / "data").glob("part-*.parquet"))) > 2
    m = {par: json.loads((outs[par] / "tok" / "manifest.json").read_text())["stats"] for par in outs}
    assert m[0]["trainer"]["counted_on"] == "ray" and m[1000]["trainer"]["counted_on"] == "driver"
    assert m[0]["trainer"]["trainer"] == "gigatoken"
    for key in ("training_documents", "training_bytes", "training_bytes_per_language"):
        assert m[0][key] == m[1000][key], key
    assert m[0]["trainer"]["distinct_pretokens"] > 10_000  # counted by the workers' map/reduce
    got = (outs[0] / "tok" / "tokenizer.json").read_bytes()
    assert got == (outs[1000] / "tok" / "tokenizer.json").read_bytes()
    assert not list((outs[0] / "tok").rglob("*.parquet"))  # the counts were scratch, removed on commit
    # and it is HF's tokenizer trained on the stage's sample (read back from the ingest parts)
    locs = [Location.of(f) for f in sorted((outs[0] / "ingest" / "data").glob("part-*.parquet"))]
    sample, _ = calibrate(locs, HashSample("tok", "sample", 3), 256e6, 100_000)
    sample_texts = [r["text"] for r in iter_sample(locs, sample, 100_000)]
    assert len(sample_texts) == m[0]["training_documents"] == read_table(locs).num_rows
    cfg = TrainTokenizerConfig(name="tok", type="train_tokenizer", pretokenizer="gpt2", vocab_size=1500)
    assert json.loads(got)["model"] == _model(_hf(cfg, sample_texts))
    assert Counter(json.loads(got)["model"]["vocab"].values()).most_common(1)[0][1] == 1  # ids unique
