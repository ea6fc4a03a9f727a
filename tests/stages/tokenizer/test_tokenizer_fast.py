"""gigatoken's BPE trainer against HF's on real text: same vocabulary and merges in the same order,
HF where it would differ (other pre-tokenizers, min_frequency cut-off), trainer recorded."""

from __future__ import annotations

import json

import pytest
from conftest import shared_corpus_rows

from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer, train


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rows = shared_corpus_rows(1200)
    return [r["text"][:50_000] for r in rows[::3]]  # ~3 MB, several languages


def _model(tok) -> dict:
    return json.loads(tok.to_str())["model"]


def test_gpt2_bpe_trains_with_gigatoken_and_equals_hf(texts):
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="gpt2", vocab_size=2000)
    tok, trainer = build_tokenizer(cfg)
    fast, info = train(cfg, tok, trainer, iter(texts), cfg.vocab_size)
    assert info["trainer"] == "gigatoken", info
    ref, trainer = build_tokenizer(cfg)
    ref.train_from_iterator(texts, trainer=trainer)
    got, want = _model(fast), _model(ref)
    assert len(want["merges"]) > 1500
    assert got["merges"] == want["merges"]  # same merges, same order
    assert got["vocab"] == want["vocab"]
    assert json.loads(fast.to_str()) == json.loads(ref.to_str())  # the whole tokenizer.json


def test_hf_trains_where_gigatoken_would_differ(texts):
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="llama3", vocab_size=600)
    tok, trainer = build_tokenizer(cfg)
    _, info = train(cfg, tok, trainer, iter(texts[:20]), cfg.vocab_size)
    assert info["trainer"] == "hf" and "pretokenizer llama3" in info["reason"]


def test_min_frequency_cut_off_falls_back_to_hf_with_the_same_result(texts):
    small = [t[:300] for t in texts[:10]]  # too little text to fill the vocabulary with pairs seen twice
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="gpt2", vocab_size=5000)
    tok, trainer = build_tokenizer(cfg)
    got, info = train(cfg, tok, trainer, iter(small), cfg.vocab_size)
    assert info["trainer"] == "hf" and "min_frequency" in info["reason"]
    ref, trainer = build_tokenizer(cfg)
    ref.train_from_iterator(small, trainer=trainer)
    assert _model(got)["merges"] == _model(ref)["merges"]
