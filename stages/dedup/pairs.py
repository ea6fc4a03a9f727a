"""Dedup's shuffle and pairs passes: band keys hash-partitioned into bucket files by the signature
pass (signatures and shingle sets shuffled by node for the verification passes), then per
partition the pairs inside each bucket (all pairs of small buckets, a window in keep order for big
ones)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import iter_batches, read_one, write_one
from stages.dedup.cluster_passes import scatter, write_pairs_outputs
from stages.dedup.components import _forest, node_partition
from stages.dedup.config import DedupConfig
from stages.dedup.signatures import (
    _mix64,
    band_keys,
    batch_shingles,
    exact_hashes,
    lsh_params,
    minhash_signatures,
    normalises_from_words,
    permutations,
    split_words,
    text_array,
)


def _bucket_path(work: Location, part: int, shard: str) -> Location:
    return work / "_buckets" / f"p{part:04d}" / f"{shard}.parquet"


def _keep_k0(keep: str, text: pa.Array, column: pa.ChunkedArray | None) -> np.ndarray:
    """The first field of :func:`keep_key` for a whole batch (its second is the id), vectorised."""
    if keep in ("longest", "shortest"):
        length = pc.utf8_length(text).to_numpy().astype(np.float64)  # code points, as len(str)
        return -length if keep == "longest" else length
    if keep == "column" and column is not None:
        values = pc.cast(column, pa.float64(), safe=False).fill_null(-np.inf)
        return -np.asarray(values.to_numpy(), dtype=np.float64)
    return np.zeros(len(text), np.float64)


_KINDS = pa.array(["exact", "near"], pa.string())


def _bucket_rows(keyset: list[tuple[np.ndarray, np.ndarray, int]], node: np.ndarray, k0: np.ndarray,
                 ids: pa.ChunkedArray, parts: int) -> pa.Table:
    """One batch's bucket rows (key, kind, node, k0, id) and each row's partition, in keyset order
    then document order: gathered with numpy and ``take`` instead of a table per key kind and partition."""
    key = np.concatenate([k for k, _, _ in keyset])
    idx = np.concatenate([i for _, i, _ in keyset])
    kind = np.concatenate([np.full(len(i), c, np.int8) for _, i, c in keyset])
    return pa.table({"key": key, "kind": _KINDS.take(pa.array(kind)), "node": node[idx], "k0": k0[idx],
                     "id": ids.take(pa.array(idx)), "part": (key % np.uint64(parts)).astype(np.int64)})


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
        base = self.offsets[task.key]
        buckets: list[pa.Table] = []
        sig_rows: list[pa.Table] = []
        n = 0
        cols = ["id", "text"] + ([cfg.keep_column] if cfg.keep_column else [])
        # the batch's words once, for the exact hashes and the word shingles alike
        split = (cfg.exact.enabled and normalises_from_words(cfg.exact.normalise)) or \
            (cfg.near.enabled and cfg.near.shingle.kind == "word")
        for batch in iter_batches(path, 2048, columns=cols):
            text = text_array(batch.column("text"))
            ids = batch.column("id")
            node = np.arange(base + n, base + n + len(text), dtype=np.int64)
            n += len(text)
            k0 = _keep_k0(cfg.keep, text, batch.column(cfg.keep_column) if cfg.keep_column else None)
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
                buckets.append(_bucket_rows(keyset, node, k0, ids, cfg.partitions))
        if buckets:
            # rows grouped by partition, in batch, key kind and document order within each
            t = pa.concat_tables(buckets)
            part = t.column("part").to_numpy()
            order = np.argsort(part, kind="stable")
            t = t.drop_columns(["part"]).take(pa.array(order))
            bounds = np.searchsorted(part[order], np.arange(cfg.partitions + 1))
            for p in range(cfg.partitions):
                if bounds[p + 1] > bounds[p]:
                    write_one(t.slice(bounds[p], bounds[p + 1] - bounds[p]), _bucket_path(self.work, p, task.key),
                              use_dictionary=["kind", "id"])
        if sig_rows and cfg.near.verify:  # by node: a verification task reads its own nodes' rows only
            table = pa.concat_tables(sig_rows)
            scatter(table, node_partition(table.column("node").to_numpy(), cfg.partitions), cfg.partitions,
                    self.work / "_signatures", task.key)
        return {"docs": n, "stats": {}}


CANDIDATE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.string()), ("ku0", pa.float64()),
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
        return CANDIDATE_SCHEMA.empty_table()
    t = _shared_keys(pa.concat_tables(tables))
    t = t.sort_by([("kind", "ascending"), ("key", "ascending"), ("k0", "ascending"), ("id", "ascending")])
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
    """The rows whose bucket key occurs more than once, in their order: the only rows that pair.

    Almost every bucket is a singleton (on the Debian corpus 2-3% of the bucket rows share their
    key), and the keep-order sort of :func:`_edges_for_partition` compares the string ids, so
    it is left the few rows that can pair: one numpy sort of the uint64 keys instead (measured on
    the Debian corpus, 8 partitions: the pairs pass went from 1.8 s to 1.0 s of CPU, reads included). The key
    alone, not (kind, key): an exact and a near key of equal value keep a few rows too many, which
    pair with nothing. Every row of a bucket with two members or more stays, in its original order,
    so the buckets sort exactly as before and give the same pairs.
    """
    key = t.column("key").to_numpy()
    if len(key) < 2:
        return t
    order = np.argsort(key, kind="stable")
    sk = key[order]
    dup = np.r_[sk[1:] == sk[:-1], False] | np.r_[False, sk[1:] == sk[:-1]]
    keep = np.zeros(len(key), bool)
    keep[order[dup]] = True
    return t.filter(pa.array(keep))


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
