"""Dedup's cluster resolution as engine passes over Parquet, none holding more than one partition.

The pairs pass leaves three hash-partitioned tables in ``<scratch>/cc`` (``to<p>/`` folders, one
file per writing task): ``graph0`` (each partition's local forest as edges, both directions, at the
partition of their first end), ``nodes`` (node, k0, id) and ``edges`` (u, v, kind, sim) at the
partition of ``u``. Then:

1. *star passes* (:class:`StarJob`): large-star and small-star alternate until a large-star pass
   finds its input graph a forest of stars; its ``labels`` files are then (node -> component's
   smallest node), partitioned by node. The number of rounds is bounded (``max_rounds``) and
   reported; Kiveris et al. prove O(log² n) rounds, a few in practice.
2. *join pass* (:class:`LabelJoinJob`): per node partition, nodes and edges take their component
   label and are written to the partition of the label: a component's members and edges meet.
   Components above ``giant_component_docs`` members stay in their node partitions instead, for
   the giant passes (:mod:`stages.dedup.giant`).
3. *representatives pass* (:class:`RepresentativesJob`): per label partition, each component's
   root by the keep rule and its kept twins (:func:`representatives`); the cluster rows are written
   split by the input part holding each document, with the cluster statistics as the task's result.

The filter pass then reads, for its input part, only that part's rows from every label partition.

Memory: a task holds one partition of the edges (about ``2 × clustered documents / partitions``
rows of 16 bytes in the star passes), the representatives pass one partition of the components;
the driver holds pass results (counts) and file names only. A component resolved here is not split
over tasks (``O(c + its edges)`` memory in one worker for ``c`` documents), so only components of
at most ``giant_component_docs`` members are; bigger ones are split by :mod:`stages.dedup.giant`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import read_one, write_scratch
from stages.dedup.components import large_star, node_partition, representatives, roots_by_key, small_star

_PAIR_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
_NODE_SCHEMA = pa.schema([("node", pa.int64()), ("k0", pa.float64()), ("id", pa.string())])
_EDGE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.string()), ("sim", pa.float64())])
#: the cluster rows the filter pass reads: ``reason`` is empty for kept documents
RESULT_SCHEMA = pa.schema([("node", pa.int64()), ("reason", pa.string()), ("id", pa.string()),
                           ("cluster_id", pa.string()), ("kept", pa.bool_()), ("kept_id", pa.string()),
                           ("linked_by", pa.string()), ("similarity", pa.float64())])
CLUSTER_COLUMNS = ["id", "cluster_id", "kept", "kept_id", "linked_by", "similarity"]


def partition_folder(folder: Location, part: int) -> Location:
    return folder / f"to{part:04d}"


def read_folder(folder: Location) -> pa.Table | None:
    """Every Parquet file of a folder written by several tasks, in name order (a stable row order);
    None when no task wrote one."""
    files = sorted(folder.glob("*.parquet"), key=lambda f: f.name)
    return pa.concat_tables([read_one(f) for f in files]) if files else None


def read_partition(folder: Location, part: int, schema: pa.Schema) -> pa.Table:
    """Every file written to one partition of a shuffled table (``schema``'s empty table if none)."""
    table = read_folder(partition_folder(folder, part))
    return table if table is not None else schema.empty_table()


def scatter(table: pa.Table, by: np.ndarray, parts: int, folder: Location, writer: str) -> None:
    """Shuffle write: the rows of ``table`` whose partition (``by``) is p go to ``folder/to<p>/<writer>``."""
    if not table.num_rows:
        return
    order = np.argsort(by, kind="stable")
    table, by = table.take(pa.array(order)), by[order]
    bounds = np.searchsorted(by, np.arange(parts + 1))
    for p in range(parts):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if hi > lo:
            write_scratch(table.slice(lo, hi - lo), partition_folder(folder, p) / f"{writer}.parquet")


def scatter_both_ways(a: np.ndarray, b: np.ndarray, parts: int, folder: Location, writer: str) -> None:
    """Undirected edges for a large-star pass: each edge at the partitions of both of its ends."""
    src, dst = np.r_[a, b].astype(np.int64), np.r_[b, a].astype(np.int64)
    scatter(pa.table({"src": src, "dst": dst}, schema=_PAIR_SCHEMA), node_partition(src, parts), parts,
            folder, writer)


def write_pairs_outputs(forest: pa.Table, verified: pa.Table, parts: int, cc: Location, writer: str) -> None:
    """The pairs pass's share of the component inputs: its forest (as star edges), nodes and edges."""
    node, root = forest.column("node").to_numpy(), forest.column("root").to_numpy()
    linked = node != root
    scatter_both_ways(node[linked], root[linked], parts, cc / "graph0", writer)
    nodes = forest.select(["node", "k0", "id"]).cast(_NODE_SCHEMA)
    scatter(nodes, node_partition(node, parts), parts, cc / "nodes", writer)
    edges = verified.select(["u", "v", "kind", "sim"]).cast(_EDGE_SCHEMA)
    scatter(edges, node_partition(edges.column("u").to_numpy(), parts), parts, cc / "edges", writer)


class StarJob:
    """One large-star or small-star step over one node partition of the current graph."""

    def __init__(self, kind: str, graph_in: Location, graph_out: Location, labels: Location | None, parts: int):
        self.kind, self.graph_in, self.graph_out, self.labels, self.parts = kind, graph_in, graph_out, labels, parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        t = read_partition(self.graph_in, part, _PAIR_SCHEMA)
        src, dst = t.column("src").to_numpy(), t.column("dst").to_numpy()
        del t
        if self.kind == "large":
            nodes, label, big, small, violations = large_star(src, dst)
            assert self.labels is not None
            write_scratch(pa.table({"node": nodes, "label": label}), self.labels / f"{task.key}.parquet")
            new = pa.table({"src": big, "dst": small}, schema=_PAIR_SCHEMA)
            scatter(new, node_partition(big, self.parts), self.parts, self.graph_out, task.key)
            return {"violations": violations, "nodes": len(nodes), "edges": len(big)}
        big, small = small_star(src, dst)
        scatter_both_ways(big, small, self.parts, self.graph_out, task.key)
        return {"edges": len(big)}


class LabelJoinJob:
    """Per node partition: nodes and edges take their component's label and move to its partition.

    The nodes and edges of giant components (``giant``: their labels, sorted) stay in this node
    partition instead (``giant_nodes``, ``giant_edges``): :mod:`stages.dedup.giant` resolves them
    with passes over node partitions, so no label partition has to hold one whole."""

    def __init__(self, cc: Location, labels: Location, parts: int, giant: np.ndarray | None = None):
        self.cc, self.labels, self.parts = cc, labels, parts
        self.giant = np.zeros(0, np.int64) if giant is None else np.asarray(giant, np.int64)

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        label_file = self.labels / f"{task.key}.parquet"
        labels = read_one(label_file) if label_file.exists() else pa.table({"node": pa.array([], pa.int64()),
                                                                             "label": pa.array([], pa.int64())})
        lnode, lab = labels.column("node").to_numpy(), labels.column("label").to_numpy()  # sorted by node
        nodes = read_partition(self.cc / "nodes", part, _NODE_SCHEMA)
        node = nodes.column("node").to_numpy()
        _, first = np.unique(node, return_index=True)  # a node seen by several pairs partitions, once
        nodes = nodes.take(pa.array(first))
        node_label = lab[np.searchsorted(lnode, nodes.column("node").to_numpy())]
        nodes = nodes.append_column("label", pa.array(node_label))
        edges = read_partition(self.cc / "edges", part, _EDGE_SCHEMA)
        edge_label = lab[np.searchsorted(lnode, edges.column("u").to_numpy())]
        edges = edges.append_column("label", pa.array(edge_label))
        if len(self.giant):  # giant components' rows stay in this node partition
            nodes, node_label = self._set_aside(nodes, node_label, "giant_nodes", task.key)
            edges, edge_label = self._set_aside(edges, edge_label, "giant_edges", task.key)
        scatter(nodes, node_partition(node_label, self.parts), self.parts, self.cc / "comp_nodes", task.key)
        scatter(edges, node_partition(edge_label, self.parts), self.parts, self.cc / "comp_edges", task.key)
        return {"nodes": nodes.num_rows, "edges": edges.num_rows}

    def _set_aside(self, table: pa.Table, label: np.ndarray, folder: str, key: str) -> tuple[pa.Table, np.ndarray]:
        """Write the rows of giant components to ``<cc>/<folder>/<key>``; the other rows and labels."""
        giant = np.isin(label, self.giant)
        if giant.any():
            write_scratch(table.filter(pa.array(giant)), self.cc / folder / f"{key}.parquet")
        return table.filter(pa.array(~giant)), label[~giant]


class RepresentativesJob:
    """Per label partition: roots by the keep rule, kept twins, cluster rows split by input part."""

    def __init__(self, cc: Location, parts: int, offsets: dict[str, int], min_sim: float):
        self.cc, self.parts, self.min_sim = cc, parts, min_sim
        self.keys, self.starts = list(offsets), np.array(list(offsets.values()), np.int64)

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        nodes = read_partition(self.cc / "comp_nodes", part, _NODE_SCHEMA.append(pa.field("label", pa.int64())))
        nodes = nodes.sort_by("node")
        edges = read_partition(self.cc / "comp_edges", part, _EDGE_SCHEMA)
        root = roots_by_key(nodes)
        node = nodes.column("node").to_numpy()
        forest = pa.table({"node": node, "k0": nodes.column("k0"), "id": nodes.column("id"), "root": root})
        del nodes
        result, stats = cluster_rows(forest, edges, self.min_sim)
        where = np.searchsorted(self.starts, node, side="right") - 1  # the input part of each document
        for k in np.unique(where).tolist():
            write_scratch(result.filter(pa.array(where == k)),
                          self.cc / "result" / self.keys[k] / f"{task.key}.parquet")
        return stats


def cluster_rows(forest: pa.Table, edges: pa.Table, min_sim: float) -> tuple[pa.Table, dict[str, Any]]:
    """The cluster rows (``RESULT_SCHEMA``) and statistics of whole components: ``forest`` holds
    (node, k0, id, root) of every member, sorted by node, ``edges`` every verified edge among them."""
    reps = representatives(forest, edges, min_sim)
    nodes, roots, ids = forest.column("node").to_numpy(), forest.column("root").to_numpy(), forest.column("id")
    kept = reps.column("kept").to_numpy(zero_copy_only=False)
    reason = reps.column("reason").to_numpy(zero_copy_only=False)
    kept_node = reps.column("kept_node").to_numpy()
    has_exact = np.zeros(len(nodes), bool)  # a kept document that exact copies were removed for
    has_exact[np.searchsorted(nodes, kept_node[reason == "exact"])] = True
    linked = np.where(kept, np.where(has_exact, "exact", "near"), reason)
    result = pa.table({
        "node": pa.array(nodes, pa.int64()),
        "reason": pa.array([f"{r}_duplicate" if r else "" for r in reason.tolist()], pa.string()),
        "id": ids, "cluster_id": ids.take(pa.array(np.searchsorted(nodes, roots))), "kept": reps.column("kept"),
        "kept_id": ids.take(pa.array(np.searchsorted(nodes, kept_node))),
        "linked_by": pa.array(linked.tolist(), pa.string()), "similarity": reps.column("similarity"),
    }, schema=RESULT_SCHEMA)
    sizes = np.unique(roots, return_counts=True)[1] if len(roots) else np.zeros(0, np.int64)
    hist = Counter(str(s) if s < 10 else ("10-99" if s < 100 else "100+") for s in sizes.tolist())
    stats = {"clusters": len(sizes), "documents_in_clusters": len(nodes), "kept_in_clusters": int(kept.sum()),
             "largest_cluster": int(sizes.max()) if len(sizes) else 0,
             "removed_exact": int((reason == "exact").sum()), "removed_near": int((reason == "near").sum()),
             "cluster_size_histogram": dict(hist)}
    return result, stats
