"""Byte-level BPE training with ``gigatoken.train_bpe`` where its merges are exactly HF's, from pre-token counts.

``gigatoken.train_bpe`` pre-tokenizes with the GPT-2 pattern and breaks ties as HF's BPE trainer
does, so for ``pretokenizer: gpt2`` (no normalizer, no SuperBPE, no ``max_token_length``) it yields
the same merges in the same order (``tests/stages/tokenizer/test_tokenizer_fast.py`` checks it on real
text) at a fraction of the CPU. Its pre-tokenizer is fixed (the binding calls the GPT-2 one for
bytes, paths and file sources alike), so the ``llama3`` and ``digits`` patterns train with HF: feeding
gigatoken their pre-tokens would not help, since GPT-2's pattern splits some of them again
(``(Hello``, ``.com``, ``.\\n``, ``'S``) and BPE never merges across a split.

Two inputs. A sample up to ``parallel_count_mb`` goes to gigatoken as text (:func:`train_from_documents`):
the sampled documents in a scratch file, each followed by the NUL separator, which gigatoken
pre-tokenizes and counts itself on all cores. A larger one is counted on Ray workers first
(:mod:`stages.tokenizer.counts`), and the trainer gets counts (:func:`train_from_counts`): BPE's merges
depend only on the distinct pre-tokens and their counts. gigatoken takes no counts, only text, so each pre-token is
written ``count`` times to a scratch file, each copy followed by the NUL separator (a document
boundary for gigatoken), and gigatoken memory-maps the file: a GPT-2 pre-token alone in a document
pre-tokenizes to itself (the only context-dependent rule, ``\\s+(?!\\S)``, splits whitespace runs
only before a non-space), so gigatoken counts exactly the same pre-tokens and learns the same merges
(the tests check both the counts and the merges on real text). The file is as large as the sample,
but it is file-backed memory (the page cache), not the process's: the process holds the distinct
pre-tokens, as gigatoken and HF's trainer do.

``min_frequency``: gigatoken has none; HF stops at the first best pair seen fewer times. The best
count never rises from one merge to the next (old pairs only lose occurrences, a new pair occurs at
most as often as the merge that made it), so the merges HF keeps are a prefix of gigatoken's: the
count of merge k is recomputed, by encoding with merges[:k] only the pre-tokens that contain the
merge's bytes, first for the last merge and, if that one is too rare, by bisection for the first one
that is. This replaced re-encoding every distinct pre-token, which cost more than the training.
"""

from __future__ import annotations

import json
import mmap
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEPARATOR = b"\x00"
#: documents are handed to gigatoken's (parallel) pre-tokenizer in buffers of about this size
COUNT_BATCH_BYTES = 64 << 20


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


def count_pretokens(docs: Iterable[bytes], counts: Counter[bytes] | None = None) -> Counter[bytes]:
    """GPT-2 pre-tokens of UTF-8 documents (none may contain NUL) and their counts, added to ``counts``."""
    from gigatoken.gigatoken_rs import pretokenized_counts

    counts = Counter() if counts is None else counts
    batch: list[bytes] = []
    size = 0

    def flush() -> None:
        if batch:
            for word, n in pretokenized_counts(SEPARATOR.join(batch), SEPARATOR):
                counts[word] += n
            batch.clear()

    for d in docs:
        batch.append(d)
        size += len(d) + 1
        if size >= COUNT_BATCH_BYTES:
            flush()
            size = 0
    flush()
    return counts


def byte_to_unicode() -> dict[int, str]:
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


def write_repeated(words: Sequence[bytes], counts: Sequence[int], path: Path) -> int:
    """Write each word ``count`` times, each copy followed by the separator; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=1 << 20) as f:
        for w, c in zip(words, counts, strict=True):
            n += f.write((w + SEPARATOR) * int(c))
    return n


#: the pre-tokens that hold some bytes, with their counts: ``holding(joined) -> (words, counts)``
Holding = Callable[[bytes], tuple[Sequence[bytes], Sequence[int]]]


def holding_in_counts(words: Sequence[bytes], counts: Sequence[int]) -> Holding:
    """:data:`Holding` over counted pre-tokens."""
    def holding(joined: bytes) -> tuple[list[bytes], list[int]]:
        idx = [i for i, w in enumerate(words) if joined in w]
        return [words[i] for i in idx], [int(counts[i]) for i in idx]
    return holding


def holding_in_documents(data: Any) -> Holding:
    """:data:`Holding` over documents, each followed by the separator, in ``data`` (bytes or an mmap):
    a pre-token holding ``joined`` can only come from a document holding it, so only those documents
    are found (``find`` in C) and pre-tokenized, not the whole sample."""
    from gigatoken.gigatoken_rs import pretokenized_counts

    def holding(joined: bytes) -> tuple[list[bytes], list[int]]:
        docs: list[bytes] = []
        at = data.find(joined)
        while at != -1:
            end = data.find(SEPARATOR, at)
            end = len(data) if end < 0 else end  # the last document, had it no separator after it
            docs.append(data[data.rfind(SEPARATOR, 0, at) + 1:end])
            at = data.find(joined, end + 1)
        counted = [(w, n) for w, n in pretokenized_counts(SEPARATOR.join(docs), SEPARATOR) if joined in w]
        return [w for w, _ in counted], [n for _, n in counted]
    return holding


class _PairCounter:
    """The count of merge k's pair once merges[:k] are applied, over the sample's pre-tokens."""

    def __init__(self, holding: Holding, merges: list[tuple[str, str]], merges_b: list[tuple[bytes, bytes]],
                 vocab: dict[str, int]):
        self.holding, self.merges, self.merges_b, self.vocab = holding, merges, merges_b, vocab
        self.b2u = byte_to_unicode()
        self.seen: dict[int, int] = {}

    def __call__(self, k: int) -> int:
        if k in self.seen:
            return self.seen[k]
        from tokenizers import Tokenizer, models

        left, right = self.merges_b[k]
        words, counts = self.holding(left + right)  # the pair can only occur in a pre-token holding its bytes
        model = Tokenizer(models.BPE(vocab=self.vocab, merges=self.merges[:k]))
        a, b = self.vocab[self.merges[k][0]], self.vocab[self.merges[k][1]]
        texts = ["".join(self.b2u[c] for c in w) for w in words]
        total = 0
        for n, enc in zip(counts, model.encode_batch(texts, add_special_tokens=False), strict=True):
            ids = np.asarray(enc.ids)
            if len(ids) > 1:
                total += int(n) * int(np.count_nonzero((ids[:-1] == a) & (ids[1:] == b)))
        self.seen[k] = total
        return total


def _kept_merges(count: _PairCounter, n: int, min_frequency: int) -> int:
    """How many of the ``n`` merges HF keeps: the first whose count is below ``min_frequency`` (at least
    1, as HF never merges an absent pair) ends them; counts never rise, so bisect."""
    floor = max(min_frequency, 1)
    if n == 0 or count(n - 1) >= floor:
        return n
    lo, hi = 0, n - 1  # merges[:lo] kept for sure; merge hi is below the floor
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= floor:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _vocab(specials: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    """HF's trainer's ids: special tokens, the 256 byte symbols in code point order, then merge results."""
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for ch in sorted(byte_to_unicode().values()):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab


def train_from_counts(cfg: Any, tok: Any, words: Sequence[bytes], counts: Sequence[int], vocab_size: int,
                      ) -> tuple[Any, dict[str, Any]]:
    """Train the untrained byte-level BPE ``tok`` (from ``build_tokenizer``) with gigatoken on counted
    GPT-2 pre-tokens (each written ``count`` times to a scratch file); returns the trained tokenizer and
    figures (merges, how many ``min_frequency`` cut)."""
    import gigatoken

    specials = list(dict.fromkeys(cfg.special_tokens))
    with tempfile.TemporaryDirectory(prefix="tokenmill-bpe-") as d:
        path = Path(d) / "pretokens.bin"
        write_repeated(words, counts, path)
        _, merges_b = gigatoken.train_bpe(str(path), vocab_size, specials, separator=SEPARATOR)
    trained, figures = _trained(cfg, tok, merges_b, holding_in_counts(words, counts))
    return trained, {**figures, "distinct_pretokens": len(words)}


def train_from_documents(cfg: Any, tok: Any, path: Path, vocab_size: int) -> tuple[Any, dict[str, Any]]:
    """Train ``tok`` as :func:`train_from_counts` does, but on the documents themselves: ``path`` holds
    the sample's texts, each followed by the separator (none holding it). gigatoken pre-tokenizes them
    on all cores, which is what :func:`count_pretokens` then ``write_repeated`` would hand it, minus three
    passes over the sample (about 3 s of 18 on 100 MB). The ``min_frequency`` check pre-tokenizes only
    the documents that hold the checked merges' bytes, found in the memory-mapped file."""
    import gigatoken

    specials = list(dict.fromkeys(cfg.special_tokens))
    _, merges_b = gigatoken.train_bpe(str(path), vocab_size, specials, separator=SEPARATOR)
    if path.stat().st_size == 0:  # mmap refuses an empty file; no document, no merge to check
        return _trained(cfg, tok, merges_b, holding_in_documents(b""))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _trained(cfg, tok, merges_b, holding_in_documents(data))


def _trained(cfg: Any, tok: Any, merges_b: list[tuple[bytes, bytes]], holding: Holding,
             ) -> tuple[Any, dict[str, Any]]:
    """``tok`` with gigatoken's merges, cut where HF's ``min_frequency`` would stop, and the figures."""
    from tokenizers import Tokenizer

    specials = list(dict.fromkeys(cfg.special_tokens))
    b2u = byte_to_unicode()
    merges = [("".join(b2u[c] for c in left), "".join(b2u[c] for c in right)) for left, right in merges_b]
    vocab = _vocab(specials, merges)
    kept = _kept_merges(_PairCounter(holding, merges, merges_b, vocab), len(merges), cfg.min_frequency)
    if kept < len(merges):
        merges = merges[:kept]
        vocab = _vocab(specials, merges)
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [[a, b] for a, b in merges]
    trained = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    trained.add_special_tokens(specials)  # as HF's trainer registers them (ids 0.. already in the vocab)
    return trained, {"merges": len(merges), "merges_cut_by_min_frequency": len(merges_b) - kept}
