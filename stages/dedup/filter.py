"""Dedup's last pass: each input part joined with its cluster rows (node, reason, ...), duplicates
removed and counted, and the part's share of the clusters table written."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import as_array, iter_batches, read_schema, write_one
from stages.dedup.cluster_passes import CLUSTER_COLUMNS, RESULT_SCHEMA, read_folder


class FilterDuplicatesJob:
    """Last pass: keep a document unless its part's cluster rows remove it.

    The drop set is data: the representatives pass wrote, per input part, one small file per label
    partition (``<result>/<part key>/*.parquet``), so a worker holds the cluster rows of its own part
    only. It writes that part's rows of the clusters table (sorted by cluster, then id: the same
    bytes for any number of partitions or workers). Removal is also counted per ``source`` and per
    ``lang`` (when the rows have those columns), so a source that dedup wipes out shows in the manifest.
    """

    def __init__(self, result_dir: Location, offsets: dict[str, int], clusters_dir: Location):
        self.result_dir, self.offsets, self.clusters_dir = result_dir, offsets, clusters_dir

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        path = task.payload
        base = self.offsets[task.key]
        schema = read_schema(path)
        out.data.schema = schema
        rows = read_folder(self.result_dir / task.key)
        rows = rows if rows is not None else RESULT_SCHEMA.empty_table()
        if rows.num_rows:
            order = [("cluster_id", "ascending"), ("id", "ascending"), ("node", "ascending")]
            write_one(rows.sort_by(order).select(CLUSTER_COLUMNS), self.clusters_dir / f"part-{task.key}.parquet")
        drop = rows.filter(pc.invert(rows.column("kept"))).select(["node", "reason"]).sort_by("node")
        del rows
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
                _count_by_value(per[c], batch.column(c), hit)
            out.data.write(kept)
            n_in += batch.num_rows
            n_out += kept.num_rows
            b_in += batch.nbytes
            b_out += kept.nbytes
        return {"rows_in": n_in, "rows_out": n_out, "bytes_in": b_in, "bytes_out": b_out, "dropped": dict(dropped),
                "by_group": per}


def _count_by_value(counts: dict[str, list[int]], column: pa.ChunkedArray, removed: np.ndarray) -> None:
    """Adds each distinct value's rows and removed rows to ``counts`` (keyed by ``str(value)``, so a
    null counts under "None"), one bincount per batch instead of a Python step per row."""
    codes = pc.dictionary_encode(as_array(column), null_encoding="encode")
    index = codes.indices.to_numpy(zero_copy_only=False)
    values = codes.dictionary.to_pylist()
    rows = np.bincount(index, minlength=len(values)).tolist()
    gone = np.bincount(index, weights=removed, minlength=len(values)).astype(np.int64).tolist()
    for value, n, d in zip(values, rows, gone, strict=True):
        slot = counts.setdefault(str(value), [0, 0])
        slot[0] += n
        slot[1] += d
