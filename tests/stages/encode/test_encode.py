"""Encode cores without Ray: dtype choice, BOS/EOS framing, special-token lookup, the stage's batch path.

A small real BPE tokenizer is trained in the test (HF tokenizers, no downloads).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.errors import TokenmillError
from stages.encode.stage import EncodeConfig, EncodeStage, encode_texts, find_special, ids_type

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Le renard brun saute par-dessus le chien.",
         "", "Debian ist ein freies Betriebssystem. " * 20, "Ελληνικά και 日本語 mixed text"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> tuple[Tokenizer, str]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 5, trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return tok, str(path)


def test_ids_type_is_uint16_only_when_every_id_fits():
    assert ids_type(100) == pa.uint16()
    assert ids_type(65536) == pa.uint16()  # ids 0..65535
    assert ids_type(65537) == pa.uint32()
    assert ids_type(200_000) == pa.uint32()


def test_encode_texts_frames_documents_with_bos_and_eos(tokenizer):
    tok, _ = tokenizer
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("<|endoftext|>")
    ids, lengths = encode_texts(tok, TEXTS, bos, eos, pa.uint16())
    assert ids.type == pa.list_(pa.uint16())
    for text, row, n in zip(TEXTS, ids.to_pylist(), lengths.tolist(), strict=True):
        body = tok.encode(text, add_special_tokens=False).ids
        assert row == [bos, *body, eos]
        assert n == len(body) + 2
    ids32, _ = encode_texts(tok, TEXTS, None, eos, pa.uint32())
    assert ids32.type == pa.list_(pa.uint32())
    assert ids32.to_pylist()[2] == [eos]  # an empty document is just its EOS


def test_find_special_defaults_and_errors(tokenizer):
    tok, _ = tokenizer
    assert find_special(tok, None, ("<|endoftext|>", "</s>"), "eos") == tok.token_to_id("<|endoftext|>")
    with pytest.raises(TokenmillError, match="not in the tokenizer's vocabulary"):
        find_special(tok, "<nope>", (), "eos")
    with pytest.raises(TokenmillError, match="no bos token found"):
        find_special(tok, None, ("<bos>",), "bos")


def test_stage_process_adds_ids_counts_and_per_language_tokens(tokenizer):
    tok, path = tokenizer
    cfg = EncodeConfig(name="encode", type="encode", tokenizer="tok", keep_text=False, batch_rows=7)
    stage = EncodeStage(cfg)
    eos = tok.token_to_id("<|endoftext|>")
    stage.setup({"path": path, "vocab_size": tok.get_vocab_size(), "bos_id": None, "eos_id": eos})
    assert stage.batch_rows == 7
    batch = pa.table({"id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS,
                      "lang": ["en", "fr", None, "de", "el"], "source": ["s"] * len(TEXTS)})
    res = stage.process(batch)
    assert res.kept.schema == stage.output_schema(batch.schema)
    assert "text" not in res.kept.column_names
    n = res.kept.column("n_tokens").to_numpy()
    assert (n == np.array([len(r) for r in res.kept.column("input_ids").to_pylist()])).all()
    assert res.stats["tokens"] == int(n.sum())
    assert res.stats["tokens_per_lang"]["und"] == 1  # the empty document: EOS only
    assert sum(res.stats["tokens_per_lang"].values()) == int(n.sum())


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        EncodeConfig(name="e", type="encode", tokenizer="t", add_eoss=True)


def test_idle_in_span_splits_worker_idle_time_by_cause():
    """Two workers: the second starts 1 s late, the first waits 0.5 s between its shards, and the
    second finishes 2 s before the first; the busy time plus the idle time fill both workers' span."""
    from stages.encode.stage import idle_in_span

    spans = [[1, 0.0, 3.0], [1, 3.5, 6.0], [2, 1.0, 4.0]]
    idle = idle_in_span(spans)
    assert idle == {"start": 1.0, "between": 0.5, "end": 2.0}
    busy = sum(b - a for _, a, b in spans)
    assert busy + sum(idle.values()) == 2 * 6.0
