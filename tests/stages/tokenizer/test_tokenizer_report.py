"""The tokenizer report's figures on a tokenizer small enough to compute them by hand."""

from __future__ import annotations

import orjson
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from stages.tokenizer.quality import quality_report
from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer


def tiny_tokenizer() -> Tokenizer:
    """The 256 byte symbols, 'ab' (from the merge a+b) and 'ba' (no merge: never produced)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["ab"] = 256
    vocab["ba"] = 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_report_figures_by_hand(tmp_path):
    tok = tiny_tokenizer()
    # "abab ab" -> pre-tokens "abab", " ab" -> tokens ab ab Ġ ab: 4 tokens, 7 bytes, 2 words
    parallel = tmp_path / "par.jsonl"
    parallel.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [
        {"lang": "eng", "article": 1, "text": "ab"},     # 1 token
        {"lang": "xxx", "article": 1, "text": "a b a"},  # a Ġ b Ġ a: 5 tokens
    ]))
    report = quality_report(tok, [{"text": "abab ab", "lang": "xx"}], parallel=parallel, reference_lang="eng")
    xx = report["per_language"]["xx"]
    assert (xx["tokens"], xx["bytes"], xx["words"]) == (4, 7, 2)
    assert xx["bytes_per_token"] == 1.75 and xx["chars_per_token"] == 1.75 and xx["fertility"] == 2.0
    assert report["utilisation"]["ids_seen"] == 2
    assert report["utilisation"]["never_produced_share"] == round(1 - 2 / 258, 4)
    voc = report["vocabulary"]
    assert voc["partial_utf8"] == 128  # the lone bytes 0x80-0xFF decode to U+FFFD
    assert voc["unreachable"] == 1 and voc["unreachable_examples"] == ["ba"]
    tp = report["token_premium"]
    assert tp["premiums"] == {"eng": 1.0, "xxx": 5.0}
    assert tp["max_over_min"] == 5.0 and tp["cv"] == round(2 / 3, 4)


def test_every_model_trains_and_round_trips_where_lossless():
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "Der schnelle braune Fuchs. 12345 ",
             "日本語のテキスト"]
    for model in ("bpe", "unigram", "wordpiece"):
        cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", model=model, vocab_size=300, min_frequency=1)
        tok, trainer = build_tokenizer(cfg)
        tok.train_from_iterator(texts * 5, trainer=trainer)
        assert tok.get_vocab_size() >= 40
        ids = tok.encode(texts[0]).ids
        assert ids and max(ids) < tok.get_vocab_size()
        if model == "bpe":  # byte-level: lossless on any text
            assert all(tok.decode(tok.encode(t).ids) == t for t in texts)


def test_superword_ending_in_space_is_context_only_not_unreachable():
    """'aĠ' exists only before a non-space ("a 0"): SuperBPE's stage-2 split isolates a trailing space."""
    from stages.tokenizer.superbpe import stage2_pre_tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["aĠ"] = 256
    vocab["ba"] = 257  # no merge: truly unreachable
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "Ġ")]))
    tok.pre_tokenizer = stage2_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    assert tok.encode("a ").ids != [256]  # the naive check would call it unreachable
    assert tok.encode("a 0").ids == [256, vocab["0"]]
    voc = quality_report(tok, [{"text": "a 0", "lang": "xx"}])["vocabulary"]
    assert voc["context_only"] == 1 and voc["context_only_examples"] == ["aĠ"]
    assert voc["unreachable"] == 1 and voc["unreachable_examples"] == ["ba"]
