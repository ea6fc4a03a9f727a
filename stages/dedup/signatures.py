"""Pure core of dedup: text normalisation, exact hashes, word n-gram shingles, MinHash signatures
(datasketch's ``affine32`` scheme, value for value) and LSH band keys. No Ray: unit-testable on arrays."""

from __future__ import annotations

import re
import string
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

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


def exact_hashes(texts: list[str], cfg: ExactConfig) -> np.ndarray:
    """uint64 hash per text (for 128 bits, two columns) of the normalised text."""
    if cfg.hash_bits == 64:
        return np.array([xxhash.xxh3_64_intdigest(normalise_text(t, cfg.normalise).encode()) for t in texts],
                        dtype=np.uint64)
    out = np.empty((len(texts), 2), dtype=np.uint64)
    for i, t in enumerate(texts):
        d = xxhash.xxh3_128_intdigest(normalise_text(t, cfg.normalise).encode())
        out[i] = (d >> 64, d & 0xFFFFFFFFFFFFFFFF)
    return out


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


def shingle_hashes(text: str, shingle: ShingleConfig, cache: dict[str, int] | None = None) -> np.ndarray:
    """32-bit hashes of one document's shingles (see :func:`batch_shingle_hashes`)."""
    return batch_shingle_hashes([text], shingle)[0]


def _combine(units: np.ndarray, n: int) -> np.ndarray:
    """Rolling polynomial combination of n consecutive unit hashes -> 32-bit shingle hashes."""
    count = len(units) - n + 1
    with np.errstate(over="ignore"):
        acc = units[:count].copy()
        for k in range(1, n):
            acc = acc * np.uint64(0x9E3779B97F4A7C15) + units[k:k + count]
    return (_mix64(acc) >> np.uint64(32)).astype(np.uint32)


def batch_shingle_hashes(texts: list[str], shingle: ShingleConfig) -> list[np.ndarray]:
    """Shingle hashes of a batch of documents (word or character n-grams of the lower-cased text).

    Word n-grams are computed for the whole batch at once with pyarrow compute (lower-case, split
    on whitespace, punctuation trimmed) and numpy (each distinct word hashed once with xxh64, n-grams combined
    over the flat word array, windows crossing a document boundary dropped): about twice as fast
    as a per-document regex loop. A document shorter than n units gives one shingle of all its
    units; an empty one gives none.
    """
    if shingle.kind == "char":
        out = []
        for text in texts:
            folded = _SPACE_RE.sub(" ", text.lower()).strip()
            units = _mix64(np.frombuffer(folded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64))
            out.append(_combine(units, min(shingle.n, len(units))) if len(units) else np.empty(0, np.uint32))
        return out
    # words: whitespace tokens of the lower-cased text, punctuation trimmed from both ends (pyarrow
    # kernels; 4x faster than a Unicode-aware regex split, which RE2 needs: its \\W is ASCII-only)
    # A sentinel document ("x") ends the array: pyarrow 26's utf8_split_whitespace scans past the end
    # of the array's last string when it ends in whitespace and then sometimes keeps the trailing
    # space on the last word (or adds a word of garbage), which made the same text give different
    # shingles from run to run; inside the array the next string bounds the scan. The sentinel's
    # word is dropped below (its list is never read).
    lists = pc.utf8_split_whitespace(pc.utf8_lower(pa.array([*texts, "x"], pa.string())))
    offsets = lists.offsets.to_numpy()[: len(texts) + 1]
    flat = pc.utf8_trim(pc.list_flatten(lists).slice(0, int(offsets[-1])), characters=_PUNCTUATION)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    doc_of = np.repeat(np.arange(len(texts)), np.diff(offsets))[keep]
    words = flat.filter(pa.array(keep))
    # one hash-table pass gives both the distinct words and each word's index (unique + index_in
    # took two, about 30% of the shingling time)
    encoded = pc.dictionary_encode(words) if len(words) else None
    uniq = encoded.dictionary if encoded is not None else pa.array([], pa.string())
    uhash = np.fromiter((xxhash.xxh64_intdigest(w) for w in uniq.cast(pa.binary()).to_pylist()),
                        dtype=np.uint64, count=len(uniq))
    units = uhash[encoded.indices.to_numpy()] if encoded is not None else np.empty(0, np.uint64)
    counts = np.bincount(doc_of, minlength=len(texts))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    n = shingle.n
    out: list[np.ndarray] = [np.empty(0, np.uint32)] * len(texts)
    if len(units) >= n:
        grams = _combine(units, n)
        valid = doc_of[: len(grams)] == doc_of[n - 1:]  # the window's first and last word in one document
        grams, owner = grams[valid], doc_of[: len(valid)][valid]
        per_doc = np.bincount(owner, minlength=len(texts))
        for d, part in enumerate(np.split(grams, np.cumsum(per_doc)[:-1])):
            out[d] = part
    for d in np.flatnonzero((counts > 0) & (counts < n)):  # short documents: one shingle of all words
        out[d] = _combine(units[starts[d]:starts[d] + counts[d]], int(counts[d]))
    return out


def minhash_signatures(shingles: list[np.ndarray], a: np.ndarray, b: np.ndarray,
                       chunk: int = 1 << 15) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures, datasketch's default ``affine32`` scheme.

    Per shingle hash h: ``fmix32(h) * a + b mod 2^32``; the minimum per permutation is the
    signature. All shingles of a batch are processed together, in chunks of ``chunk`` shingles,
    and reduced per document with ``np.minimum.reduceat``; a document without shingles keeps the
    max hash (datasketch's empty value).
    """
    num_perm = len(a)
    sig = np.full((len(shingles), num_perm), MAX_HASH32, dtype=np.uint32)
    lengths = np.array([len(s) for s in shingles], dtype=np.int64)
    if lengths.sum() == 0:
        return sig
    flat = _fmix32(np.concatenate([s for s in shingles if len(s)]).astype(np.uint32))
    owners = np.repeat(np.arange(len(shingles)), lengths)
    # (num_perm, chunk) layout: the reduction runs along contiguous memory, ~15x faster than
    # reducing the rows of a (chunk, num_perm) array (measured with numpy 2.4)
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
