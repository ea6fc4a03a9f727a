"""One encoder for every place that turns text into ids: the fast engine (``gigatoken``) where it
supports the ``tokenizer.json``, HF ``tokenizers`` otherwise, and HF always kept as the reference.

``gigatoken`` covers byte-level BPE with the cl100k/Llama-3-style and o200k-style pre-tokenizers
and SentencePiece BPE with byte fallback; it refuses other ``Split`` regexes (GPT-2's, SuperBPE's
stage-2 pattern) and Unigram/WordPiece models. Both libraries load from the JSON string only, so
nothing is ever downloaded.

gigatoken keeps every distinct pre-token it has encoded in a cache that is never trimmed (measured:
about 80 MB per million distinct words, 1 GB after 12 million), which at a crawl's scale would grow
an encode worker without bound; :meth:`TextEncoder.bound_cache` reloads the engine, with an empty
cache, once the process has grown by ``cache_mb`` since it was loaded (the ids do not change; a
reload costs ~0.04 s and the cache's warm-up).

Long documents are encoded in pieces (:func:`split_points`) cut only where the byte-level BPE
pre-tokenizers this project trains always end a pre-token, so the ids equal those of the whole
document (``tests/stages/encode/test_encoders.py`` checks it on real text) while memory stays bounded by the
piece size (HF needs ~125 bytes of memory per input byte in one call).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.memory import resident_bytes

Engine = Literal["auto", "fast", "hf"]


@contextmanager
def hf_threads(enabled: bool) -> Iterator[None]:
    """HF ``tokenizers``' Rust thread pool on or off for the block (it reads ``TOKENIZERS_PARALLELISM``
    at each call), then the setting as it was: an encode shard's workers (off unless ``rust_threads``),
    a tokenizer's training (off beside other stages).

    Why off beside other stages: HF's BPE trainer spreads poorly over threads. Measured on the Debian
    corpus with the ``llama3`` pattern and 16k merges: an 8 MB sample trains in 3.1-3.2 s on two
    threads at 4.8 CPU-s, in 3.3-3.5 s on one at 3.3-3.5 CPU-s; 32 MB in 11.3 s at 17.2 CPU-s against
    12.8 s at 12.8. The merges are the same either way. Beside Ray's workers, the second thread only
    takes a core from them."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def split_safe(config: dict[str, Any]) -> bool:
    """Whether the tokenizer's pre-tokenizer always ends a pre-token at the cuts of :func:`split_points`.

    True for byte-level BPE with the GPT-2, Llama-3/cl100k or single-digit pattern (a ``Split`` then
    ``ByteLevel(use_regex=False)``, or ``ByteLevel`` with its built-in GPT-2 regex): there a newline
    between two non-space characters, and a space between two letters, always end the pre-token
    before them (no alternative of those regexes crosses them, and the ``\\s+(?!\\S)`` look-ahead
    only differs at runs of two or more spaces). Not for Metaspace (Unigram), whose first piece
    gets a prefix, nor for SuperBPE's stage-2 pattern; nor when an added token contains a space or
    newline.
    """
    if (config.get("model") or {}).get("type") != "BPE":
        return False
    if (config.get("normalizer") or {}).get("type", "NFC") != "NFC":  # NFKC may map letters to spaces
        return False
    if any(ch in t.get("content", "") for t in config.get("added_tokens") or [] for ch in " \n"):
        return False
    pre = config.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"]:
        return bool(steps[0].get("use_regex", True)) and not steps[0].get("add_prefix_space", False)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        from stages.tokenizer.pretokenizers import PRETOKENIZER_PATTERNS

        regex = (steps[0].get("pattern") or {}).get("Regex")
        return regex in PRETOKENIZER_PATTERNS.values() and steps[0].get("behavior") == "Isolated"
    return False


def split_points(text: str, piece_chars: int) -> list[int]:
    """Cut positions (character offsets) about every ``piece_chars``: after a newline between two
    non-space characters, else before a space between two letters; none where there is neither."""
    cuts: list[int] = []
    n = len(text)
    pos = piece_chars
    while pos < n:
        cut = -1
        i = text.find("\n", pos)
        while 0 <= i < min(n - 1, pos + piece_chars):
            if i > 0 and not text[i - 1].isspace() and not text[i + 1].isspace():
                cut = i + 1
                break
            i = text.find("\n", i + 1)
        if cut < 0:
            i = text.find(" ", pos)
            while 0 <= i < min(n - 1, pos + piece_chars):
                if i > 0 and text[i - 1].isalpha() and text[i + 1].isalpha():
                    cut = i
                    break
                i = text.find(" ", i + 1)
        if cut < 0:
            pos += piece_chars  # no safe cut in this window: the piece grows
            continue
        cuts.append(cut)
        pos = cut + piece_chars
    return cuts


@dataclass
class TextEncoder:
    """Encodes with ``engine`` ("fast" or "hf"); ``reference`` (HF) is always there for parity checks."""

    reference: Any  # tokenizers.Tokenizer
    engine: str
    reason: str
    fast: Any = None  # gigatoken.Tokenizer when engine == "fast"
    threads: bool = False
    piece_chars: int = 250_000
    can_split: bool = False
    stats: dict[str, int] = field(default_factory=lambda: {"split_documents": 0, "pieces": 0})
    json_text: str = ""  # to reload the fast engine (:meth:`bound_cache`)
    cache_mb: int = 1024
    _loaded_rss: int = 0

    def __post_init__(self) -> None:
        self._loaded_rss = resident_bytes()

    def bound_cache(self) -> bool:
        """Reload the fast engine (an empty pre-token cache) when this process has grown by more than
        ``cache_mb`` since the engine was loaded; True when it did. Called after each fast batch: a
        resident-size read (/proc) costs microseconds. Growth from anything else also triggers it,
        which costs only a reload, and the baseline is taken again after each reload."""
        if self.fast is None or not self.json_text or resident_bytes() - self._loaded_rss <= self.cache_mb << 20:
            return False
        import gigatoken

        self.fast = None  # the old engine and its cache go before the new one is built
        self.fast = gigatoken.Tokenizer.from_json(self.json_text)
        self._loaded_rss = resident_bytes()
        self.stats["cache_reloads"] = self.stats.get("cache_reloads", 0) + 1
        return True

    def _encode_many(self, texts: list[str], hf: bool) -> list[np.ndarray]:
        if not texts:
            return []
        if hf or self.fast is None:
            encode = getattr(self.reference, "encode_batch_fast", self.reference.encode_batch)
            return [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]
        out = self.fast.encode_batch(texts, parallel=self.threads)
        self.bound_cache()
        import awkward as ak

        layout = ak.to_layout(out)
        offsets = np.asarray(layout.offsets)
        flat = np.asarray(layout.content.data, dtype=np.uint32)
        return [flat[offsets[i]:offsets[i + 1]] for i in range(len(texts))]

    def encode_arrays(self, texts: list[str], hf: bool = False) -> list[np.ndarray]:
        """Token ids (uint32) per text; a text longer than ``piece_chars`` is encoded piece by piece
        when the pre-tokenizer allows it (same ids), else whole."""
        long_idx = [i for i, t in enumerate(texts) if len(t) > self.piece_chars] if self.can_split else []
        if not long_idx:
            return self._encode_many(texts, hf)
        short = [i for i in range(len(texts)) if len(texts[i]) <= self.piece_chars]
        result: list[np.ndarray] = [np.empty(0, np.uint32)] * len(texts)
        for i, arr in zip(short, self._encode_many([texts[i] for i in short], hf), strict=True):
            result[i] = arr
        for i in long_idx:
            text = texts[i]
            bounds = [0, *split_points(text, self.piece_chars), len(text)]
            parts = [self._encode_many([text[a:b]], hf)[0] for a, b in itertools.pairwise(bounds)]
            result[i] = np.concatenate(parts) if parts else np.empty(0, np.uint32)
            self.stats["split_documents"] += 1
            self.stats["pieces"] += len(parts)
        return result

    def encode_column(self, column: pa.Array, hf: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(flat uint32 ids, int64 offsets) of a string column, in one pass and without a Python
        object per document on the fast engine: the column's Arrow buffers go to gigatoken as they
        are and its output buffers (flat ids + offsets) come back as numpy views. Only documents
        above the piece size take the piece-by-piece path (measured: routing a whole batch to
        Python strings whenever one document was long cost ~10 % of the stage)."""
        col = column if column.type in (pa.string(), pa.large_string()) else column.cast(pa.string())
        if col.null_count:
            col = pc.fill_null(col, "")
        if hf or self.fast is None:
            return _flatten(self.encode_arrays(col.to_pylist(), hf=True), len(col))
        o, d = _string_buffers(col)
        long_idx = np.empty(0, dtype=np.int64)
        if self.can_split and len(o) > 1:
            # a document's character count is at most its byte count: only those above the piece size
            # in bytes can be above it in characters (counted exactly on those few)
            over = np.flatnonzero(np.diff(o) > self.piece_chars)
            long_idx = np.array([i for i in over.tolist() if len(col[i].as_py()) > self.piece_chars], dtype=np.int64)
        if not len(long_idx):
            return self._fast_buffers(o, d)
        keep = np.ones(len(col), dtype=bool)
        keep[long_idx] = False
        so, sd = _string_buffers(col.filter(pa.array(keep)))
        short_flat, short_off = self._fast_buffers(so, sd)
        long_ids = self.encode_arrays([col[int(i)].as_py() for i in long_idx])
        lengths = np.zeros(len(col), dtype=np.int64)
        lengths[keep] = np.diff(short_off)
        lengths[long_idx] = [len(a) for a in long_ids]
        offsets = np.zeros(len(col) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.empty(int(offsets[-1]), dtype=np.uint32)
        is_short = np.repeat(keep, lengths)
        flat[is_short] = short_flat
        flat[~is_short] = np.concatenate(long_ids) if long_ids else np.empty(0, np.uint32)
        return flat, offsets

    def _fast_buffers(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """gigatoken over (offsets, UTF-8 bytes) of a string column: (flat uint32 ids, offsets)."""
        import awkward as ak

        chars = ak.contents.NumpyArray(d, parameters={"__array__": "char"})
        strings = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(o), chars, parameters={"__array__": "string"}))
        layout = ak.to_layout(self.fast.encode_batch(strings, parallel=self.threads))
        self.bound_cache()
        off = np.asarray(layout.offsets, dtype=np.int64)
        flat = np.asarray(layout.content.data, dtype=np.uint32)[off[0]:off[-1]]
        return flat, off - off[0]

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        """Ids as Python lists (for the report and other small callers)."""
        return [a.tolist() for a in self.encode_arrays(texts)]

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        return np.fromiter((len(a) for a in self.encode_arrays(texts)), dtype=np.int64, count=len(texts))

    def info(self) -> dict[str, str]:
        return {"engine": self.engine, "reason": self.reason}


def _string_buffers(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets starting at 0, uint8 data) of a string column without nulls, zero-copy where
    Arrow allows it."""
    wide = col.type == pa.large_string()
    _, offs, data = col.buffers()
    o = np.frombuffer(offs, dtype=np.int64 if wide else np.int32, count=len(col) + 1,
                      offset=col.offset * (8 if wide else 4)).astype(np.int64)
    d = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    if o[0] or len(d) != o[-1]:
        d, o = d[o[0]:o[-1]], o - o[0]
    return o, d


def _flatten(arrays: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays).astype(np.uint32, copy=False) if arrays else np.empty(0, np.uint32)
    return flat, offsets


def choose_engine(json_text: str, engine: Engine = "auto") -> tuple[Any, str, str]:
    """(gigatoken tokenizer or None, engine that runs, why)."""
    if engine == "hf":
        return None, "hf", "engine: hf requested"
    try:
        import gigatoken

        fast = gigatoken.Tokenizer.from_json(json_text)  # from the string: never touches the network
    except Exception as exc:  # gigatoken raises RuntimeError/ValueError for unsupported configs
        if engine == "fast":
            from pipeline.errors import TokenmillError

            raise TokenmillError(f"engine: fast is not available for this tokenizer: {_first_line(exc)} "
                                 "(use engine: auto or hf)") from None
        return None, "hf", f"gigatoken does not support this tokenizer.json: {_first_line(exc)}"
    return fast, "fast", f"gigatoken supports this tokenizer.json ({type(fast.backend).__name__})"


def load_encoder(json_text: str, engine: Engine = "auto", threads: bool = False,
                 piece_bytes: int = 1_000_000, cache_mb: int = 1024) -> TextEncoder:
    """A :class:`TextEncoder` from ``tokenizer.json`` contents (a string, never a path or hub id)."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(json_text)
    fast, name, reason = choose_engine(json_text, engine)
    return TextEncoder(reference=reference, engine=name, reason=reason, fast=fast, threads=threads,
                       piece_chars=max(1, piece_bytes // 4), can_split=split_safe(json.loads(json_text)),
                       json_text=json_text if fast is not None else "", cache_mb=cache_mb)
