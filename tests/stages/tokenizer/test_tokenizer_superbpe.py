"""SuperBPE stage 2: the merge learner by hand, the extended tokenizer against stock ``tokenizers``,
and the stage on Ray (pre-token counts on workers == counts on the driver, byte for byte)."""

from __future__ import annotations

import json
import random
from collections import Counter

import orjson
from tokenizers import Tokenizer

from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer
from stages.tokenizer.superbpe import count_chunks, extend_tokenizer, learn_merges, n_words

WORDS = [
    "the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "by", "this", "are", "from", "at",
    "be", "it", "an", "or", "which", "can", "was", "system", "file", "user", "data", "value", "process",
    "program", "option", "command", "default", "manual", "page",
]


def corpus(n: int, seed: int = 0) -> list[str]:
    """Sentences with frequent multi-word phrases (the case SuperBPE is for), plus digits and German."""
    rng = random.Random(seed)
    phrases = ["in the", "of the", "for example", "can be used", "the default value", "is set to"]
    out = []
    for i in range(n):
        parts = [rng.choice(phrases) if rng.random() < 0.4 else rng.choice(WORDS) for _ in range(rng.randint(5, 25))]
        text = " ".join(parts).capitalize() + f". Seite {i}: Die Datei wird geöffnet, {rng.randint(0, 9999)} mal."
        out.append(text)
    return out


def test_learn_merges_by_hand():
    tokens = ["a", "b", "c", "Ġ", "x"]
    # pair counts: (a,b)=3+2=5, (b,c)=3, (Ġ,x)=2, (x,Ġ)=1
    words = [[0, 1, 2], [0, 1], [3, 4, 3, 4]]
    merges, new, final = learn_merges(words, [3, 2, 1], tokens, n_merges=10, min_frequency=2)
    assert merges == [(0, 1), (5, 2), (3, 4)]
    assert new == ["ab", "abc", "Ġx"]
    assert final == [[6], [5], [7, 7]]  # (Ġx, Ġx) occurs once: below min_frequency 2
    assert words == [[0, 1, 2], [0, 1], [3, 4, 3, 4]]  # input untouched
    # the merge budget is respected, and ties break on the smaller pair of ids
    assert learn_merges([[0, 1], [3, 4]], [2, 2], tokens, n_merges=1)[0] == [(0, 1)]


def test_learn_merges_rules():
    # a token of more than max_words words is never made
    assert n_words("ĠofĠthe") == 2 and n_words("ĠĠ") == 0 and n_words("abc") == 1
    assert learn_merges([[0, 1]], [9], ["Ġof", "Ġthe"], 5, max_words=1)[0] == []
    assert learn_merges([[0, 1]], [9], ["Ġof", "Ġthe"], 5, max_words=2)[1] == ["ĠofĠthe"]
    # a merge whose result string already exists is skipped (it would re-enable stage-1 merges)
    assert learn_merges([[0, 1]], [9], ["a", "b", "ab"], 5)[0] == []


def _bpe(texts: list[str], vocab: int) -> Tokenizer:
    tok, trainer = build_tokenizer(TrainTokenizerConfig(name="t", type="train_tokenizer", vocab_size=vocab))
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def test_extended_tokenizer_loads_encodes_as_learnt_and_compresses(tmp_path):
    train, held = corpus(600), corpus(100, seed=1)
    stage1 = _bpe(train, 300)
    chunks = count_chunks(train)
    tok, stats = extend_tokenizer(stage1, chunks, vocab_size=420)
    assert stats["transition_vocab"] == 300 and stats["stage2_merges"] == 120
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = Tokenizer.from_file(str(path))  # stock tokenizers, no custom code
    assert loaded.get_vocab_size() == 420
    from transformers import PreTrainedTokenizerFast  # the Hugging Face loader, as trainers use it

    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast(held[0])["input_ids"] == loaded.encode(held[0]).ids
    assert fast.decode(fast(held[0])["input_ids"]) == held[0]
    # stock encoding of the training text gives exactly the learner's segmentation of its chunks
    hf = sum(len(e.ids) for e in loaded.encode_batch(train, add_special_tokens=False))
    assert hf == stats["chunk_tokens_after"] < stats["chunk_tokens_before"]
    vocab = loaded.get_vocab()
    assert "ĠofĠthe" in vocab or "ĠinĠthe" in vocab  # superwords across a space
    assert stats["superwords"] > 0
    # byte-level: lossless on anything, including text never seen
    for t in [*held, "日本語 テキスト\n\ttabs  and   spaces", "émoji 🎉 ok", ""]:
        assert loaded.decode(loaded.encode(t).ids) == t
    # fewer tokens than plain BPE of the same vocabulary size on held-out text
    plain = _bpe(train, 420)
    assert plain.get_vocab_size() == 420
    n_plain = sum(len(e.ids) for e in plain.encode_batch(held))
    n_super = sum(len(e.ids) for e in loaded.encode_batch(held))
    assert n_super < 0.9 * n_plain


SPEC = """
name: sb
seed: 3
output: out
inputs:
  docs: {{paths: [docs.jsonl]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.02}}
  - name: tok
    type: train_tokenizer
    inputs: [ingest]
    vocab_size: 420
    superbpe: {{enabled: true, transition_vocab: 300, parallel_count_mb: {par}}}
    report: {{heldout_docs: 50}}
"""


def test_stage_counts_on_ray_and_driver_identically(run_spec, tmp_path):
    lines = b"".join(orjson.dumps({"id": f"d{i}", "text": t, "lang": "en"}) + b"\n"
                     for i, t in enumerate(corpus(400)))
    outs = {}
    for par in (0, 1000):
        d = tmp_path / f"p{par}"
        d.mkdir()
        (d / "docs.jsonl").write_bytes(lines)
        _, out = run_spec(SPEC.format(par=par), directory=d)
        outs[par] = out
    ray_dir, driver_dir = outs[0] / "tok", outs[1000] / "tok"
    m_ray = json.loads((ray_dir / "manifest.json").read_text())
    m_drv = json.loads((driver_dir / "manifest.json").read_text())
    assert len(list((outs[0] / "ingest" / "data").glob("part-*.parquet"))) > 1
    assert m_ray["stats"]["superbpe"]["counted_on"] == "ray"
    assert m_drv["stats"]["superbpe"]["counted_on"] == "driver"
    assert (ray_dir / "__chunk_counts").is_dir() and not (ray_dir / "data").exists()
    # same sample, same counts, same merges: byte-identical tokenizer.json
    assert (ray_dir / "tokenizer.json").read_bytes() == (driver_dir / "tokenizer.json").read_bytes()
    s = m_ray["stats"]
    assert s["vocab_size"] == 420 and s["superbpe"]["stage2_merges"] == 120
    assert s["config"]["superbpe"]["transition_vocab"] == 300
    assert s["input_fingerprints"]["ingest"]
    tok = Tokenizer.from_file(str(ray_dir / "tokenizer.json"))
    counts = Counter(tok.encode(t).ids[0] for t in corpus(20, seed=5))
    assert counts  # it encodes
    assert all(tok.decode(tok.encode(t).ids) == t for t in corpus(50, seed=6))
    report = json.loads((ray_dir / "report.json").read_text())
    # every document is in the sample: no held-out figure measured on trained text, the report says so
    assert report["summary"]["bytes_per_token"] is None and "every document" in report["summary"]["heldout_none"]
