"""Dedup: exact (normalised-text hash) and near-duplicate (MinHash + LSH) removal.

Near dedup follows Broder (1997), "On the resemblance and containment of documents", with the LSH
banding of Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3: a document's set of
shingles is summarised by ``num_perm`` min-hashes, the signature is cut into ``bands`` of ``rows``
values, and two documents that agree on a whole band become a candidate pair.

Signatures are datasketch's (``MinHash`` default ``affine32`` scheme since datasketch 2.0: shingle
hashes pre-mixed by MurmurHash3's finaliser, permutations ``a*h + b mod 2^32`` with odd ``a``, ``a, b``
drawn from ``RandomState(seed)``), computed vectorised over all the
shingles of a batch at once: the tests check them value for value against ``datasketch.MinHash``
fed the same shingle hashes. Shingle hashes are our own: words hashed once per batch with xxh64 and
n-grams combined in numpy, which is several times faster than datasketch's per-shingle SHA-1 (see
``benchmarks/bench_dedup.py``).

Execution, every step an engine pass (progress, resume markers, retries) writing Parquet:

1. *signature pass* (one task per input part): exact hash, signature, band keys (and, for
   true-Jaccard verification, each document's distinct shingle hashes); band keys are written
   hash-partitioned into ``P`` bucket files (a shuffle write);
2. *pairs pass* (one task per partition): pairs inside each bucket (all pairs of small buckets,
   a window in keep order for big ones; stars for exact buckets), verified on the true Jaccard of
   the shingle sets or on the signature estimate, reduced to a forest (connected components);
3. *merge passes*: forests merged pairwise in rounds; a merge holds the documents that have a
   duplicate (memory O(duplicated documents), never O(corpus));
4. *kept twins* (driver, O(duplicated documents)): greedy centres in keep order inside each
   component, so every removed document has a kept document with similarity >= threshold -
   twin_margin; the clusters table; the drop set written as one (node, reason) file per input part;
5. *filter pass* (one task per input part): drop the rows its part's drop file names.

The root of a cluster is the best document by the keep rule (``longest``, ``shortest``, ``first``
by id, or the highest value of a numeric ``column``), ties broken by id: independent of workers and
block order. The root is always kept; other members are kept when no kept document is near them.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.context import StageContext
from pipeline.executor import ShardOutput, ShardTask, SidePass
from pipeline.locations import Location
from pipeline.parquet_io import PartWriter, iter_batches, parquet_rows, read_one, read_schema, write_one
from pipeline.stage_api import Stage, StageConfig, register_stage

MAX_HASH32 = np.uint32((1 << 32) - 1)
_PUNCT_RE = re.compile(r"[^\w\s]", re.UNICODE)
_DIGIT_RE = re.compile(r"\d")
_SPACE_RE = re.compile(r"\s+")
_PUNCTUATION = string.punctuation + "«»“”‘’„‚‹›…–—·•¡¿、。，．！？：；（）【】「」『』《》〈〉"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalise(_Strict):
    """How text is normalised before exact hashing. Near dedup's shingles have their own fixed folding
    (lower case, whitespace words, punctuation trimmed from each word's ends; see
    :func:`batch_shingle_hashes`), so these switches change which documents are exact copies only."""

    nfkc: bool = True
    lower: bool = True
    whitespace: bool = True
    punctuation: bool = False
    digits: bool = False


class ExactConfig(_Strict):
    enabled: bool = True
    normalise: Normalise = Field(default_factory=Normalise)
    hash_bits: Literal[64, 128] = 64


class ShingleConfig(_Strict):
    kind: Literal["word", "char"] = "word"
    n: int = Field(default=5, ge=1, le=64)


class NearConfig(_Strict):
    enabled: bool = True
    threshold: float = Field(default=0.8, gt=0, le=1, description="Jaccard similarity that makes a duplicate.")
    num_perm: int = Field(default=128, ge=8, le=1024)
    bands: int | None = Field(default=None, ge=1, description="LSH bands; default: derived from threshold.")
    rows: int | None = Field(default=None, ge=1, description="Rows per band; default: derived from threshold.")
    shingle: ShingleConfig = Field(default_factory=ShingleConfig)
    false_positive_weight: float = Field(
        default=0.1, ge=0, le=1,
        description="Weight of false positives (false negatives get 1 - this) when deriving bands and rows, "
        "as datasketch's MinHashLSH(weights=...); low, because verification removes false positives.",
    )
    verify: bool = Field(default=True, description="Drop candidate pairs whose Jaccard is too low.")
    jaccard: bool = Field(
        default=True,
        description="Verify on the true Jaccard of the two shingle sets (kept beside the signatures until "
        "the pairs are verified: about 4 bytes per word of the corpus) instead of the signature estimate, "
        "whose noise (about ±0.04 at 128 permutations) let through pairs well below the threshold.",
    )
    verify_margin: float = Field(
        default=0.05, ge=0, le=0.5,
        description="Verification keeps pairs with Jaccard >= threshold - margin (estimates are noisy).",
    )
    seed: int = Field(default=1, ge=0, description="MinHash permutation seed (datasketch's `seed`).")
    bucket_window: int = Field(
        default=64, ge=1, le=4096,
        description="Each member of an LSH bucket is paired with the next `bucket_window` members in keep "
        "order and with the bucket's best member: every pair of a bucket of up to window + 1 documents, "
        "O(bucket size × window) pairs for larger buckets.",
    )
    twin_margin: float = Field(
        default=0.1, ge=0, le=0.5,
        description="Every removed document has estimated similarity >= threshold - twin_margin with the "
        "document kept for it; a component with no such kept twin for some member keeps more documents.",
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> NearConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they derive from threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands × rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class DedupConfig(StageConfig):
    type: Literal["dedup"]
    exact: ExactConfig = Field(default_factory=ExactConfig)
    near: NearConfig = Field(default_factory=NearConfig)
    keep: Literal["longest", "shortest", "first", "column"] = Field(
        default="longest", description="Which document of a cluster survives (ties: smallest id)."
    )
    keep_column: str | None = Field(default=None, description="Numeric column for keep: column (highest wins).")
    partitions: int = Field(default=8, ge=1, le=4096, description="Hash partitions of the bucket shuffle.")
    warn_cluster_size: int = Field(default=10_000, ge=1, description="Warn when one cluster holds more documents.")
    warn_source_share: float = Field(
        default=0.5, ge=0, le=1, description="Warn when dedup removes more than this share of one source's documents."
    )

    @model_validator(mode="after")
    def _keep_column(self) -> DedupConfig:
        if self.keep == "column" and not self.keep_column:
            raise ValueError("keep: column needs keep_column")
        return self


# ----------------------------------------------------------------------------------- pure core


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


def keep_key(keep: str, length: int, doc_id: str, column_value: float | None) -> tuple:
    """Sort key: the smallest key in a cluster is kept."""
    if keep == "longest":
        return (-length, doc_id)
    if keep == "shortest":
        return (length, doc_id)
    if keep == "column":
        return (-(column_value if column_value is not None else -np.inf), doc_id)
    return (0, doc_id)


class UnionFind:
    """Union-find whose root is always the member with the smallest keep key (deterministic)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.key: dict[int, tuple] = {}

    def add(self, node: int, key: tuple) -> None:
        if node not in self.parent:
            self.parent[node] = node
            self.key[node] = key

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, u: int, v: int) -> None:
        ru, rv = self.find(u), self.find(v)
        if ru == rv:
            return
        if self.key[rv] < self.key[ru]:
            ru, rv = rv, ru
        self.parent[rv] = ru

    def pairs(self) -> list[tuple[int, int]]:
        return [(n, self.find(n)) for n in self.parent]


# ------------------------------------------------------------------------------------ Ray wiring


def _bucket_path(work: Location, part: int, shard: str) -> Location:
    return work / "_buckets" / f"p{part:04d}" / f"{shard}.parquet"


class SignatureJob:
    """Pass 1: per input part, compute keys and scatter (bucket key -> doc) rows to partitions."""

    def __init__(self, cfg: DedupConfig, work: Location, offsets: dict[str, int]):
        self.cfg, self.work, self.offsets = cfg, work, offsets
        self.perm: tuple[np.ndarray, np.ndarray] | None = None

    def setup(self) -> None:
        if self.perm is None and self.cfg.near.enabled:
            self.perm = permutations(self.cfg.near.num_perm, self.cfg.near.seed)

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        cfg, path = self.cfg, task.payload
        bands, rows = lsh_params(cfg.near) if cfg.near.enabled else (0, 0)
        parts = cfg.partitions
        writers: dict[int, list[pa.Table]] = {p: [] for p in range(parts)}
        base = self.offsets[task.key]
        sig_rows: list[pa.Table] = []
        n = 0
        cols = ["id", "text"] + ([cfg.keep_column] if cfg.keep_column else [])
        for batch in iter_batches(path, 2048, columns=cols):
            texts = batch.column("text").to_pylist()
            ids = batch.column("id").to_pylist()
            lengths = np.array([len(t) for t in texts], dtype=np.int64)
            colv = batch.column(cfg.keep_column).to_pylist() if cfg.keep_column else [None] * len(texts)
            node = np.arange(base + n, base + n + len(texts), dtype=np.int64)
            n += len(texts)
            keys = [keep_key(cfg.keep, int(ln), i, c) for ln, i, c in zip(lengths, ids, colv, strict=True)]
            k0 = np.array([k[0] for k in keys], dtype=np.float64)
            keyset: list[tuple[np.ndarray, np.ndarray, str]] = []
            if cfg.exact.enabled:
                eh = exact_hashes(texts, cfg.exact)
                ek = eh if eh.ndim == 1 else _mix64(eh[:, 0] ^ _mix64(eh[:, 1]))
                keyset.append((ek, np.arange(len(texts)), "exact"))
            sig = None
            if cfg.near.enabled:
                assert self.perm is not None
                shingles = batch_shingle_hashes(texts, cfg.near.shingle)
                sig = minhash_signatures(shingles, *self.perm)
                has = np.array([len(s) > 0 for s in shingles])
                bk = band_keys(sig, bands, rows)
                for band in range(bands):
                    idx = np.flatnonzero(has)
                    keyset.append((bk[idx, band], idx, "near"))
                cols = {"node": node, "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()),
                                                                               cfg.near.num_perm)}
                if cfg.near.verify and cfg.near.jaccard:  # distinct shingles, for true-Jaccard verification
                    cols["shingles"] = pa.array([np.unique(x) for x in shingles], pa.list_(pa.uint32()))
                sig_rows.append(pa.table(cols))
            for key, idx, kind in keyset:
                part = (key % np.uint64(parts)).astype(np.int64)
                for p in np.unique(part):
                    sel = idx[part == p]
                    writers[int(p)].append(pa.table({
                        "key": key[part == p], "kind": pa.array([kind] * len(sel)),
                        "node": node[sel], "k0": k0[sel], "id": pa.array([ids[i] for i in sel], pa.string()),
                    }))
        for p, tables in writers.items():
            if tables:
                write_one(pa.concat_tables(tables), _bucket_path(self.work, p, task.key))
        if sig_rows:
            write_one(pa.concat_tables(sig_rows), self.work / "_signatures" / f"{task.key}.parquet")
        return {"docs": n, "stats": {}}


_EDGE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.string()), ("ku0", pa.float64()),
                          ("kuid", pa.string()), ("kv0", pa.float64()), ("kvid", pa.string())])


def _edges_for_partition(files: list[Location], window: int = 64) -> pa.Table:
    """Pass 2: candidate pairs of one partition's buckets.

    Rows are sorted by (kind, key, keep key): each bucket is a run of rows, best document first.
    Exact buckets (one normalised-text hash: a clique by definition) give star edges from the best
    copy to the others. Near buckets pair every member with the bucket's best and with the next
    ``window`` members in keep order: all pairs of a bucket of up to ``window + 1`` members (a star
    alone missed pairs whose star edges verification dropped), O(size × window) pairs for a huge
    bucket. Each pair appears once (smaller node first; an exact pair wins over a near one).
    """
    tables = [read_one(f) for f in files]
    if not tables:
        return _EDGE_SCHEMA.empty_table()
    t = pa.concat_tables(tables)
    t = t.sort_by([("kind", "ascending"), ("key", "ascending"), ("k0", "ascending"), ("id", "ascending")])
    key = t.column("key").to_numpy()
    kind = t.column("kind").to_numpy(zero_copy_only=False)
    node = t.column("node").to_numpy()
    new = np.r_[True, (key[1:] != key[:-1]) | (kind[1:] != kind[:-1])]
    group = np.cumsum(new) - 1
    size = np.bincount(group)[group]
    rows = np.flatnonzero(size > 1)  # singleton buckets (almost all) pair with nothing
    if not len(rows):
        return _EDGE_SCHEMA.empty_table()
    head = np.maximum.accumulate(np.where(new, np.arange(len(key)), 0))
    pairs = [np.c_[head[rows], rows]]  # stars from each bucket's best member
    near_rows = rows[kind[rows] == "near"]
    g = group[near_rows]
    for d in range(1, window + 1):
        same = g[d:] == g[:-d]
        if not same.any():
            break
        pairs.append(np.c_[near_rows[:-d][same], near_rows[d:][same]])
    ij = np.concatenate(pairs)
    ij = ij[node[ij[:, 0]] != node[ij[:, 1]]]
    if not len(ij):
        return _EDGE_SCHEMA.empty_table()
    i, j = ij[:, 0], ij[:, 1]
    swap = node[i] > node[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    is_near = (kind[i] == "near").astype(np.int64)
    order = np.lexsort((is_near, node[j], node[i]))  # per pair, the exact row first
    i, j = i[order], j[order]
    first = np.r_[True, (node[i][1:] != node[i][:-1]) | (node[j][1:] != node[j][:-1])]
    i, j = i[first], j[first]
    k0, ids = t.column("k0"), t.column("id")
    ia, ja = pa.array(i), pa.array(j)
    return pa.table({"u": node[i], "v": node[j], "kind": kind[i], "ku0": k0.take(ia), "kuid": ids.take(ia),
                     "kv0": k0.take(ja), "kvid": ids.take(ja)}, schema=_EDGE_SCHEMA)


# (sorted node ids, one signature row per node, each node's distinct shingles or None)
Signatures = tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]


def _needed_signatures(sig_file: Location, *edge_tables: pa.Table) -> Signatures:
    """Signatures (and shingle sets, if stored), from one signature file, of the documents that
    some candidate edge touches."""
    nodes = np.unique(np.concatenate([np.r_[e.column("u").to_numpy(), e.column("v").to_numpy()]
                                      for e in edge_tables] or [np.zeros(0, np.int64)]))
    t = read_one(sig_file)
    nd = t.column("node").to_numpy()
    mask = np.isin(nd, nodes)
    flat = t.column("sig").combine_chunks().flatten().to_numpy().reshape(len(nd), -1)
    order = np.argsort(nd[mask], kind="stable")
    shingles = None
    if "shingles" in t.column_names:
        picked = t.column("shingles").filter(pa.array(mask)).take(pa.array(order)).combine_chunks()
        offs = picked.offsets.to_numpy()
        values = picked.values.to_numpy()
        shingles = [values[offs[k]:offs[k + 1]] for k in range(len(picked))]
    return nd[mask][order], flat[mask][order], shingles


def _merge_signatures(parts: tuple[Signatures, ...]) -> Signatures:
    parts = tuple(p for p in parts if len(p[0]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.uint64), None
    nodes = np.concatenate([p[0] for p in parts])
    order = np.argsort(nodes, kind="stable")
    shingles = None
    if all(p[2] is not None for p in parts):
        every = [x for p in parts for x in (p[2] or [])]
        shingles = [every[k] for k in order.tolist()]
    return nodes[order], np.concatenate([p[1] for p in parts])[order], shingles


def _verify(edges: pa.Table, sigs: Signatures, threshold: float) -> pa.Table:
    """Keep exact edges and near edges whose Jaccard reaches the threshold: the true Jaccard of
    the shingle sets when they were stored, else the signature estimate (vectorised: row gathers
    and one comparison). An edge whose documents have no signature here (verification off)
    counts as similarity 1.
    """
    if not edges.num_rows:
        return edges.append_column("sim", pa.array([], pa.float64()))
    u, v = edges.column("u").to_numpy(), edges.column("v").to_numpy()
    nodes, matrix, shingles = sigs
    sims = np.ones(len(u))
    if len(nodes):
        iu = np.minimum(np.searchsorted(nodes, u), len(nodes) - 1)
        iv = np.minimum(np.searchsorted(nodes, v), len(nodes) - 1)
        near = (edges.column("kind").to_numpy(zero_copy_only=False) != "exact") & (nodes[iu] == u) & (nodes[iv] == v)
        sel = np.flatnonzero(near)
        if shingles is not None:
            for k, a, b in zip(sel.tolist(), iu[sel].tolist(), iv[sel].tolist(), strict=True):
                sa, sb = shingles[a], shingles[b]
                inter = len(np.intersect1d(sa, sb, assume_unique=True))
                union = len(sa) + len(sb) - inter
                sims[k] = inter / union if union else 1.0
        else:
            sims[sel] = np.count_nonzero(matrix[iu[sel]] == matrix[iv[sel]], axis=1) / matrix.shape[1]
    t = edges.append_column("sim", pa.array(sims))
    keep = pc.or_(pc.equal(t["kind"], "exact"), pc.greater_equal(t["sim"], threshold))
    return t.filter(keep)


def _components(keys: pa.Table, u: np.ndarray, v: np.ndarray) -> pa.Table:
    """Connected components of the edges (u, v) over the nodes of ``keys`` (node, k0, id): rows
    (node, k0, id, root) sorted by node, the root being each component's smallest (k0, id) member.

    The same roots as :class:`UnionFind`, computed with numpy and scipy's ``connected_components``
    instead of Python dicts: measured, a dict forest of 300k+ documents left its worker process
    holding ~1 GB (fragmented small-object arenas) into every later stage; arrays are freed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    node_col = keys.column("node").to_numpy()
    nodes, first = np.unique(node_col, return_index=True)
    keys = keys.take(pa.array(first))
    n = len(nodes)
    if n == 0:
        return keys.append_column("root", pa.array([], pa.int64()))
    iu, iv = np.searchsorted(nodes, u), np.searchsorted(nodes, v)
    graph = coo_matrix((np.ones(len(iu), np.int8), (iu, iv)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    ranked = pa.table({"label": labels, "k0": keys.column("k0"), "id": keys.column("id"), "i": np.arange(n)})
    ranked = ranked.sort_by([("label", "ascending"), ("k0", "ascending"), ("id", "ascending"), ("i", "ascending")])
    lab, idx = ranked.column("label").to_numpy(), ranked.column("i").to_numpy()
    head = np.r_[True, lab[1:] != lab[:-1]]
    root_of_label = np.empty(labels.max() + 1, np.int64)
    root_of_label[lab[head]] = nodes[idx[head]]
    return pa.table({"node": pa.array(nodes, pa.int64()), "k0": keys.column("k0"), "id": keys.column("id"),
                     "root": pa.array(root_of_label[labels], pa.int64())})


def _forest(edges: pa.Table) -> pa.Table:
    """One partition's verified edges -> (node, k0, id, root) rows."""
    keys = pa.concat_tables([
        pa.table({"node": edges.column("u"), "k0": edges.column("ku0"), "id": edges.column("kuid")}),
        pa.table({"node": edges.column("v"), "k0": edges.column("kv0"), "id": edges.column("kvid")}),
    ])
    return _components(keys, edges.column("u").to_numpy(), edges.column("v").to_numpy())


def _forest_table(uf: UnionFind) -> pa.Table:
    nodes = sorted(uf.parent)
    return pa.table({"node": pa.array(nodes, pa.int64()), "k0": pa.array([uf.key[n][0] for n in nodes], pa.float64()),
                     "id": pa.array([uf.key[n][1] for n in nodes], pa.string()),
                     "root": pa.array([uf.find(n) for n in nodes], pa.int64())})


def _merge_forests(a: pa.Table, b: pa.Table) -> pa.Table:
    """Merge two forests: every node is linked to its root in either forest."""
    both = pa.concat_tables([a, b])
    return _components(both.select(["node", "k0", "id"]), both.column("node").to_numpy(),
                       both.column("root").to_numpy())


def representatives(forest: pa.Table, edges: pa.Table, min_sim: float) -> pa.Table:
    """Which documents of the clusters are kept, and the kept document of each removed one.

    ``forest``: (node, k0, id, root) of every document in a cluster; ``edges``: verified pairs
    (u, v, kind, sim). Exact copies collapse first onto their group's best copy (the exact bucket's
    star centre): the others are removed as ``exact`` duplicates of it. Then greedy centres in keep
    order (what a query-then-insert LSH loop does implicitly): a document is removed when a verified
    edge with similarity >= ``min_sim`` joins it to a document already kept (the most similar such
    one, ties by keep order), and is kept otherwise. The component's root (its best document by the
    keep rule) is always kept, so the keep rule stays the primary rule; a chained component whose
    members are not all near its root keeps more than one document instead of losing the far ones.

    Returns (node, kept, kept_node, similarity, reason) sorted by node; ``similarity`` is the
    estimate between the document and ``kept_node`` (1 for exact copies and for kept documents).
    """
    nodes = forest.column("node").to_numpy()
    n = len(nodes)
    ranked = pa.table({"k0": forest.column("k0"), "id": forest.column("id"), "i": np.arange(n)})
    order = ranked.sort_by([("k0", "ascending"), ("id", "ascending"), ("i", "ascending")]).column("i").to_numpy()
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    iu = np.searchsorted(nodes, edges.column("u").to_numpy())
    iv = np.searchsorted(nodes, edges.column("v").to_numpy())
    sim = edges.column("sim").to_numpy()
    exact = edges.column("kind").to_numpy(zero_copy_only=False) == "exact"
    # exact groups: the star centre of an exact bucket is its best copy
    ehead = np.arange(n)
    a, b = iu[exact], iv[exact]
    first_is_best = rank[a] < rank[b]
    ehead[np.where(first_is_best, b, a)] = np.where(first_is_best, a, b)
    # near edges between group heads, earlier (in keep order) endpoint first
    hu, hv, hs = ehead[iu[~exact]], ehead[iv[~exact]], sim[~exact]
    ok = (hu != hv) & (hs >= min_sim)
    hu, hv, hs = hu[ok], hv[ok], hs[ok]
    early = rank[hu] < rank[hv]
    lo, hi = np.where(early, hu, hv), np.where(early, hv, hu)
    by = np.lexsort((rank[lo], -hs, rank[hi]))  # per later document: most similar, then best-ranked, first
    kept = np.ones(n, bool)
    kept[ehead != np.arange(n)] = False
    twin = np.arange(n)
    twin_sim = np.ones(n)
    decided = np.zeros(n, bool)
    for x, c, sv in zip(hi[by].tolist(), lo[by].tolist(), hs[by].tolist(), strict=True):
        if not decided[x] and kept[c]:  # c's own fate is settled: all its edges sort before x's
            kept[x], twin[x], twin_sim[x], decided[x] = False, c, sv, True
    members = np.flatnonzero(ehead != np.arange(n))
    h = ehead[members]
    twin[members] = np.where(kept[h], h, twin[h])
    twin_sim[members] = np.where(kept[h], 1.0, twin_sim[h])
    reason = np.where(kept, "", np.where(ehead != np.arange(n), "exact", "near"))
    return pa.table({"node": pa.array(nodes, pa.int64()), "kept": pa.array(kept), "kept_node": pa.array(nodes[twin]),
                     "similarity": pa.array(twin_sim), "reason": pa.array(reason.tolist(), pa.string())})


class FilterDuplicatesJob:
    """Pass 4: keep a document unless the drop table of its input part names it.

    The drop set is data: one small Parquet file per input part (node, reason), so a worker holds
    the drop rows of its own part only. Removal is also counted per ``source`` and per ``lang``
    (when the rows have those columns), so a source that dedup wipes out shows in the manifest.
    """

    def __init__(self, drop_dir: Location, offsets: dict[str, int]):
        self.drop_dir, self.offsets = drop_dir, offsets

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        path = task.payload
        base = self.offsets[task.key]
        schema = read_schema(path)
        out.data.schema = schema
        drop_file = self.drop_dir / f"{task.key}.parquet"
        drop = read_one(drop_file) if drop_file.exists() else pa.table({"node": pa.array([], pa.int64()),
                                                                         "reason": pa.array([], pa.string())})
        drop_nodes = drop.column("node").to_numpy()
        drop_reasons = drop.column("reason").to_numpy(zero_copy_only=False)
        groups = [c for c in ("source", "lang") if c in schema.names]
        n_in = n_out = b_in = b_out = 0
        dropped: Counter[str] = Counter()
        per: dict[str, dict[str, list[int]]] = {c: {} for c in groups}
        for batch in iter_batches(path, 4096):
            nodes = np.arange(base + n_in, base + n_in + batch.num_rows)
            pos = np.searchsorted(drop_nodes, nodes)
            hit = (pos < len(drop_nodes)) & (drop_nodes[np.minimum(pos, len(drop_nodes) - 1)] == nodes) \
                if len(drop_nodes) else np.zeros(len(nodes), bool)
            dropped.update(drop_reasons[pos[hit]].tolist())
            kept = batch.filter(pa.array(~hit))
            for c in groups:
                for value, removed in zip(batch.column(c).to_pylist(), hit.tolist(), strict=True):
                    slot = per[c].setdefault(str(value), [0, 0])
                    slot[0] += 1
                    slot[1] += removed
            out.data.write(kept)
            n_in += batch.num_rows
            n_out += kept.num_rows
            b_in += batch.nbytes
            b_out += kept.nbytes
        return {"rows_in": n_in, "rows_out": n_out, "bytes_in": b_in, "bytes_out": b_out, "dropped": dict(dropped),
                "by_group": per}


def _write_drop_tables(drop: pa.Table, folder: Location, offsets: dict[str, int], counts: list[int]) -> None:
    """Split the (node, reason) drop table by input part: node ranges are the parts' row offsets."""
    drop = drop.sort_by("node")
    nodes = drop.column("node").to_numpy()
    for (key, base), count in zip(offsets.items(), counts, strict=True):
        lo, hi = np.searchsorted(nodes, [base, base + count])
        if hi > lo:
            write_one(drop.slice(int(lo), int(hi - lo)), folder / f"{key}.parquet")


@register_stage
class DedupStage(Stage[DedupConfig]):
    """Exact + MinHash-LSH near-duplicate removal with a deterministic keep rule."""

    config_model = DedupConfig
    code_version: ClassVar[str] = "2"  # 2: kept twins, all-pairs buckets, clusters table kept_id

    def run(self, ctx: StageContext) -> None:

        cfg = self.config
        files = [f for _, f in ctx.input_files()]
        keys = [f"{i:05d}" for i in range(len(files))]
        counts = [parquet_rows(f) for f in files]
        offsets = dict(zip(keys, np.r_[0, np.cumsum(counts)[:-1]].astype(int).tolist(), strict=True)) if files else {}
        tasks = [ShardTask(k, f) for k, f in zip(keys, files, strict=True)]

        import time

        t0 = time.perf_counter()
        # pass 1: signatures and the bucket shuffle (side files only; no dataset rows yet)
        sig_job = SignatureJob(cfg, ctx.work_dir, offsets)
        side = SidePass("sig", sig_job)
        ctx.map_shards(side, side.tasks(tasks), count_rows=False)
        t1 = time.perf_counter()
        # pass 2: per partition, candidate pairs, verified on the signatures (or shingles) they need,
        # reduced to a forest; pass 3: forests merged pairwise in rounds. Every step is an engine
        # pass writing Parquet (progress, resume markers, retries), nothing handed through the driver.
        sig_files = (ctx.work_dir / "_signatures").glob("*.parquet") if cfg.near.verify else []
        verify_at = cfg.near.threshold - cfg.near.verify_margin if cfg.near.verify else 0.0
        pdirs = (ctx.work_dir / "_buckets").glob("p*")
        pair_dir = ctx.work_dir / "_pairs"
        ctx.run_pass("pairs", PairsJob(cfg.near.bucket_window, sig_files, verify_at, pair_dir),
                     [ShardTask(pdir.name, pdir.glob("*.parquet")) for pdir in pdirs])
        level = [pair_dir / "forest" / f"{pdir.name}.parquet" for pdir in pdirs]
        rounds = 0
        while len(level) > 1:
            rounds += 1
            jobs = [(level[i], level[i + 1], pair_dir / f"merge{rounds}" / f"{i:05d}.parquet")
                    for i in range(0, len(level) - 1, 2)]
            merged = ctx.map_function(f"merge{rounds}", _merge_forest_files, jobs)
            level = merged + ([level[-1]] if len(level) % 2 else [])
        forest = read_one(level[0]) if level else _forest_table(UnionFind())
        edge_files = [pair_dir / "edges" / f"{pdir.name}.parquet" for pdir in pdirs]
        edges = pa.concat_tables([read_one(f) for f in edge_files]) if edge_files else None
        ctx.manifest.stats["merge_rounds"] = rounds

        t2 = time.perf_counter()
        # the clusters table and the drop set
        drop, cluster_stats, clusters = self._clusters(forest, edges, files, offsets, keys)
        w = PartWriter(ctx.side_dir("clusters"), "part-00000")
        w.write(clusters)
        w.commit()
        drop_dir = ctx.work_dir / "_drop"
        _write_drop_tables(drop, drop_dir, offsets, counts)
        t3 = time.perf_counter()
        # pass 4: filter
        results = ctx.map_shards(FilterDuplicatesJob(drop_dir, offsets), tasks)
        self._group_stats(ctx, results, cluster_stats)
        bands, rows = lsh_params(cfg.near) if cfg.near.enabled else (0, 0)
        ctx.manifest.stats.update(cluster_stats)
        ctx.manifest.stats["seconds"] = {"signatures": round(t1 - t0, 3), "components": round(t2 - t1, 3),
                                         "clusters": round(t3 - t2, 3),
                                         "filter": round(time.perf_counter() - t3, 3)}
        ctx.manifest.stats["parameters"] = {"num_perm": cfg.near.num_perm, "bands": bands, "rows": rows,
                                            "threshold": cfg.near.threshold, "shingle": cfg.near.shingle.model_dump(),
                                            "partitions": cfg.partitions, "keep": cfg.keep}
        for side in ("_buckets", "_signatures", "_drop", "_pairs"):
            (ctx.work_dir / side).rmtree()

    def _clusters(self, forest: pa.Table, edges: pa.Table | None, files: list[Location], offsets: dict[str, int],
                  keys: list[str]) -> tuple[pa.Table, dict[str, Any], pa.Table]:
        near = self.config.near
        if edges is None:
            edges = _EDGE_SCHEMA.empty_table().append_column("sim", pa.array([], pa.float64()))
        reps = representatives(forest, edges, near.threshold - near.twin_margin)
        nodes = forest.column("node").to_numpy()
        roots = forest.column("root").to_numpy()
        ids = forest.column("id")
        kept = reps.column("kept").to_numpy(zero_copy_only=False)
        reason = reps.column("reason").to_numpy(zero_copy_only=False)
        has_exact = np.zeros(len(nodes), bool)
        has_exact[np.searchsorted(nodes, reps.column("kept_node").to_numpy()[reason == "exact"])] = True
        linked = np.where(kept, np.where(has_exact, "exact", "near"), reason)
        drop = pa.table({"node": pa.array(nodes[~kept], pa.int64()),
                         "reason": pa.array([f"{r}_duplicate" for r in reason[~kept].tolist()], pa.string())})
        clusters = pa.table({
            "id": ids, "cluster_id": ids.take(pa.array(np.searchsorted(nodes, roots))), "kept": reps.column("kept"),
            "kept_id": ids.take(pa.array(np.searchsorted(nodes, reps.column("kept_node").to_numpy()))),
            "linked_by": pa.array(linked.tolist(), pa.string()), "similarity": reps.column("similarity"),
        })
        clusters = clusters.sort_by([("cluster_id", "ascending"), ("id", "ascending")])
        sizes = Counter(roots.tolist())
        hist: Counter[str] = Counter()
        for size in sizes.values():
            hist[str(size) if size < 10 else ("10-99" if size < 100 else "100+")] += 1
        stats = {"clusters": len(sizes), "documents_in_clusters": len(nodes),
                 "kept_in_clusters": int(kept.sum()), "largest_cluster": max(sizes.values(), default=0),
                 "removed_exact": int((reason == "exact").sum()), "removed_near": int((reason == "near").sum()),
                 "cluster_size_histogram": dict(sorted(hist.items(), key=lambda kv: _size_order(kv[0])))}
        return drop, stats, clusters

    def _group_stats(self, ctx: StageContext, results: list[dict[str, Any]], cluster_stats: dict[str, Any]) -> None:
        """Removed per source and per language into the manifest, and warnings past the thresholds."""
        cfg = self.config
        warnings: list[str] = []
        for column in ("source", "lang"):
            total: dict[str, list[int]] = {}
            for r in results:
                for value, (n, removed) in r.get("by_group", {}).get(column, {}).items():
                    slot = total.setdefault(value, [0, 0])
                    slot[0] += n
                    slot[1] += removed
            if not total:
                continue
            ctx.manifest.stats[f"removed_by_{column}"] = {
                v: {"rows_in": n, "removed": d, "share": round(d / n, 4) if n else 0.0}
                for v, (n, d) in sorted(total.items())}
            if column == "source":
                warnings += [f"dedup removed {d:,} of {n:,} documents ({d / n:.0%}) of source {v!r} "
                             f"(warn_source_share {cfg.warn_source_share})"
                             for v, (n, d) in sorted(total.items()) if n and d / n > cfg.warn_source_share]
        largest = cluster_stats.get("largest_cluster", 0)
        if largest > cfg.warn_cluster_size:
            warnings.append(f"one dedup cluster holds {largest:,} documents "
                            f"(warn_cluster_size {cfg.warn_cluster_size:,})")
        for text in warnings:
            warn = getattr(ctx, "warn", None)  # the engine's warning channel, where it has one
            if warn is not None:
                warn(text)
            else:
                ctx.manifest.stats.setdefault("warnings", []).append(text)
                if ctx.reporter:
                    ctx.reporter.message(f"warning: {text}")

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        p = s.get("parameters", {})
        rows = [("clusters", f"{s.get('clusters', 0):,}"), ("removed (exact)", f"{s.get('removed_exact', 0):,}"),
                ("removed (near)", f"{s.get('removed_near', 0):,}"),
                ("LSH", f"{p.get('bands')} bands × {p.get('rows')} rows, {p.get('num_perm')} perms, "
                        f"threshold {p.get('threshold')}")]
        rows += [(f"clusters of size {k}", f"{v:,}") for k, v in s.get("cluster_size_histogram", {}).items()]
        for column in ("source", "lang"):
            rows += [(f"removed from {column} {v}", f"{g['removed']:,} of {g['rows_in']:,} ({g['share']:.1%})")
                     for v, g in s.get(f"removed_by_{column}", {}).items()]
        rows += [("warning", w) for w in s.get("warnings", [])]
        return rows


def _size_order(label: str) -> int:
    """Histogram labels in size order: "2" ... "9", "10-99", "100+"."""
    return int(label.split("-")[0].rstrip("+"))


class PairsJob:
    """Pass 2, one task per bucket partition: candidate pairs, verified, and their forest, as Parquet."""

    def __init__(self, window: int, sig_files: list[Location], verify_at: float, out: Location):
        self.window, self.sig_files, self.verify_at, self.out = window, sig_files, verify_at, out

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        edges = _edges_for_partition(task.payload, self.window)
        # the signatures these pairs need, one signature file at a time (only rows that have a pair)
        sigs = _merge_signatures(tuple(_needed_signatures(f, edges) for f in self.sig_files)) if edges.num_rows \
            else _merge_signatures(())
        verified = _verify(edges, sigs, self.verify_at)
        del sigs
        write_one(verified, self.out / "edges" / f"{task.key}.parquet")
        write_one(_forest(verified), self.out / "forest" / f"{task.key}.parquet")
        return {"candidates": edges.num_rows, "verified": verified.num_rows}


def _merge_forest_files(job: tuple[Location, Location, Location]) -> Location:
    """Pass 3 step: merge two forest files into a third (resumable: the engine marks the task)."""
    a, b, out = job
    write_one(_merge_forests(read_one(a), read_one(b)), out)
    return out
