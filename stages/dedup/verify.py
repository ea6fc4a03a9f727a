"""Dedup's verification passes: candidate pairs joined with the signatures (or shingle sets) of both
of their documents, without any task reading more than one node partition of the signatures.

Candidate pairs arrive shuffled by their first document ``u`` (``cand_u``), the signature pass's
rows shuffled by node (``_signatures``). Two hash joins, each a pass over node partitions:

1. :class:`AttachFirstJob` (partition of ``u``): pairs found in several bucket partitions are
   merged (an exact pair wins), then each pair moves to the partition of ``v`` together with the
   signature rows of the ``u`` documents that partition needs (each once per partition, not once per
   pair);
2. :class:`VerifyJob` (partition of ``v``): both documents' rows are at hand: the pair's Jaccard
   (true, on the shingle sets, or estimated from the signatures) decides, and the verified pairs
   of the partition go to the component passes as a local forest.

Memory: a task holds one node partition of the signatures (rows / partitions × (4 × num_perm +
4 × distinct shingles) bytes) and one partition of the candidate pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from stages.dedup.cluster_passes import partition_folder, read_folder, read_partition, scatter, write_pairs_outputs
from stages.dedup.components import _forest, node_partition
from stages.dedup.pairs import CANDIDATE_SCHEMA, unique_candidates

# (sorted node ids, one signature row per node, each node's distinct shingles or None)
Signatures = tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]


def signatures_of(table: pa.Table, nodes: np.ndarray) -> Signatures:
    """The rows of ``nodes`` (those present) of a signature table (node, sig[, shingles]), by node."""
    nd = table.column("node").to_numpy()
    keep = np.flatnonzero(np.isin(nd, nodes))
    keep = keep[np.argsort(nd[keep], kind="stable")]
    nd = nd[keep]
    first = np.r_[True, nd[1:] != nd[:-1]] if len(nd) else np.zeros(0, bool)  # a node once
    keep, nd = keep[first], nd[first]
    picked = table.take(pa.array(keep))
    width = picked.schema.field("sig").type.list_size
    flat = picked.column("sig").combine_chunks().flatten().to_numpy().reshape(len(nd), width)
    shingles = None
    if "shingles" in picked.column_names:
        col = picked.column("shingles").combine_chunks()
        offs, values = col.offsets.to_numpy(), col.values.to_numpy()
        shingles = [values[offs[k]:offs[k + 1]] for k in range(len(col))]
    return nd, flat, shingles


def merge_signatures(parts: tuple[Signatures, ...]) -> Signatures:
    parts = tuple(p for p in parts if len(p[0]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.uint32), None
    nodes = np.concatenate([p[0] for p in parts])
    order = np.argsort(nodes, kind="stable")
    shingles = None
    if all(p[2] is not None for p in parts):
        every = [x for p in parts for x in (p[2] or [])]
        shingles = [every[k] for k in order.tolist()]
    return nodes[order], np.concatenate([p[1] for p in parts])[order], shingles


def verify(edges: pa.Table, sigs: Signatures, threshold: float) -> pa.Table:
    """Keep exact edges and near edges whose Jaccard reaches the threshold: the true Jaccard of
    the shingle sets when they were stored, else the signature estimate (vectorised: row gathers
    and one comparison). An edge whose documents have no signature here counts as similarity 1.
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


class AttachFirstJob:
    """Verification, first join (one task per node partition of ``u``)."""

    def __init__(self, cc: Location, signatures: Location, parts: int):
        self.cc, self.signatures, self.parts = cc, signatures, parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        edges = unique_candidates(read_partition(self.cc / "cand_u", part, CANDIDATE_SCHEMA))
        target = node_partition(edges.column("v").to_numpy(), self.parts)
        scatter(edges, target, self.parts, self.cc / "cand_v", task.key)
        near = edges.column("kind").to_numpy(zero_copy_only=False) != "exact"
        u = edges.column("u").to_numpy()[near]
        sig_rows = read_folder(partition_folder(self.signatures, part)) if len(u) else None
        if sig_rows is not None:
            # each (u, target partition) once: a partition receives a document's row once
            pairs = np.unique(np.c_[u, target[near]], axis=0)
            nd = sig_rows.column("node").to_numpy()
            order = np.argsort(nd, kind="stable")
            at = order[np.searchsorted(nd[order], pairs[:, 0])]
            found = nd[at] == pairs[:, 0]
            scatter(sig_rows.take(pa.array(at[found])), pairs[found, 1], self.parts, self.cc / "sig_u", task.key)
        return {"candidates": edges.num_rows}


class VerifyJob:
    """Verification, second join (one task per node partition of ``v``): verified pairs and their
    local forest, written as the component passes' inputs."""

    def __init__(self, cc: Location, signatures: Location, parts: int, verify_at: float):
        self.cc, self.signatures, self.parts, self.verify_at = cc, signatures, parts, verify_at

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        edges = read_partition(self.cc / "cand_v", part, CANDIDATE_SCHEMA)
        near = edges.column("kind").to_numpy(zero_copy_only=False) != "exact"
        sigs = merge_signatures(())
        if near.any():
            u, v = edges.column("u").to_numpy()[near], edges.column("v").to_numpy()[near]
            firsts = read_folder(partition_folder(self.cc / "sig_u", part))
            a = signatures_of(firsts, np.unique(u)) if firsts is not None else merge_signatures(())
            own = read_folder(partition_folder(self.signatures, part))
            b = signatures_of(own, np.setdiff1d(np.unique(v), a[0])) if own is not None else merge_signatures(())
            del firsts, own  # a document can be both a u and a v here: its row is taken once
            sigs = merge_signatures((a, b))
        verified = verify(edges, sigs, self.verify_at)
        del sigs
        write_pairs_outputs(_forest(verified), verified, self.parts, self.cc, task.key)
        return {"verified": verified.num_rows}
