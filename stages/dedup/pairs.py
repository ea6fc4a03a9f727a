"""Dedup's shuffle and pairs passes: band keys hash-partitioned into bucket files by the signature
pass (signatures and shingle sets shuffled by node for the verification passes), then per
partition the pairs inside each bucket (all pairs of small buckets, a window in keep order for big
ones)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import iter_batches, read_one, write_one
from stages.dedup.cluster_passes import scatter, write_pairs_outputs
from stages.dedup.components import _forest, keep_key, node_partition
from stages.dedup.config import DedupConfig
from stages.dedup.signatures import (
    _mix64,
    band_keys,
    batch_shingle_hashes,
    exact_hashes,
    lsh_params,
    minhash_signatures,
    permutations,
)


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
        if sig_rows and cfg.near.verify:  # by node: a verification task reads its own nodes' rows only
            table = pa.concat_tables(sig_rows)
            scatter(table, node_partition(table.column("node").to_numpy(), parts), parts, self.work / "_signatures",
                    task.key)
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
