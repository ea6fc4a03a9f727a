"""Encode engines on real text: gigatoken where it supports the tokenizer.json, HF otherwise, the
sampled parity check (passing, failing with a diagnostic, falling back), long documents in pieces.

Tokenizers are trained in the test with the project's own builder (HF tokenizers, no downloads);
the text is the first documents of the Debian corpus in ``../shared/data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import shared_corpus_rows

from pipeline.errors import TokenmillError
from stages.encode.engines import load_encoder, split_points, split_safe
from stages.encode.stage import EncodeConfig, EncodeStage
from stages.tokenizer.stage import TrainTokenizerConfig, build_tokenizer

KINDS = [("bpe", "gpt2"), ("bpe", "llama3"), ("bpe", "digits"), ("unigram", "llama3"), ("wordpiece", "llama3"),
         ("superbpe", "llama3")]
EXPECTED_ENGINE = {("bpe", "llama3"): "fast", ("bpe", "digits"): "fast"}  # gigatoken refuses the others


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    rows = shared_corpus_rows(600)
    return [{"id": r["id"], "text": r["text"][:20_000], "lang": r.get("lang")} for r in rows]


def _train(kind: tuple[str, str], texts: list[str]) -> str:
    model, pre = kind
    cfg = TrainTokenizerConfig(name="t", type="train_tokenizer", model="bpe" if model == "superbpe" else model,
                               pretokenizer=pre, vocab_size=1200)
    tok, trainer = build_tokenizer(cfg, 900 if model == "superbpe" else None)
    tok.train_from_iterator(texts, trainer=trainer)
    if model == "superbpe":
        from stages.tokenizer.superbpe import count_chunks, extend_tokenizer

        tok, _ = extend_tokenizer(tok, count_chunks(texts), vocab_size=1200)
    return tok.to_str()


#: characters of each document a tokenizer trains on, and of each document in the long-document
#: tests: a 1200-token vocabulary of every kind is full from 300 such heads (0.57 M characters), and
#: the time of Unigram's training and of whole-text encoding is proportional to the text
HEAD_CHARS = 2000


@pytest.fixture(scope="module")
def tokenizers(docs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    texts = [d["text"][:HEAD_CHARS] for d in docs[:300]]
    out = {}
    for kind in KINDS:
        path = tmp_path_factory.mktemp("tok") / f"{kind[0]}-{kind[1]}.json"
        path.write_text(_train(kind, texts), encoding="utf-8")
        out[kind] = path
    return out


def _stage(path: Path, **cfg) -> EncodeStage:
    from tokenizers import Tokenizer

    stage = EncodeStage(EncodeConfig(name="encode", type="encode", tokenizer="tok", add_eos=False, **cfg))
    vocab = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    stage.setup({"path": str(path), "vocab_size": vocab, "bos_id": None, "eos_id": None})
    return stage


def _batch(docs: list[dict]) -> pa.Table:
    return pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs],
                     "lang": [d["lang"] for d in docs]})


@pytest.mark.parametrize("kind", KINDS, ids=["-".join(k) for k in KINDS])
def test_every_tokenizer_kind_encodes_as_hf_with_the_engine_recorded(kind, tokenizers, docs):
    stage = _stage(tokenizers[kind])
    expected = EXPECTED_ENGINE.get(kind, "hf")
    assert stage.encoder.engine == expected, stage.encoder.reason
    if expected == "hf":
        assert "does not support" in stage.encoder.reason
    res = stage.process(_batch(docs))
    hf = stage.encoder.reference.encode_batch([d["text"] for d in docs], add_special_tokens=False)
    assert res.kept.column("input_ids").to_pylist() == [e.ids for e in hf]  # every document, not a sample
    if expected == "fast":
        assert res.stats["parity_checked"] >= 16
        assert res.stats["parity_mismatches"] == 0
    else:
        assert "parity_checked" not in res.stats  # HF is the reference: nothing to check


def test_parity_sample_is_exact_deterministic_and_the_smallest_hashes(docs):
    import math

    import xxhash

    from stages.encode.stage import ALL, PARITY_SALT, ParityConfig, parity_sample

    ids = pa.array([d["id"] for d in docs])
    p = ParityConfig(rate=0.05, min_docs=16)
    chosen = parity_sample(ids, p)
    assert len(chosen) == math.ceil(0.05 * len(ids)) == 30  # exactly the rate, not a binomial count
    assert chosen.equals(parity_sample(ids, p))
    assert sorted(parity_sample(ids[::-1], p).to_pylist()) == sorted(chosen.to_pylist())  # order-free
    h = {d: xxhash.xxh64_intdigest(PARITY_SALT + d.encode()) for d in ids.to_pylist()}
    picked = set(chosen.to_pylist())
    assert max(h[d] for d in picked) < min(h[d] for d in h if d not in picked)  # unbiased: by hash alone
    assert len(parity_sample(ids[:100], p)) == 16  # min_docs on a small shard
    assert parity_sample(ids[:16], p) is ALL
    assert parity_sample(ids, ParityConfig(rate=1.0)) is ALL


@pytest.mark.parametrize("batch_rows", [37, 8192])
def test_the_shard_job_checks_the_same_documents_whatever_the_batch_size(batch_rows, tokenizers, docs, tmp_path):
    """Through the stage's shard job: the parity sample is drawn from the whole shard, its size is
    max(ceil(rate x n), min_docs), and the stage's profile (seconds per phase) is in the stats."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from pipeline.executor import ShardOutput, ShardTask
    from stages.encode.stage import EncodeJob

    path = tokenizers[("bpe", "llama3")]
    cfg = EncodeConfig(name="encode", type="encode", tokenizer="tok", batch_rows=batch_rows, keep_text=True,
                       parity={"rate": 0.05, "min_docs": 16})
    tok = Tokenizer.from_file(str(path))
    job = EncodeJob(EncodeStage, cfg, {"path": str(path), "vocab_size": tok.get_vocab_size(with_added_tokens=True),
                                       "bos_id": None, "eos_id": tok.token_to_id("<|endoftext|>")})
    src = tmp_path / "part-0.parquet"
    pq.write_table(_batch(docs[:400]), src)
    out = ShardOutput(tmp_path / "work", "0")
    result = job.run(ShardTask("0", src), out)
    out.commit()
    assert result["stats"]["parity_checked"] == 20 and result["stats"]["parity_mismatches"] == 0
    seconds = result["stats"]["seconds"]
    assert {"encode", "parity", "frame", "read_write", "worker_setup"} <= set(seconds)
    assert seconds["encode"] > 0 and seconds["worker_setup"] > 0
    assert len(result["stats"]["shard_spans"]) == 1
    written = pq.read_table(tmp_path / "work" / "data" / "part-0.parquet")
    eos = tok.token_to_id("<|endoftext|>")
    hf = tok.encode_batch([d["text"] for d in docs[:400]], add_special_tokens=False)
    assert written.column("input_ids").to_pylist() == [[*e.ids, eos] for e in hf]
    meta = pq.ParquetFile(tmp_path / "work" / "data" / "part-0.parquet").metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in cols["input_ids.list.element"].encodings
    assert not cols["text"].is_stats_set and cols["id"].is_stats_set  # no min/max of whole documents


def test_a_batch_mixing_long_and_short_documents_encodes_as_hf(tokenizers, docs):
    """Only the documents above the piece size go piece by piece; the rest stay on Arrow buffers."""
    encoder = load_encoder(tokenizers[("bpe", "llama3")].read_text(encoding="utf-8"), piece_bytes=4000)
    texts = [d["text"] for d in docs[:60]]
    texts[7] = "\n".join(texts[:30])  # one long document in the middle, ~ tens of pieces
    flat, offsets = encoder.encode_column(pa.array(texts))
    assert encoder.stats["split_documents"] >= 1
    hf = encoder.reference.encode_batch(texts, add_special_tokens=False)
    got = [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))]
    assert got == [e.ids for e in hf]


def test_the_fast_engine_cache_is_bounded_by_reloading_with_the_same_ids(tokenizers, monkeypatch):
    """gigatoken's pre-token cache never shrinks; past ``cache_mb`` of growth the engine is reloaded
    (an empty cache) and keeps encoding as HF does. The process's resident size is read through a
    stand-in that grows 3 MB per read: in a test process that reuses freed memory, the real one may
    not grow at all (the cache's growth itself is measured in the README)."""
    import random
    import string

    from stages.encode import engines

    grown = iter(range(0, 1 << 40, 3 << 20))
    monkeypatch.setattr(engines, "resident_bytes", lambda: next(grown))
    rng = random.Random(5)
    texts = [" ".join("".join(rng.choices(string.ascii_lowercase, k=9)) for _ in range(200)) for _ in range(2000)]
    bounded = load_encoder(tokenizers[("bpe", "llama3")].read_text(encoding="utf-8"), cache_mb=8)
    assert bounded.engine == "fast"
    first = bounded.fast
    got = []
    for i in range(0, len(texts), 250):  # batches, as a stage's
        flat, offsets = bounded.encode_column(pa.array(texts[i:i + 250]))
        got += [flat[offsets[j]:offsets[j + 1]].tolist() for j in range(len(offsets) - 1)]
    # 3 MB a batch: reloads after the 3rd and the 6th of 8
    assert bounded.stats["cache_reloads"] == 2 and bounded.fast is not first
    assert got == [e.ids for e in bounded.reference.encode_batch(texts, add_special_tokens=False)]


def _perturbed(path: Path) -> str:
    """The same tokenizer with its first and last merges swapped: a fast encoder that is subtly wrong."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    merges = spec["model"]["merges"]
    merges[0], merges[-1] = merges[-1], merges[0]
    return json.dumps(spec, ensure_ascii=False)


def test_a_mismatch_fails_with_document_position_and_both_windows(tokenizers, docs):
    import gigatoken

    path = tokenizers[("bpe", "llama3")]
    stage = _stage(path, parity={"rate": 1.0})
    stage.encoder.fast = gigatoken.Tokenizer.from_json(_perturbed(path))  # a wrong fast engine, HF unchanged
    with pytest.raises(TokenmillError, match=r"document '.+': fast engine ids differ from HF tokenizers at token "
                                             r"\d+ .*fast\[\d+:\d+\]=\[.*hf\[\d+:\d+\]=\["):
        stage.process(_batch(docs[:50]))


def test_fallback_reencodes_the_shard_with_hf_and_records_it(tokenizers, docs, tmp_path):
    """Through the stage's shard job: the first batches pass, a later one mismatches, and the whole
    shard is written again with HF ids."""
    import gigatoken
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from pipeline.executor import ShardOutput, ShardTask
    from stages.encode.stage import EncodeJob

    path = tokenizers[("bpe", "llama3")]
    cfg = EncodeConfig(name="encode", type="encode", tokenizer="tok", add_eos=False, batch_rows=20,
                       parity={"rate": 1.0, "on_mismatch": "fallback"})
    vocab = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    job = EncodeJob(EncodeStage, cfg, {"path": str(path), "vocab_size": vocab, "bos_id": None, "eos_id": None})
    job.setup()
    job.stage.encoder.fast = gigatoken.Tokenizer.from_json(_perturbed(path))
    src = tmp_path / "part-0.parquet"
    pq.write_table(_batch(docs[:60]), src)
    out = ShardOutput(tmp_path / "work", "0")
    result = job.run(ShardTask("0", src), out)
    out.commit()
    written = pq.read_table(tmp_path / "work" / "data" / "part-0.parquet")
    hf = job.stage.encoder.reference.encode_batch([d["text"] for d in docs[:60]], add_special_tokens=False)
    assert written.column("input_ids").to_pylist() == [e.ids for e in hf]
    assert written.column("id").to_pylist() == [d["id"] for d in docs[:60]]  # no batch written twice
    assert result["rows_out"] == 60
    assert result["stats"]["parity_fallback_shards"] == 1
    assert result["stats"]["engine_shards"] == {"hf": 1}  # the shard's ids are HF's; the engine chosen stays
    assert result["stats"]["engine_chosen"][0] == "fast"
    assert result["stats"]["parity_mismatches"] > 0
    assert "differ from HF" in result["stats"]["parity_mismatch_examples"][0]


def test_engine_fast_on_an_unsupported_tokenizer_is_a_clear_error(tokenizers):
    with pytest.raises(TokenmillError, match="engine: fast is not available"):
        load_encoder(tokenizers[("unigram", "llama3")].read_text(encoding="utf-8"), "fast")
    assert load_encoder(tokenizers[("bpe", "llama3")].read_text(encoding="utf-8"), "hf").engine == "hf"


@pytest.mark.parametrize("kind", [("bpe", "gpt2"), ("bpe", "llama3"), ("bpe", "digits")],
                         ids=["gpt2", "llama3", "digits"])
def test_long_document_in_pieces_equals_the_whole_document(kind, tokenizers, docs):
    text = "\n".join(d["text"][:HEAD_CHARS] for d in docs)  # ~1 MB of real text, every document's language
    encoder = load_encoder(tokenizers[kind].read_text(encoding="utf-8"), piece_bytes=4000)  # ~1000-char pieces
    assert encoder.can_split
    cuts = split_points(text, encoder.piece_chars)
    assert len(cuts) > 100
    whole = encoder.reference.encode(text, add_special_tokens=False).ids
    for hf in (False, True):
        pieces = encoder.encode_arrays([text], hf=hf)[0]
        assert pieces.tolist() == whole
    assert encoder.stats["split_documents"] == 2 and encoder.stats["pieces"] == 2 * (len(cuts) + 1)


def test_splitting_only_where_the_pre_tokenizer_allows_it(tokenizers):
    for kind, path in tokenizers.items():
        assert split_safe(json.loads(path.read_text(encoding="utf-8"))) == (kind[0] == "bpe"), kind


def test_documents_above_max_doc_bytes_are_rejected_with_their_size(tokenizers, docs):
    stage = _stage(tokenizers[("bpe", "llama3")], max_doc_bytes=5000)
    batch = _batch(docs[:40])
    res = stage.process(batch)
    sizes = [len(d["text"].encode()) for d in docs[:40]]
    assert res.kept.num_rows == sum(s <= 5000 for s in sizes)
    assert res.rejected.num_rows == sum(s > 5000 for s in sizes) > 0
    assert set(res.rejected.column("reason").to_pylist()) == {"doc_too_large"}
    assert "max_doc_bytes" in res.rejected.column("detail")[0].as_py()
    assert np.all(np.array(res.kept.column("n_tokens").to_pylist()) >= 0)
