"""Dedup's last pass: each input part joined with its drop file (node, reason), rows removed and counted."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import iter_batches, read_one, read_schema, write_one


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
