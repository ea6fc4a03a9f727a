"""Dedup's shuffle and pairs passes: band keys hash-partitioned into bucket files by the signature
pass (signatures and shingle sets shuffled by node for the verification passes), then per
partition the pairs inside each bucket (all pairs of small buckets, a window in keep order for big
ones)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import iter_batches, parquet_rows, read_one, write_scratch
from stages.dedup.byte_copies import part_copies
from stages.dedup.cluster_passes import scatter, write_pairs_outputs
from stages.dedup.components import _forest, node_partition
from stages.dedup.config import DedupConfig
from stages.dedup.signatures import (
    _mix64,
    band_keys,
    batch_shingles,
    exact_hashes,
    keep_k0,
    lsh_params,
    minhash_signatures,
    normalises_from_words,
    permutations,
    split_words,
    text_array,
)


def _bucket_path(work: Location, part: int, shard: str) -> Location:
    return work / "_buckets" / f"p{part:04d}" / f"{shard}.parquet"


#: the kind column's values by code (0 exact, 1 near); the only two bucket-row kinds there are
KIND_NAMES = ("exact", "near")


def _bucket_rows(keyset: list[tuple[np.ndarray, np.ndarray, int]], docs: BatchDocs, parts: int) -> pa.Table:
    """One batch's bucket rows (key, kind, node, k0, id) and each row's partition, in keyset order
    then document order: gathered with numpy and ``take`` instead of a table per key kind and
    partition."""
    key = np.concatenate([k for k, _, _ in keyset])
    idx = np.concatenate([i for _, i, _ in keyset])
    kind = np.concatenate([np.full(len(i), c, np.int8) for _, i, c in keyset])
    kinds = pa.array(KIND_NAMES, pa.string()).take(pa.array(kind))
    return pa.table({"key": key, "kind": kinds, "node": docs.node[idx], "k0": docs.k0[idx],
                     "id": docs.ids.take(pa.array(idx)).cast(pa.string()),
                     "part": (key % np.uint64(parts)).astype(np.int64)})


@dataclass(frozen=True)
class BatchDocs:
    """The documents a batch's bucket rows are written for: node, keep key and id each."""

    node: np.ndarray
    k0: np.ndarray
    ids: pa.Array | pa.ChunkedArray


def _copy_keys(keyset: list[tuple[np.ndarray, np.ndarray, int]], docs: BatchDocs,
               members: pa.Table) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], BatchDocs]:
    """The keyset of byte copies (``members``, ``MEMBER_SCHEMA``, their carriers all in ``docs``):
    each copy gets its carrier's exact key (equal bytes, equal normalised text), with its own node,
    keep key and id, so the exact stars join every copy to its group as before. A copy gets no near
    keys: a near pair through a copy is a pair of its carrier, with the same similarity, and the
    carrier's own rows give it (see :mod:`stages.dedup.byte_copies`)."""
    at = np.searchsorted(docs.node, members.column("carrier").to_numpy())
    copied = []
    for keys, idx, kind in keyset:
        if KIND_NAMES[kind] != "exact":
            continue
        pos = np.full(len(docs.node), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        mine = pos[at]
        has = np.flatnonzero(mine >= 0)
        copied.append((keys[mine[has]], has, kind))
    return copied, BatchDocs(members.column("node").to_numpy(), members.column("k0").to_numpy(),
                             members.column("id"))


class _BucketWriter:
    """A signature task's bucket rows, written hash-partitioned by key (a shuffle write) in files of
    at most about ``FLUSH_ROWS`` rows per task, so a part holding the carriers of many copies does
    not hold all their rows at once."""

    def __init__(self, work: Location, parts: int, writer: str):
        self.work, self.parts, self.writer = work, parts, writer
        self.tables: list[pa.Table] = []
        self.rows = self.files = 0

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Rows grouped by partition, in the order they were added within each."""
        if not self.tables:
            return
        t = pa.concat_tables(self.tables)
        self.tables, self.rows = [], 0
        part = t.column("part").to_numpy()
        order = np.argsort(part, kind="stable")
        t = t.drop_columns(["part"]).take(pa.array(order))
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        name = self.writer if not self.files else f"{self.writer}-{self.files}"
        self.files += 1
        for p in range(self.parts):
            if bounds[p + 1] > bounds[p]:
                write_scratch(t.slice(bounds[p], bounds[p + 1] - bounds[p]), _bucket_path(self.work, p, name),
                          use_dictionary=["kind", "id"])


#: bucket rows a signature task holds before writing them (about 50 bytes each)
FLUSH_ROWS = 4_000_000
#: byte copies whose rows are made at once
COPY_CHUNK = 100_000


class SignatureJob:
    """Pass 1: per input part, compute keys and scatter (bucket key -> doc) rows to partitions.

    With ``byte_copies`` (the passes of :mod:`stages.dedup.byte_copies` ran), the part's byte copies
    are skipped (no shingles, signature or hash: their carriers' rows stand for them) and the copies
    whose carrier is in the part get the carrier's exact bucket row (:func:`_copy_keys`)."""

    def __init__(self, cfg: DedupConfig, work: Location, offsets: dict[str, int], byte_copies: bool = False):
        self.cfg, self.work, self.offsets, self.byte_copies = cfg, work, offsets, byte_copies
        self.perm: tuple[np.ndarray, np.ndarray] | None = None

    def setup(self) -> None:
        if self.perm is None and self.cfg.near.enabled:
            self.perm = permutations(self.cfg.near.num_perm, self.cfg.near.seed)

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        cfg, path = self.cfg, task.payload
        bands, rows = lsh_params(cfg.near) if cfg.near.enabled else (0, 0)
        base = self.offsets[task.key]
        copies, members = part_copies(self.work if self.byte_copies else None, list(self.offsets).index(task.key))
        carriers = members.column("carrier").to_numpy()
        buckets = _BucketWriter(self.work, cfg.partitions, task.key)
        sig_rows: list[pa.Table] = []
        # the batch's words once, for the exact hashes and the word shingles alike
        split = (cfg.exact.enabled and normalises_from_words(cfg.exact.normalise)) or \
            (cfg.near.enabled and cfg.near.shingle.kind == "word")
        for text, ids, node, k0 in _signed_batches(cfg, path, base, copies):
            words = split_words(text) if split else None
            keyset: list[tuple[np.ndarray, np.ndarray, int]] = []  # (keys, their documents, kind)
            if cfg.exact.enabled:
                eh = exact_hashes(text, cfg.exact, words)
                ek = eh if eh.ndim == 1 else _mix64(eh[:, 0] ^ _mix64(eh[:, 1]))
                keyset.append((ek, np.arange(len(text)), 0))
            if cfg.near.enabled:
                assert self.perm is not None
                sets = batch_shingles(text, cfg.near.shingle, words).distinct()  # duplicates change no minimum
                sig = minhash_signatures(sets, *self.perm)
                idx = np.flatnonzero(np.diff(sets.offsets) > 0)
                bk = band_keys(sig, bands, rows)
                keyset += [(bk[idx, band], idx, 1) for band in range(bands)]
                table = {"node": node, "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()),
                                                                                cfg.near.num_perm)}
                if cfg.near.verify and cfg.near.jaccard:  # distinct shingles, for true-Jaccard verification
                    table["shingles"] = sets.to_arrow()
                sig_rows.append(pa.table(table))
            if keyset:
                docs = BatchDocs(node, k0, ids)
                buckets.add(_bucket_rows(keyset, docs, cfg.partitions))
                lo, hi = np.searchsorted(carriers, node[0]), np.searchsorted(carriers, node[-1], side="right")
                for start in range(lo, hi, COPY_CHUNK):  # the batch's documents' byte copies
                    chunk = members.slice(start, min(COPY_CHUNK, hi - start))
                    buckets.add(_bucket_rows(*_copy_keys(keyset, docs, chunk), cfg.partitions))
        buckets.flush()
        if sig_rows and cfg.near.verify:  # by node: a verification task reads its own nodes' rows only
            table = pa.concat_tables(sig_rows)
            scatter(table, node_partition(table.column("node").to_numpy(), cfg.partitions), cfg.partitions,
                    self.work / "_signatures", task.key)
        return {"docs": parquet_rows(path), "stats": {}}


#: rows a signature task reads at once; it signs up to SIGN_BATCH_ROWS documents and SIGN_BATCH_BYTES
#: of text at once (the words, shingles and their sort take about 25 bytes per byte of text). Why not
#: 2,048 rows as read: with byte copies dropped, the 4x Debian corpus left ~500 carriers of short
#: fortunes per batch, and the per-batch kernels' fixed costs showed (one 104k-document part signed
#: in 2.5 s of CPU instead of 2.9-3.6 s)
SIGN_READ_ROWS = 2048
SIGN_BATCH_ROWS = 16384
SIGN_BATCH_BYTES = 16 << 20

#: a batch to sign: text, ids, nodes, keep keys
_Batch = tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]


def _signed_batches(cfg: DedupConfig, path: Location, base: int, copies: np.ndarray) -> Iterator[_Batch]:
    """The part's documents that are not byte copies (``copies``: sorted nodes), in order, in
    batches of at most :data:`SIGN_BATCH_ROWS` documents and :data:`SIGN_BATCH_BYTES` of text (a
    larger document alone): read :data:`SIGN_READ_ROWS` rows at a time, so memory stays bounded
    whatever the part's size."""
    held: list[_Batch] = []
    rows = size = 0
    for piece, nbytes in _own_pieces(cfg, path, base, copies):
        if held and (rows + len(piece[2]) > SIGN_BATCH_ROWS or size + nbytes > SIGN_BATCH_BYTES):
            yield _joined(held)
            held, rows, size = [], 0, 0
        held.append(piece)
        rows, size = rows + len(piece[2]), size + nbytes
    if held:
        yield _joined(held)


def _own_pieces(cfg: DedupConfig, path: Location, base: int, copies: np.ndarray) -> Iterator[tuple[_Batch, int]]:
    """(batch, text bytes): each read batch without its byte copies, cut to at most
    :data:`SIGN_BATCH_BYTES` of text (a larger document alone)."""
    cols = ["id", "text"] + ([cfg.keep_column] if cfg.keep_column else [])
    n = 0
    for batch in iter_batches(path, SIGN_READ_ROWS, columns=cols):
        text = text_array(batch.column("text"))
        ids = text_array(batch.column("id"))
        node = np.arange(base + n, base + n + len(text), dtype=np.int64)
        n += len(text)
        k0 = keep_k0(cfg.keep, text, batch.column(cfg.keep_column) if cfg.keep_column else None)
        if len(copies):  # a byte copy's rows come from its carrier's part
            own = ~np.isin(node, copies, assume_unique=True)
            if not own.all():
                text, ids, node, k0 = text.filter(pa.array(own)), ids.filter(pa.array(own)), node[own], k0[own]
        ends = np.cumsum(pc.binary_length(text).to_numpy(zero_copy_only=False))
        start = 0
        while start < len(node):
            done = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, done + SIGN_BATCH_BYTES, side="right")))
            yield ((text.slice(start, stop - start), ids.slice(start, stop - start), node[start:stop],
                    k0[start:stop]), int(ends[stop - 1]) - done)
            start = stop


def _joined(batches: list[_Batch]) -> _Batch:
    if len(batches) == 1:
        return batches[0]
    return (pa.concat_arrays([b[0] for b in batches]), pa.concat_arrays([b[1] for b in batches]),
            np.concatenate([b[2] for b in batches]), np.concatenate([b[3] for b in batches]))


CANDIDATE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.string()), ("ku0", pa.float64()),
                          ("kuid", pa.string()), ("kv0", pa.float64()), ("kvid", pa.string())])


def _edges_for_partition(files: list[Location], window: int = 64) -> pa.Table:
    """Pass 2: candidate pairs of one partition's buckets.

    Rows are sorted by (kind, key, keep key, node): each bucket is a run of rows, best document
    first. Exact buckets (one normalised-text hash: a clique by definition) give star edges from
    the best copy to the others. Near buckets pair every member with the bucket's best and with the
    next ``window`` members in keep order: all pairs of a bucket of up to ``window + 1`` members (a
    star alone missed pairs whose star edges verification dropped), O(size × window) pairs for a
    huge bucket. Byte copies have exact rows only (:func:`_copy_keys`), so a near bucket holds each
    distinct text once and its window runs over distinct texts. Each pair appears once (smaller node
    first; an exact pair wins over a near one).
    """
    tables = [read_one(f) for f in files]
    if not tables:
        return CANDIDATE_SCHEMA.empty_table()
    t = _shared_keys(pa.concat_tables(tables))
    t = t.sort_by([("kind", "ascending"), ("key", "ascending"), ("k0", "ascending"), ("id", "ascending"),
                   ("node", "ascending")])
    key = t.column("key").to_numpy()
    kind = t.column("kind").to_numpy(zero_copy_only=False)
    node = t.column("node").to_numpy()
    new = np.r_[True, (key[1:] != key[:-1]) | (kind[1:] != kind[:-1])]
    group = np.cumsum(new) - 1
    size = np.bincount(group)[group]
    rows = np.flatnonzero(size > 1)  # singleton buckets (almost all) pair with nothing
    if not len(rows):
        return CANDIDATE_SCHEMA.empty_table()
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
        return CANDIDATE_SCHEMA.empty_table()
    i, j = ij[:, 0], ij[:, 1]
    swap = node[i] > node[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    k0, ids = t.column("k0"), t.column("id")
    ia, ja = pa.array(i), pa.array(j)
    return unique_candidates(pa.table({"u": node[i], "v": node[j], "kind": kind[i], "ku0": k0.take(ia),
                                       "kuid": ids.take(ia), "kv0": k0.take(ja), "kvid": ids.take(ja)},
                                      schema=CANDIDATE_SCHEMA))


def _shared_keys(t: pa.Table) -> pa.Table:
    """The rows of the buckets that can give a pair, in their order.

    Almost every bucket is a singleton (on the Debian corpus 2-3% of the bucket rows share their
    key), and the keep-order sort of :func:`_edges_for_partition` compares the string ids, so
    it is left the few rows that can pair: numpy sorts of the uint64 keys instead (measured on
    the Debian corpus, 8 partitions: the pairs pass went from 1.8 s to 1.0 s of CPU, reads included).
    A bucket pairs when it has rows of two documents (keys of the two kinds apart: they may be
    equal numbers). Whole buckets stay, in their original order, so they sort exactly as before and
    give the same pairs.
    """
    key = t.column("key").to_numpy()
    if len(key) < 2:
        return t
    near = t.column("kind").to_numpy(zero_copy_only=False) == "near"
    node = t.column("node").to_numpy()
    keep = np.zeros(len(key), bool)
    for rows in (np.flatnonzero(~near), np.flatnonzero(near)):
        keep[rows[_several(key[rows], node[rows])]] = True
    return t.filter(pa.array(keep))


def _several(key: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Whether each row's key has rows of at least two distinct ``member`` values."""
    if len(key) < 2:
        return np.zeros(len(key), bool)
    order = np.lexsort((member, key))
    k, m = key[order], member[order]
    first = np.r_[True, k[1:] != k[:-1]]
    distinct = first | np.r_[True, m[1:] != m[:-1]]
    owner = np.cumsum(first) - 1
    out = np.empty(len(key), bool)
    out[order] = np.bincount(owner, distinct)[owner] >= 2
    return out


def unique_candidates(edges: pa.Table) -> pa.Table:
    """Each (u, v) pair once; where one partition found it exact and another near, the exact row."""
    if not edges.num_rows:
        return edges
    u, v = edges.column("u").to_numpy(), edges.column("v").to_numpy()
    is_near = (edges.column("kind").to_numpy(zero_copy_only=False) != "exact").astype(np.int64)
    order = np.lexsort((is_near, v, u))
    u, v = u[order], v[order]
    first = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])]
    return edges.take(pa.array(order[first]))


class PairsJob:
    """Pass 2, one task per bucket partition: candidate pairs. With verification they go to the
    verification passes, shuffled by their first document (:mod:`stages.dedup.verify`); without,
    they are the verified pairs (similarity 1) and go straight to the component passes."""

    def __init__(self, window: int, verify: bool, cc: Location, parts: int):
        self.window, self.verify, self.cc, self.parts = window, verify, cc, parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        edges = _edges_for_partition(task.payload, self.window)
        if self.verify:
            scatter(edges, node_partition(edges.column("u").to_numpy(), self.parts), self.parts, self.cc / "cand_u",
                    task.key)
        else:
            verified = edges.append_column("sim", pa.array(np.ones(edges.num_rows)))
            write_pairs_outputs(_forest(verified), verified, self.parts, self.cc, task.key)
        return {"candidates": edges.num_rows}
