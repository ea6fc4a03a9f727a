"""Pure core of dedup: text normalisation, exact hashes, word n-gram shingles, MinHash signatures
(datasketch's ``affine32`` scheme, value for value) and LSH band keys. No Ray: unit-testable on arrays.

A batch is split into whitespace words once (:func:`split_words`); the exact hashes and the word
shingles both start from those words, and per-document sets travel as flat arrays with offsets
(``Csr``) instead of one numpy array per document."""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.parquet_io import as_array
from stages.dedup.config import ExactConfig, NearConfig, Normalise, ShingleConfig

MAX_HASH32 = np.uint32((1 << 32) - 1)
_PUNCT_RE = re.compile(r"[^\w\s]", re.UNICODE)
_DIGIT_RE = re.compile(r"\d")
_SPACE_RE = re.compile(r"\s+")
_PUNCTUATION = string.punctuation + "«»“”‘’„‚‹›…–—·•¡¿、。，．！？：；（）【】「」『』《》〈〉"


def normalise_text(text: str, norm: Normalise) -> str:
    if norm.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if norm.lower:
        text = text.lower()
    if norm.punctuation:
        text = _PUNCT_RE.sub("", text)
    if norm.digits:
        text = _DIGIT_RE.sub("0", text)
    if norm.whitespace:
        text = _SPACE_RE.sub(" ", text).strip()
    return text


@dataclass(frozen=True)
class Words:
    """A batch's whitespace words: ``raw`` as written, ``lower`` lower-cased by pyarrow (per
    character, simple case mapping), document d's words at ``offsets[d]:offsets[d + 1]``."""

    raw: pa.StringArray
    lower: pa.StringArray
    offsets: np.ndarray


def text_array(texts: list[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    return as_array(texts) if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())


def split_words(texts: list[str] | pa.Array | pa.ChunkedArray) -> Words:
    """Split a batch on Unicode whitespace (the same characters as Python's ``str.isspace``, checked
    over every code point by the tests) and lower-case the words, all in pyarrow kernels.

    A sentinel document ("x") ends the array: pyarrow 26's utf8_split_whitespace scans past the end
    of the array's last string when it ends in whitespace and then sometimes keeps the trailing
    space on the last word (or adds a word of garbage), which made the same text give different
    shingles from run to run; inside the array the next string bounds the scan. The sentinel's
    word is sliced off, and so are the kernel's empty words. Lower-casing after the split gives the
    words of lower-casing first: pyarrow lower-cases one character at a time and maps no character
    into or out of whitespace (tested).
    """
    arr = text_array(texts)
    lists = pc.utf8_split_whitespace(pa.concat_arrays([arr.cast(pa.string()), pa.array(["x"], pa.string())]))
    offsets = lists.offsets.to_numpy()[: len(arr) + 1].astype(np.int64)
    offsets = offsets - offsets[0]
    raw = pc.list_flatten(lists).slice(0, int(offsets[-1]))
    # the kernel keeps an empty word for leading and trailing whitespace (one per character of a
    # text that is all whitespace); Python's str.split() keeps none
    some = np.frombuffer(raw.buffers()[1], np.int32)[raw.offset:raw.offset + len(raw) + 1]
    some = np.diff(some) > 0
    if not some.all():
        owner = np.repeat(np.arange(len(arr)), np.diff(offsets))
        offsets = np.r_[0, np.cumsum(np.bincount(owner[some], minlength=len(arr)))].astype(np.int64)
        raw = raw.filter(pa.array(some))
    return Words(raw, pc.utf8_lower(raw), offsets)


def normalises_from_words(norm: Normalise) -> bool:
    """Whether :func:`exact_hashes` can build the normalised texts from :class:`Words` (the default
    switches); punctuation and digit folding, or no lower-casing or whitespace folding, take the
    per-document path."""
    return norm.lower and norm.whitespace and not norm.punctuation and not norm.digits


def _per_char(mapped: str, cps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mapped`` is a per-character mapping of "c\\n" for each code point c of ``cps``: (its UTF-32
    code units, each code point's start in them, each code point's length)."""
    u = np.frombuffer(mapped.encode("utf-32-le"), "<u4")
    ends = np.flatnonzero(u == 10)
    if len(ends) != len(cps):
        raise AssertionError("a mapping produced or removed a newline")
    starts = np.r_[0, ends[:-1] + 1]
    return u, starts, ends - starts


def _changed(mapped: str, cps: np.ndarray) -> np.ndarray:
    u, starts, lengths = _per_char(mapped, cps)
    return (lengths != 1) | (u[np.minimum(starts, len(u) - 1)] != cps)


@functools.lru_cache(maxsize=2)
def unsafe_class(nfkc: bool) -> str:
    """An RE2 character class of the code points that make a word's normalised form differ from
    pyarrow's lower-casing of it: those NFKC changes or that NFKC may change in context (combining
    marks, which reorder; the second characters of canonical compositions, and characters that
    decompose to one; Hangul vowel and final jamo are such seconds), and those whose Python
    ``str.lower`` differs from pyarrow's (a Unicode version apart; full case mappings such as
    'İ' -> 'i̇'; 'Σ', whose Python lower case depends on what follows). A word without any of them
    is its own NFKC form and lower-cases the same in both. Computed once per process (~0.1 s) from
    the running Python's ``unicodedata`` and pyarrow's utf8proc, so a version change cannot
    silently change exact hashes. Code points past plane 3 (outside the tag plane) are unassigned
    or private use in every Unicode version so far and are skipped (a test checks every code point).
    """
    cps = np.r_[0x80:0xD800, 0xE000:0x40000, 0xE0000:0xE1000].astype(np.uint32)
    joined = np.c_[cps, np.full(len(cps), 10, np.uint32)].astype("<u4").tobytes().decode("utf-32-le")
    # NFKC (and NFD, lower) of "c\n" for all c at once: "\n" is a stable starter, so each maps alone
    flag = np.zeros(len(cps), bool)
    if nfkc:
        flag |= _changed(unicodedata.normalize("NFKC", joined), cps)
        u, starts, lengths = _per_char(unicodedata.normalize("NFD", joined), cps)
        decomposed = np.flatnonzero(lengths > 1)
        second = np.zeros(0x110000, bool)
        for s, n in zip(starts[decomposed].tolist(), lengths[decomposed].tolist(), strict=True):
            second[u[s + 1:s + n]] = True
        flag |= second[cps] | second[u[np.minimum(starts, len(u) - 1)]]
        flag |= np.fromiter(map(unicodedata.combining, joined[::2]), np.int32, len(cps)) != 0
    # Python's lower case against pyarrow's, per character ("Σ" apart); pyarrow's kernel is slow on
    # one long string, so in pieces
    py_u, py_s, py_n = _per_char(joined.lower(), cps)
    step = 8192
    ar = "".join(pc.utf8_lower(pa.array([joined[i:i + 2 * step] for i in range(0, len(joined), 2 * step)])).to_pylist())
    ar_u, ar_s, ar_n = _per_char(ar, cps)
    diff = py_n != ar_n
    one = ~diff & (py_n == 1)
    diff[one] = py_u[py_s[one]] != ar_u[ar_s[one]]
    for i in np.flatnonzero(~diff & (py_n > 1)).tolist():
        diff[i] = not np.array_equal(py_u[py_s[i]:py_s[i] + py_n[i]], ar_u[ar_s[i]:ar_s[i] + ar_n[i]])
    flag |= diff
    flag[cps == 0x3A3] = True
    # whitespace never sits inside a word (and NFKC maps it to whitespace: tested)
    flag &= ~np.fromiter(map(str.isspace, joined[::2]), bool, len(cps))
    bad = cps[flag].astype(np.int64)
    breaks = np.flatnonzero(np.diff(bad) != 1)
    lo, hi = bad[np.r_[0, breaks + 1]], bad[np.r_[breaks, len(bad) - 1]]
    return "[" + "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}"
                         for a, b in zip(lo.tolist(), hi.tolist(), strict=True)) + "]"


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenated index ranges [lo[i], hi[i])."""
    return np.repeat(hi - np.cumsum(hi - lo), hi - lo) + np.arange(int((hi - lo).sum()))


def normalised_texts(texts: pa.Array, words: Words, nfkc: bool) -> pa.Array:
    """Each text's normalised form (NFKC if asked, Python's ``str.lower``, whitespace runs folded
    to one space, stripped), equal to :func:`normalise_text`: pyarrow's lower-cased words joined by
    spaces, except words holding an :func:`unsafe_class` character, which Python normalises (all at
    once, joined by newlines). Exact word by word because NFKC and ``str.lower`` never act across
    whitespace (a starter that composes with nothing, and not cased)."""
    cls = unsafe_class(nfkc)
    lower, offsets = words.lower, words.offsets
    docs = np.flatnonzero(pc.match_substring_regex(texts, cls).to_numpy(zero_copy_only=False))
    if len(docs):
        cand = _ranges(offsets[docs], offsets[docs + 1])  # the words of texts holding such a character
        cand_words = words.raw.take(pa.array(cand))
        non_ascii = ~pc.string_is_ascii(cand_words).to_numpy(zero_copy_only=False)
        cand, cand_words = cand[non_ascii], cand_words.filter(pa.array(non_ascii))
        hit = pc.match_substring_regex(cand_words, cls).to_numpy(zero_copy_only=False)
        if hit.any():
            text = "\n".join(cand_words.filter(pa.array(hit)).to_pylist())
            if nfkc:
                text = unicodedata.normalize("NFKC", text)
            fixed = [" ".join(w.split()) for w in text.lower().split("\n")]
            mask = np.zeros(len(lower), bool)
            mask[cand[hit]] = True
            lower = pc.replace_with_mask(lower, pa.array(mask), pa.array(fixed, pa.string()))
            empty = [i for i, w in zip(cand[hit].tolist(), fixed, strict=True) if not w]
            if empty:  # a word that NFKC turned into whitespace only
                keep = np.ones(len(lower), bool)
                keep[empty] = False
                owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
                offsets = np.r_[0, np.cumsum(np.bincount(owner[keep], minlength=len(offsets) - 1))]
                lower = lower.filter(pa.array(keep))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), lower), " ")


def _digests(strings: pa.Array, bits: int) -> np.ndarray:
    """xxh3 of each string's UTF-8 bytes, read from the array's buffers (no Python strings)."""
    offs = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset:strings.offset + len(strings) + 1]
    data = memoryview(strings.buffers()[2]) if strings.buffers()[2] is not None else memoryview(b"")
    spans = zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)
    if bits == 64:
        return np.fromiter((xxhash.xxh3_64_intdigest(data[a:b]) for a, b in spans), np.uint64, len(strings))
    # the big-endian 16-byte digests joined and read as (high, low) 64-bit halves: no per-row array write
    joined = b"".join(xxhash.xxh3_128_digest(data[a:b]) for a, b in spans)
    return np.frombuffer(joined, ">u8").astype(np.uint64).reshape(len(strings), 2)


def exact_hashes(texts: list[str] | pa.Array | pa.ChunkedArray, cfg: ExactConfig,
                 words: Words | None = None) -> np.ndarray:
    """uint64 hash per text (for 128 bits, two columns): xxh3 of the UTF-8 of
    :func:`normalise_text`.

    With the default switches (NFKC or not, lower case, whitespace) the normalised texts are the
    batch's words (:func:`split_words`, reused from the shingler when given) lower-cased, fixed where
    pyarrow and Python could differ (:func:`normalised_texts`) and joined by single spaces: the
    same bytes as :func:`normalise_text`, about 10x faster than its per-document NFKC and regex.
    """
    arr = text_array(texts)
    if normalises_from_words(cfg.normalise):
        return _digests(normalised_texts(arr, words or split_words(arr), cfg.normalise.nfkc), cfg.hash_bits)
    normalised = pa.array([normalise_text(t, cfg.normalise) for t in arr.to_pylist()], pa.string())
    return _digests(normalised, cfg.hash_bits)


def keep_k0(keep: str, text: pa.Array, column: pa.ChunkedArray | None) -> np.ndarray:
    """The first field of :func:`~stages.dedup.components.keep_key` for a whole batch (its second is the
    id), vectorised."""
    if keep in ("longest", "shortest"):
        length = pc.utf8_length(text).to_numpy().astype(np.float64)  # code points, as len(str)
        return -length if keep == "longest" else length
    if keep == "column" and column is not None:
        values = pc.cast(column, pa.float64(), safe=False).fill_null(-np.inf)
        return -np.asarray(values.to_numpy(), dtype=np.float64)
    return np.zeros(len(text), np.float64)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's ``affine32`` permutation parameters (odd ``a``, any ``b``), drawn as ``MinHash`` draws them."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, the pre-mix datasketch applies before its affine permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised): spreads combined n-gram hashes over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Csr:
    """One uint32 array per document, stored flat: document d's values are
    ``values[offsets[d]:offsets[d + 1]]`` (no numpy array object per document)."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def of(arrays: list[np.ndarray]) -> Csr:
        lengths = np.array([len(x) for x in arrays], np.int64)
        values = np.concatenate(arrays).astype(np.uint32) if len(arrays) else np.empty(0, np.uint32)
        return Csr(values, np.r_[0, np.cumsum(lengths)].astype(np.int64))

    def to_list(self) -> list[np.ndarray]:
        return np.split(self.values, self.offsets[1:-1]) if len(self) else []

    def owners(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def distinct(self) -> Csr:
        """Each document's distinct values, sorted (``np.unique`` per document, in one sort of
        (document, value) keys for the batch: ~5x faster than a call per document)."""
        keys = (self.owners().astype(np.uint64) << np.uint64(32)) | self.values.astype(np.uint64)
        keys.sort()
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
        counts = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(self))
        return Csr((keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), np.r_[0, np.cumsum(counts)].astype(np.int64))

    def to_arrow(self) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.values, pa.uint32()))


def shingle_hashes(text: str, shingle: ShingleConfig, cache: dict[str, int] | None = None) -> np.ndarray:
    """32-bit hashes of one document's shingles (see :func:`batch_shingles`)."""
    return batch_shingles([text], shingle).to_list()[0]


def _combine(units: np.ndarray, n: int) -> np.ndarray:
    """Rolling polynomial combination of n consecutive unit hashes -> 32-bit shingle hashes."""
    count = len(units) - n + 1
    with np.errstate(over="ignore"):
        acc = units[:count].copy()
        for k in range(1, n):  # in place: no temporary array per step
            np.multiply(acc, np.uint64(0x9E3779B97F4A7C15), out=acc)
            np.add(acc, units[k:k + count], out=acc)
    return (_mix64(acc) >> np.uint64(32)).astype(np.uint32)


def _combine_rows(units: np.ndarray) -> np.ndarray:
    """:func:`_combine` of each row of a (docs, n) matrix taken whole: one shingle per row."""
    with np.errstate(over="ignore"):
        acc = units[:, 0].copy()
        for k in range(1, units.shape[1]):
            acc = acc * np.uint64(0x9E3779B97F4A7C15) + units[:, k]
    return (_mix64(acc) >> np.uint64(32)).astype(np.uint32)


def batch_shingle_hashes(texts: list[str] | pa.Array, shingle: ShingleConfig) -> list[np.ndarray]:
    """:func:`batch_shingles` as one array per document."""
    return batch_shingles(texts, shingle).to_list()


def batch_shingles(texts: list[str] | pa.Array | pa.ChunkedArray, shingle: ShingleConfig,
                   words: Words | None = None) -> Csr:
    """Shingle hashes of a batch of documents (word or character n-grams of the lower-cased text).

    Word n-grams are computed for the whole batch at once from its :func:`split_words` (pyarrow's
    lower case, whitespace words; reused from the exact hashes when given) with punctuation trimmed
    from both ends of each word, and numpy (each distinct word hashed once with xxh64, n-grams combined
    over the flat word array, windows crossing a document boundary dropped): about twice as fast
    as a per-document regex loop. A document shorter than n units gives one shingle of all its
    units; an empty one gives none.
    """
    if shingle.kind == "char":
        out = []
        for text in (text_array(texts).to_pylist() if not isinstance(texts, list) else texts):
            folded = _SPACE_RE.sub(" ", text.lower()).strip()
            units = _mix64(np.frombuffer(folded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64))
            out.append(_combine(units, min(shingle.n, len(units))) if len(units) else np.empty(0, np.uint32))
        return Csr.of(out)
    # pyarrow kernels; 4x faster than a Unicode-aware regex split, which RE2 needs: its \W is ASCII-only
    words = words or split_words(texts)
    docs = len(words.offsets) - 1
    # one hash-table pass gives both the distinct words and each word's index (unique + index_in
    # took two, about 30% of the shingling time); punctuation is trimmed from the distinct words
    # only, and each hashed once with xxh64 (words that trim to nothing are dropped)
    if not len(words.lower):
        return Csr(np.empty(0, np.uint32), np.zeros(docs + 1, np.int64))
    encoded = pc.dictionary_encode(words.lower)
    uniq = pc.utf8_trim(encoded.dictionary, characters=_PUNCTUATION)
    uhash = np.fromiter((xxhash.xxh64_intdigest(w) for w in uniq.cast(pa.binary()).to_pylist()),
                        dtype=np.uint64, count=len(uniq))
    index = encoded.indices.to_numpy()
    keep = (pc.binary_length(uniq).to_numpy() > 0)[index]
    doc_of = np.repeat(np.arange(docs), np.diff(words.offsets))[keep]
    units = uhash[index[keep]]
    counts = np.bincount(doc_of, minlength=docs)
    n = shingle.n
    grams, owner = np.empty(0, np.uint32), np.empty(0, np.int64)
    if len(units) >= n:
        grams = _combine(units, n)
        valid = doc_of[: len(grams)] == doc_of[n - 1:]  # the window's first and last word in one document
        grams, owner = grams[valid], doc_of[: len(valid)][valid]
    offsets = np.r_[0, np.cumsum(np.bincount(owner, minlength=docs))].astype(np.int64)
    short = np.flatnonzero((counts > 0) & (counts < n))  # short documents: one shingle of all words
    if len(short):
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        extra = np.empty(len(short), np.uint32)
        for c in np.unique(counts[short]).tolist():  # by length: one (documents, c) matrix each
            sel = counts[short] == c
            extra[sel] = _combine_rows(units[starts[short[sel]][:, None] + np.arange(c)])
        grams = np.insert(grams, offsets[short], extra)  # short documents have no n-gram of their own
        offsets = np.r_[0, np.cumsum(np.bincount(owner, minlength=docs) + np.bincount(short, minlength=docs))]
    return Csr(grams, offsets.astype(np.int64))


def minhash_signatures(shingles: list[np.ndarray] | Csr, a: np.ndarray, b: np.ndarray,
                       chunk: int = 1 << 13) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures, datasketch's default ``affine32`` scheme.

    Per shingle hash h: ``fmix32(h) * a + b mod 2^32``; the minimum per permutation is the
    signature. All shingles of a batch are processed together, in chunks of ``chunk`` shingles,
    and reduced per document with ``np.minimum.reduceat``; a document without shingles keeps the
    max hash (datasketch's empty value). Duplicates change no minimum: pass :meth:`Csr.distinct`
    sets where they are at hand.
    """
    sets = shingles if isinstance(shingles, Csr) else Csr.of(shingles)
    num_perm = len(a)
    sig = np.full((len(sets), num_perm), MAX_HASH32, dtype=np.uint32)
    if not len(sets.values):
        return sig
    flat = _fmix32(sets.values.astype(np.uint32))
    owners = sets.owners()
    # (num_perm, chunk) layout: the reduction runs along contiguous memory, ~15x faster than
    # reducing the rows of a (chunk, num_perm) array (measured with numpy 2.4); 8192 shingles
    # (a 4 MB block at 128 permutations) stay in cache: ~2x faster than 32768 or 2048
    buf = np.empty((num_perm, min(chunk, len(flat))), dtype=np.uint32)
    a_col, b_col = a[:, None], b[:, None]
    with np.errstate(over="ignore"):
        for start in range(0, len(flat), chunk):
            hv = flat[start:start + chunk]
            phv = buf[:, : len(hv)]
            np.multiply(a_col, hv[None, :], out=phv)
            np.add(phv, b_col, out=phv)
            own = owners[start:start + chunk]
            seg_starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
            mins = np.minimum.reduceat(phv, seg_starts, axis=1).T
            docs = own[seg_starts]
            sig[docs] = np.minimum(sig[docs], mins)
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64 keys: a hash of each band's rows, salted with the band index."""
    with np.errstate(over="ignore"):
        keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
        for band in range(bands):
            acc = np.full(sig.shape[0], np.uint64(band + 1) * np.uint64(0xD6E8FEB86659FD93), dtype=np.uint64)
            for r in range(rows):
                acc = _mix64(acc ^ sig[:, band * rows + r].astype(np.uint64))
            keys[:, band] = acc
    return keys


def lsh_params(near: NearConfig) -> tuple[int, int]:
    """(bands, rows): given, or datasketch's ``_optimal_param`` for the threshold and weights."""
    if near.bands is not None and near.rows is not None:
        return near.bands, near.rows
    from datasketch.lsh import _optimal_param

    fp = near.false_positive_weight
    return _optimal_param(near.threshold, near.num_perm, fp, 1.0 - fp)
