"""Masked-span examples never show a broken character (byte-level tokens split UTF-8 characters)."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stages.clean.stage import _masked_sample

TEXT = "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。" * 3


def _tok() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=262, initial_alphabet=alphabet))
    return tok


def test_every_cut_falls_on_a_character_boundary():
    tok = _tok()
    ids = np.array(tok.encode(TEXT).ids)
    assert any("\ufffd" in tok.decode([i]) for i in ids[:20])  # bytes of one character in several tokens
    for start in range(12, 60):
        for length in (1, 2, 5):
            m = np.ones(len(ids), np.uint8)
            m[start:start + length] = 0
            x = _masked_sample(tok, ids, m, {"repetition": m}, rank=1, lang="zh", doc_id="d1")
            assert "\ufffd" not in x["context"] and "\ufffd" not in x["text"], (start, length, x["context"])
            assert x["text"] and x["text"] in TEXT and x["id"] == "d1" and x["rules"] == ["repetition"]
            left, rest = x["context"].split("⟦")
            assert (left + rest.replace("⟧", "")) in TEXT
