"""Byte-level BPE training with ``gigatoken.train_bpe`` where its merges are exactly HF's.

``gigatoken.train_bpe`` pre-tokenizes with the GPT-2 pattern and breaks ties as HF's BPE trainer
does, so for ``pretokenizer: gpt2`` (no normalizer, no SuperBPE, no ``max_token_length``) it yields
the same merges in the same order (``tests/stages/tokenizer/test_tokenizer_fast.py`` checks it on real text) at a
fraction of the CPU. It has no ``min_frequency``: HF stops when the best pair occurs fewer times, so
the pair count of the last merge is recomputed from the pre-token counts (the best count never rises
from one merge to the next, so if the last one reaches ``min_frequency`` every one did). Anything
else trains with HF ``train_from_iterator``; the manifest says which trainer ran and why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEPARATOR = b"\x00"


def fast_unsupported(cfg: Any) -> str | None:
    """Why the fast trainer cannot reproduce HF's merges for this config (None: it can)."""
    if cfg.model != "bpe":
        return f"model {cfg.model}"
    if cfg.superbpe.enabled:
        return "superbpe"
    if cfg.pretokenizer != "gpt2":
        return f"pretokenizer {cfg.pretokenizer} (gigatoken.train_bpe pre-tokenizes with the GPT-2 pattern)"
    if cfg.normalization != "none":
        return f"normalization {cfg.normalization}"
    if cfg.max_token_length is not None:
        return "max_token_length"
    return None


def _byte_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet (what ``pre_tokenizers.ByteLevel`` maps bytes to)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _last_merge_count(data: bytes, merges: list[tuple[str, str]], vocab: dict[str, int]) -> int:
    """How often the last merge's pair occurs once all earlier merges are applied."""
    from gigatoken.gigatoken_rs import pretokenized_counts
    from tokenizers import Tokenizer, models

    b2u = _byte_to_unicode()
    words = pretokenized_counts(data, SEPARATOR)
    model = Tokenizer(models.BPE(vocab=vocab, merges=merges[:-1]))
    a, b = vocab[merges[-1][0]], vocab[merges[-1][1]]
    total = 0
    texts = ["".join(b2u[c] for c in w) for w, _ in words]
    for (_, count), enc in zip(words, model.encode_batch(texts, add_special_tokens=False), strict=True):
        ids = np.asarray(enc.ids)
        if len(ids) > 1:
            total += count * int(np.count_nonzero((ids[:-1] == a) & (ids[1:] == b)))
    return total


def train_fast(cfg: Any, tok: Any, docs: list[bytes], vocab_size: int) -> tuple[Any, str | None]:
    """Train an untrained byte-level BPE ``tok`` (from ``build_tokenizer``) with gigatoken on the
    UTF-8 documents; returns (trained tokenizer, None), or (None, why not) and HF must train."""
    import json

    import gigatoken
    from tokenizers import Tokenizer

    if not docs:
        return None, "empty sample"
    if any(SEPARATOR in d for d in docs):
        return None, "a document contains NUL (gigatoken's document separator here)"
    specials = list(dict.fromkeys(cfg.special_tokens))
    data = SEPARATOR.join(docs)
    _, merges_b = gigatoken.train_bpe(data, vocab_size, specials, separator=SEPARATOR)
    b2u = _byte_to_unicode()
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for ch in sorted(b2u.values()):
        vocab.setdefault(ch, len(vocab))
    merges = []
    for left, right in merges_b:
        a, b = "".join(b2u[c] for c in left), "".join(b2u[c] for c in right)
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    if merges and cfg.min_frequency > 1 and _last_merge_count(data, merges, vocab) < cfg.min_frequency:
        return None, f"its last merges occur fewer than min_frequency={cfg.min_frequency} times"
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [[a, b] for a, b in merges]
    trained = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    trained.add_special_tokens(specials)  # as HF's trainer registers them (ids 0.. already in the vocab)
    return trained, None
