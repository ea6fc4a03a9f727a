"""Giant components: the kept twins of a component too big for one task, with bounded memory.

:class:`~stages.dedup.cluster_passes.RepresentativesJob` resolves a component in one task (its nodes
and edges in memory: fast, and fine for the clusters of ordinary corpora). A web crawl's
boilerplate component can hold 10^7-10^8 documents, so components with more than
``giant_component_docs`` members take this path instead, which gives the same cluster rows as
:func:`~stages.dedup.components.representatives` (tests compare the two byte for byte) with every
task bounded by one partition, except one sequential task that holds a bitmap of N/8 bytes.

Why it works: the greedy rule of ``representatives`` visits the component's exact-group heads in
keep order, and a head's fate depends only on the fate of heads *earlier* in keep order. So if
every near edge between heads is oriented (lo = earlier, hi = later) and all edges are sorted by
(hi key, -sim, lo key), one sequential scan decides every head: the first edge of ``hi`` whose
``lo`` is still kept removes ``hi`` (its twin is that ``lo``); a head with no such edge is kept.
The scan needs only the "removed" bit of every head seen so far: a bitmap indexed by node number.
Edges only join nodes of one component, so one scan over all giant components at once (in the
global keep order) decides each of them exactly as a per-component scan would.

Passes (each through ``ctx.run_pass``: resume markers, progress, retries; ``P`` node partitions):

1. ``giant-sizes`` (node partition): members per component label in the partition, scattered to
   the label's partition; ``giant-labels`` (label partition) sums them and returns the labels of
   the components above the threshold (at most ``N / giant_component_docs`` of them, so the driver
   holds the list). Neither runs when fewer documents than the threshold are in clusters at all,
   and the second not when the partitions' largest counts cannot add up to a giant component.
2. ``label-join`` (:class:`~stages.dedup.cluster_passes.LabelJoinJob`) leaves a giant component's
   nodes and edges in their node partition (``giant_nodes``, ``giant_edges``) instead of moving
   them to the label's partition.
3. ``giant-exact-u``, ``giant-exact-v``: the keys of both ends of each exact edge by two hash
   joins (as in :mod:`stages.dedup.verify`); the worse copy's head is the better copy (exact
   buckets give stars from the bucket's best copy).
4. ``giant-heads`` (node partition): each node's exact-group head, the head's keep key and
   whether the head has copies; each partition holding copies of a head asks the head's partition
   for its decision (once per head and partition); near edges with ``sim >= min_sim`` get their
   first end's head; a bounded sample of the heads' keys comes back to the driver (the range
   splitters), each component's best node here goes to the label's partition, where
   ``giant-roots`` keeps the best (the cluster ids: one per giant component at the driver).
5. ``giant-range`` (partition of the second end): the second end's head; edges between distinct
   heads are oriented by keep key and range-partitioned by the later end's key (an
   order-preserving binary encoding of (k0, id, node): ``keep: first`` makes k0 constant).
6. ``giant-greedy`` (one task): the range partitions in order, each sorted by (hi key, -sim, lo
   key), through the greedy rule; removed heads (with their twin) go to their node partition, and
   a kept twin that takes over a removed head's copies is flagged (its ``linked_by`` is ``exact``).
7. ``giant-heads-rows`` (node partition): the heads' cluster rows (``RESULT_SCHEMA``, split by
   input part like the representatives pass's rows) and the answers to the copies' requests;
   ``giant-copies-rows`` (node partition): the exact copies' rows. Their counts and the sizes
   found in step 1 give the same cluster statistics as :func:`~stages.dedup.cluster_passes.cluster_rows`.

Exact heads follow ``representatives``: a copy's head is the better end (by keep key) of its exact
edge, which the pairs pass draws from the exact bucket's best copy; if a tie of (k0, id) left a
copy several exact edges, the best head is taken (``representatives`` takes the last edge).

Memory: every task but one holds one partition of the giant nodes or edges (or one key range of
the oriented edges), never a whole component or exact group; ``giant-greedy`` holds a bitmap of
``N / 8`` bytes (125 MB for 10^9 documents), one range partition of edges and a bounded output
buffer, and its time is linear in the giant components' edges (a Python loop over the edges
between heads, as in ``representatives``). The driver holds the giant labels with their sizes and
roots (at most ``N / giant_component_docs``) and the splitters (``SAMPLES_PER_PARTITION`` keys per
partition). As in the star passes, the edges a task reads are partitioned by one end, so a
document with very many verified pairs (the best member of a huge LSH bucket) weighs on its
partition.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.context import StageContext
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import read_one, write_scratch
from stages.dedup.cluster_passes import RESULT_SCHEMA, read_partition, scatter
from stages.dedup.components import node_partition

_LABEL_NODE_SCHEMA = pa.schema([("node", pa.int64()), ("k0", pa.float64()), ("id", pa.string()),
                                ("label", pa.int64())])
_EDGE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("kind", pa.string()), ("sim", pa.float64()),
                          ("label", pa.int64())])
_SIZE_SCHEMA = pa.schema([("label", pa.int64()), ("count", pa.int64())])
_EXACT_U_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("uk0", pa.float64()), ("uid", pa.string())])
_HEAD_SCHEMA = pa.schema([("node", pa.int64()), ("head", pa.int64()), ("hk0", pa.float64()), ("hid", pa.string())])
_FLAG_SCHEMA = pa.schema([("node", pa.int64())])
#: giant nodes with their exact-group head: ``hmem`` is true when the head has exact copies
_GNODE_SCHEMA = pa.schema([("node", pa.int64()), ("k0", pa.float64()), ("id", pa.string()), ("label", pa.int64()),
                           ("head", pa.int64()), ("hk0", pa.float64()), ("hid", pa.string()), ("hmem", pa.bool_())])
#: a partition that holds exact copies of ``head`` asks for its decision (once per head and partition)
_WANT_SCHEMA = pa.schema([("head", pa.int64()), ("target", pa.int64())])
#: the decision for a head's exact copies: the document kept for them and its similarity to the head
_ANSWER_SCHEMA = pa.schema([("head", pa.int64()), ("kept_id", pa.string()), ("sim", pa.float64())])
#: a component's best node in one partition (``key``: its encoded keep key)
_ROOT_SCHEMA = pa.schema([("label", pa.int64()), ("key", pa.binary()), ("id", pa.string())])
#: a near edge on its way to its second end ``v``, its first end replaced by that end's head
_NEAR_V_SCHEMA = pa.schema([("hu", pa.int64()), ("huk0", pa.float64()), ("huid", pa.string()), ("humem", pa.bool_()),
                            ("v", pa.int64()), ("sim", pa.float64())])
#: an oriented edge between heads in its range partition: ``hk``/``lk`` are the ends' encoded keys
_RANGE_SCHEMA = pa.schema([("hi", pa.int64()), ("hk", pa.binary()), ("hmem", pa.bool_()), ("lo", pa.int64()),
                           ("lk", pa.binary()), ("lid", pa.string()), ("sim", pa.float64())])
#: a head the greedy scan removed: its kept twin, the twin's id and their similarity
_REMOVED_SCHEMA = pa.schema([("node", pa.int64()), ("twin", pa.int64()), ("twin_id", pa.string()),
                             ("sim", pa.float64())])

#: keys each ``giant-heads`` task samples for the range splitters (32 per partition: ranges of
#: roughly equal numbers of heads, as in sample sort)
SAMPLES_PER_PARTITION = 32
#: removed rows the greedy task buffers before writing them out (bounds its output memory)
FLUSH_ROWS = 1 << 18


# ------------------------------------------------------------------------------------ keep keys


def encode_keys(k0: np.ndarray, ids: pa.Array | pa.ChunkedArray, nodes: np.ndarray) -> pa.Array:
    """Binary keys whose byte order (memcmp, as Python ``bytes`` and Arrow compare) is the keep order
    (k0, id, node) of :func:`~stages.dedup.components.representatives`.

    k0 as the usual order-preserving transform of an IEEE double (sign bit flipped for positives,
    all bits for negatives), big-endian; ``-0.0`` folded to ``0.0`` and every NaN to one NaN after
    ``+inf``, as Arrow's sort compares them; the id's bytes with NUL escaped (``00`` -> ``00 FF``)
    and closed by ``00 00``, so a shorter id sorts before its extensions whatever follows; the node
    as 8 big-endian bytes. One key, so ``keep: first`` (constant k0) still orders by id.
    """
    n = len(nodes)
    if not n:
        return pa.array([], pa.binary())
    k = np.asarray(k0, np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    k[np.isnan(k)] = np.nan
    bits = k.view(np.uint64)
    neg = (bits >> np.uint64(63)).astype(bool)
    enc = np.where(neg, ~bits, bits | np.uint64(1 << 63))
    head = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), n, [None, pa.py_buffer(enc.astype(">u8").tobytes())])
    tail = np.empty((n, 10), np.uint8)
    tail[:, :2] = 0
    tail[:, 2:] = np.asarray(nodes, np.int64).astype(">u8").view(np.uint8).reshape(n, 8)
    tail_arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(10), n, [None, pa.py_buffer(tail.tobytes())])
    idb = pc.replace_substring(pc.cast(ids, pa.binary()), b"\x00", b"\x00\xff")
    if isinstance(idb, pa.ChunkedArray):
        idb = idb.combine_chunks()
    return pc.binary_join_element_wise(head.cast(pa.binary()), idb, tail_arr.cast(pa.binary()),
                                       pa.scalar(b"", pa.binary()))


def _lookup(sorted_nodes: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Row index of each of ``nodes`` in ``sorted_nodes`` (all present)."""
    at = np.searchsorted(sorted_nodes, nodes)
    if len(nodes) and not ((at < len(sorted_nodes)).all() and (sorted_nodes[np.minimum(at, len(sorted_nodes) - 1)]
                                                                == nodes).all()):
        raise RuntimeError("dedup giant components: a node is missing from its partition's table")
    return at


def _read_own(folder: Location, key: str, schema: pa.Schema) -> pa.Table:
    """The file a task of this partition wrote locally (no shuffle), or the empty table."""
    f = folder / f"{key}.parquet"
    return read_one(f) if f.exists() else schema.empty_table()


# ------------------------------------------------------------------------------------ sizes


class SizesJob:
    """Per node partition: members per component label, sent to the label's partition."""

    def __init__(self, labels: Location, cc: Location, parts: int):
        self.labels, self.cc, self.parts = labels, cc, parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        f = self.labels / f"{task.key}.parquet"
        if not f.exists():
            return {"max": 0}
        lab, count = np.unique(read_one(f, columns=["label"]).column("label").to_numpy(), return_counts=True)
        scatter(pa.table({"label": lab, "count": count}, schema=_SIZE_SCHEMA), node_partition(lab, self.parts),
                self.parts, self.cc / "g_sizes", task.key)
        return {"max": int(count.max()) if len(count) else 0}


class GiantLabelsJob:
    """Per label partition: the labels (with sizes) of components above the threshold."""

    def __init__(self, cc: Location, threshold: int):
        self.cc, self.threshold = cc, threshold

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        t = read_partition(self.cc / "g_sizes", int(task.payload), _SIZE_SCHEMA)
        lab, inv = np.unique(t.column("label").to_numpy(), return_inverse=True)
        size = np.bincount(inv, t.column("count").to_numpy(), minlength=len(lab)).astype(np.int64)
        big = size > self.threshold
        return {"giant": np.c_[lab[big], size[big]].tolist()}


def giant_labels(ctx: StageContext, cc: Location, labels: Location, part_tasks: list[ShardTask],
                 threshold: int, clustered: int) -> dict[int, int]:
    """The components with more than ``threshold`` members: label -> size (at most N / threshold).
    No pass at all when the ``clustered`` documents are too few to make one (ordinary corpora)."""
    if clustered <= threshold:
        return {}
    parts = len(part_tasks)
    maxima = ctx.run_pass("giant-sizes", SizesJob(labels, cc, parts), part_tasks)
    if sum(r["max"] for r in maxima) <= threshold:  # no label can add up to more
        (cc / "g_sizes").rmtree()
        return {}
    found = ctx.run_pass("giant-labels", GiantLabelsJob(cc, threshold), part_tasks)
    (cc / "g_sizes").rmtree()
    return {int(lab): int(size) for r in found for lab, size in r["giant"]}


# ------------------------------------------------------------------------------------ exact heads


class ExactFirstJob:
    """Per node partition of ``u``: exact edges of giant components take ``u``'s key, move to ``v``."""

    def __init__(self, cc: Location, parts: int):
        self.cc, self.parts = cc, parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        edges = _read_own(self.cc / "giant_edges", task.key, _EDGE_SCHEMA)
        edges = edges.filter(pc.equal(edges.column("kind"), "exact"))
        if not edges.num_rows:
            return {"exact": 0}
        nodes = _read_own(self.cc / "giant_nodes", task.key, _LABEL_NODE_SCHEMA).sort_by("node")
        u = edges.column("u").to_numpy()
        at = pa.array(_lookup(nodes.column("node").to_numpy(), u))
        t = pa.table({"u": u, "v": edges.column("v"), "uk0": nodes.column("k0").take(at),
                      "uid": nodes.column("id").take(at)}, schema=_EXACT_U_SCHEMA)
        scatter(t, node_partition(t.column("v").to_numpy(), self.parts), self.parts, self.cc / "g_exact_v", task.key)
        return {"exact": t.num_rows}


class ExactSecondJob:
    """Per node partition of ``v``: each exact edge's worse copy (by keep key) is sent its head,
    the better copy (with the head's key); the head is told it has copies."""

    def __init__(self, cc: Location, parts: int):
        self.cc, self.parts = cc, parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        t = read_partition(self.cc / "g_exact_v", int(task.payload), _EXACT_U_SCHEMA)
        if not t.num_rows:
            return {"members": 0}
        nodes = _read_own(self.cc / "giant_nodes", task.key, _LABEL_NODE_SCHEMA).sort_by("node")
        u, v = t.column("u").to_numpy(), t.column("v").to_numpy()
        at = pa.array(_lookup(nodes.column("node").to_numpy(), v))
        vk0, vid = nodes.column("k0").take(at), nodes.column("id").take(at)
        ku = encode_keys(t.column("uk0").to_numpy(), t.column("uid"), u)
        kv = encode_keys(vk0.to_numpy(), vid, v)
        u_best = pc.less(ku, kv).to_numpy(zero_copy_only=False)
        member, head = np.where(u_best, v, u), np.where(u_best, u, v)
        heads = pa.table({"node": member, "head": head,
                          "hk0": pc.if_else(pa.array(u_best), t.column("uk0"), vk0),
                          "hid": pc.if_else(pa.array(u_best), t.column("uid"), vid)}, schema=_HEAD_SCHEMA)
        scatter(heads, node_partition(member, self.parts), self.parts, self.cc / "g_head", task.key)
        flags = np.unique(head)
        scatter(pa.table({"node": flags}, schema=_FLAG_SCHEMA), node_partition(flags, self.parts), self.parts,
                self.cc / "g_hasmem", task.key)
        return {"members": len(member)}


# ------------------------------------------------------------------------------------ heads


class HeadsJob:
    """Per node partition: each giant node's head (written beside the node, ``g_nodes``), one
    request per head of the partition's exact copies to the head's partition, near edges' first
    ends mapped to their heads and sent to the second end's partition, each component's best node
    here sent to the label's partition; returns a sample of the heads' keys (range splitters)."""

    def __init__(self, cc: Location, parts: int, min_sim: float):
        self.cc, self.parts, self.min_sim = cc, parts, min_sim

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        nodes = _read_own(self.cc / "giant_nodes", task.key, _LABEL_NODE_SCHEMA).sort_by("node")
        if not nodes.num_rows:
            return {"sample": [], "nodes": 0, "near": 0}
        node = nodes.column("node").to_numpy()
        n = len(node)
        # each node's head: itself, or the better copy of its exact edge (the best such one if a tie
        # in the exact bucket's order left it several; never with distinct ids)
        heads = read_partition(self.cc / "g_head", part, _HEAD_SCHEMA)
        head, hk0, hid = node.copy(), nodes.column("k0"), nodes.column("id")
        is_member = np.zeros(n, bool)
        if heads.num_rows:
            hkey = encode_keys(heads.column("hk0").to_numpy(), heads.column("hid"), heads.column("head").to_numpy())
            heads = heads.append_column("hkey", hkey).sort_by([("node", "ascending"), ("hkey", "ascending")])
            hn = heads.column("node").to_numpy()
            first = np.r_[True, hn[1:] != hn[:-1]]
            heads = heads.filter(pa.array(first))
            at = _lookup(node, heads.column("node").to_numpy())
            is_member[at] = True
            head[at] = heads.column("head").to_numpy()
            pos = np.full(n, -1, np.int64)
            pos[at] = np.arange(len(at))
            take = pa.array(np.maximum(pos, 0))
            hk0 = pc.if_else(pa.array(is_member), heads.column("hk0").take(take), hk0)
            hid = pc.if_else(pa.array(is_member), heads.column("hid").take(take), hid)
        flags = read_partition(self.cc / "g_hasmem", part, _FLAG_SCHEMA).column("node").to_numpy()
        hmem = is_member | np.isin(node, flags)
        table = pa.table({"node": node, "k0": nodes.column("k0"), "id": nodes.column("id"),
                          "label": nodes.column("label"), "head": head, "hk0": hk0, "hid": hid, "hmem": hmem},
                         schema=_GNODE_SCHEMA)
        write_scratch(table, self.cc / "g_nodes" / f"{task.key}.parquet")
        # each partition holding copies of a head asks for its decision once (a head with 10^7
        # copies gets at most one request per partition, not one per copy)
        want = np.unique(head[is_member])
        scatter(pa.table({"head": want, "target": np.full(len(want), part, np.int64)}, schema=_WANT_SCHEMA),
                node_partition(want, self.parts), self.parts, self.cc / "g_want", task.key)
        # near edges between different documents of the same component, first end -> its head
        edges = _read_own(self.cc / "giant_edges", task.key, _EDGE_SCHEMA)
        keep = pc.and_(pc.not_equal(edges.column("kind"), "exact"), pc.greater_equal(edges.column("sim"), self.min_sim))
        edges = edges.filter(keep)
        at = pa.array(_lookup(node, edges.column("u").to_numpy()))
        near = pa.table({"hu": pa.array(head).take(at), "huk0": hk0.take(at), "huid": hid.take(at),
                         "humem": pa.array(hmem).take(at), "v": edges.column("v"), "sim": edges.column("sim")},
                        schema=_NEAR_V_SCHEMA)
        scatter(near, node_partition(edges.column("v").to_numpy(), self.parts), self.parts, self.cc / "g_near_v",
                task.key)
        # the heads' keys, a bounded evenly spaced sample (range splitters); each component's best
        # node here, sent to the label's partition (the roots: one per component at the driver)
        own = np.flatnonzero(~is_member)
        keys = encode_keys(nodes.column("k0").to_numpy()[own], nodes.column("id").take(pa.array(own)), node[own])
        keys = pc.take(keys, pc.sort_indices(keys))
        step = max(1, len(keys) // SAMPLES_PER_PARTITION)
        sample = [keys[i].as_py().hex() for i in range(step // 2, len(keys), step)][:SAMPLES_PER_PARTITION]
        every = pa.table({"label": nodes.column("label"), "key": encode_keys(nodes.column("k0").to_numpy(),
                                                                            nodes.column("id"), node),
                          "id": nodes.column("id")}, schema=_ROOT_SCHEMA)
        best = _best_per_label(every)
        scatter(best, node_partition(best.column("label").to_numpy(), self.parts), self.parts, self.cc / "g_roots",
                task.key)
        return {"sample": sample, "nodes": n, "near": near.num_rows}


def _best_per_label(rows: pa.Table) -> pa.Table:
    """The row of smallest key of each label (``_ROOT_SCHEMA`` rows), by label."""
    rows = rows.sort_by([("label", "ascending"), ("key", "ascending")])
    lab = rows.column("label").to_numpy()
    return rows.filter(pa.array(np.r_[True, lab[1:] != lab[:-1]] if len(lab) else np.zeros(0, bool)))


class RootsJob:
    """Per label partition: each giant component's root (best node by the keep rule): its id."""

    def __init__(self, cc: Location):
        self.cc = cc

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        best = _best_per_label(read_partition(self.cc / "g_roots", int(task.payload), _ROOT_SCHEMA))
        return {"roots": [[lb, i] for lb, i in zip(best.column("label").to_pylist(), best.column("id").to_pylist(),
                                                     strict=True)]}


def splitters_from(samples: list[str], ranges: int) -> list[bytes]:
    """``ranges - 1`` (or fewer, distinct) splitters at even quantiles of the sampled keys."""
    keys = sorted(bytes.fromhex(s) for s in samples)
    if not keys or ranges <= 1:
        return []
    picked = [keys[(i * len(keys)) // ranges] for i in range(1, ranges)]
    return sorted(set(picked))


# ------------------------------------------------------------------------------------ ranges


class RangeJob:
    """Per node partition of ``v``: second ends mapped to heads; edges between distinct heads,
    oriented by keep key, go to the range partition of their later end's key."""

    def __init__(self, cc: Location, parts: int, splitters: list[bytes]):
        self.cc, self.parts, self.splitters = cc, parts, splitters

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        near = read_partition(self.cc / "g_near_v", int(task.payload), _NEAR_V_SCHEMA)
        if not near.num_rows:
            return {"edges": 0}
        nodes = _read_own(self.cc / "g_nodes", task.key, _GNODE_SCHEMA)  # sorted by node
        at = pa.array(_lookup(nodes.column("node").to_numpy(), near.column("v").to_numpy()))
        hv = nodes.column("head").to_numpy()[at.to_numpy()]
        hu = near.column("hu").to_numpy()
        differ = pa.array(hu != hv)
        near, at, hu, hv = near.filter(differ), at.filter(differ), hu[hu != hv], hv[hu != hv]
        if not near.num_rows:
            return {"edges": 0}
        hvk0, hvid, hvmem = (nodes.column(c).take(at) for c in ("hk0", "hid", "hmem"))
        ku = encode_keys(near.column("huk0").to_numpy(), near.column("huid"), hu)
        kv = encode_keys(hvk0.to_numpy(), hvid, hv)
        u_first = pc.less(ku, kv)
        uf = u_first.to_numpy(zero_copy_only=False)
        t = pa.table({"hi": np.where(uf, hv, hu), "hk": pc.if_else(u_first, kv, ku),
                      "hmem": pc.if_else(u_first, hvmem, near.column("humem")), "lo": np.where(uf, hu, hv),
                      "lk": pc.if_else(u_first, ku, kv), "lid": pc.if_else(u_first, near.column("huid"), hvid),
                      "sim": near.column("sim")}, schema=_RANGE_SCHEMA)
        hk = np.array(t.column("hk").to_pylist(), dtype=object)
        split = np.array(self.splitters, dtype=object)
        where = np.searchsorted(split, hk, side="right") if len(split) else np.zeros(len(hk), np.int64)
        scatter(t, where.astype(np.int64), len(self.splitters) + 1, self.cc / "g_range", task.key)
        return {"edges": t.num_rows}


# ------------------------------------------------------------------------------------ greedy


def greedy_scan(hi: np.ndarray, lo: np.ndarray, removed: bytearray) -> np.ndarray:
    """The greedy rule over edges sorted by (hi key, -sim, lo key): the index of the edge that
    removes each removed ``hi`` (its twin is that edge's ``lo``). ``removed`` is the bitmap of
    removed heads by node number, updated in place; a ``lo`` precedes its ``hi`` in keep order, so
    its bit is final when its edges are read (all of its own edges as ``hi`` sort before)."""
    out: list[int] = []
    last = -1
    for k, (x, c) in enumerate(zip(hi.tolist(), lo.tolist(), strict=True)):
        if x == last:  # x is decided: removed by an earlier edge
            continue
        if not removed[c >> 3] >> (c & 7) & 1:
            removed[x >> 3] |= 1 << (x & 7)
            out.append(k)
            last = x
    return np.array(out, np.int64)


class GreedyJob:
    """One task: the range partitions in order through :func:`greedy_scan`; removed heads (with
    their twin) are written to their node partition, and each kept twin that takes over exact
    copies of a removed head is flagged (its ``linked_by`` is then ``exact``)."""

    def __init__(self, cc: Location, parts: int, ranges: int, rows: int):
        self.cc, self.parts, self.ranges, self.rows = cc, parts, ranges, rows

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        removed = bytearray(self.rows // 8 + 1)  # one bit per document of the corpus
        buffer: list[pa.Table] = []
        buffered = chunks = total = 0

        def flush() -> None:
            nonlocal buffer, buffered, chunks
            if not buffer:
                return
            t = pa.concat_tables(buffer)
            writer = f"c{chunks:06d}"
            scatter(t.select(["node", "twin", "twin_id", "sim"]), node_partition(t.column("node").to_numpy(),
                    self.parts), self.parts, self.cc / "g_removed", writer)
            flagged = np.unique(t.filter(t.column("hmem")).column("twin").to_numpy())
            scatter(pa.table({"node": flagged}, schema=_FLAG_SCHEMA), node_partition(flagged, self.parts),
                    self.parts, self.cc / "g_exactfor", writer)
            buffer, buffered, chunks = [], 0, chunks + 1

        for r in range(self.ranges):
            t = read_partition(self.cc / "g_range", r, _RANGE_SCHEMA)
            if not t.num_rows:
                continue
            t = t.sort_by([("hk", "ascending"), ("sim", "descending"), ("lk", "ascending")])
            pick = t.take(pa.array(greedy_scan(t.column("hi").to_numpy(), t.column("lo").to_numpy(), removed)))
            del t
            buffer.append(pa.table({"node": pick.column("hi"), "twin": pick.column("lo"), "twin_id": pick.column("lid"),
                                    "sim": pick.column("sim"), "hmem": pick.column("hmem")}))
            buffered += pick.num_rows
            total += pick.num_rows
            if buffered >= FLUSH_ROWS:
                flush()
        flush()
        return {"removed": total}


# ------------------------------------------------------------------------------------ rows


class _RowsBase:
    """Cluster rows written split by the input part holding each document, as the representatives pass does."""

    def __init__(self, cc: Location, offsets: dict[str, int], roots: dict[int, str], parts: int):
        self.cc, self.roots, self.parts = cc, roots, parts
        self.keys, self.starts = list(offsets), np.array(list(offsets.values()), np.int64)

    def setup(self) -> None:
        return None

    def _cluster_ids(self, labels: np.ndarray) -> pa.Array:
        return pa.array([self.roots[lb] for lb in labels.tolist()], pa.string())

    def _write(self, result: pa.Table, name: str) -> None:
        every = result.column("node").to_numpy()
        where = np.searchsorted(self.starts, every, side="right") - 1  # the input part of each document
        for k in np.unique(where).tolist():
            write_scratch(result.filter(pa.array(where == k)), self.cc / "result" / self.keys[k] / f"{name}.parquet")


class HeadRowsJob(_RowsBase):
    """Per node partition: the cluster rows of its giant heads (kept, or removed with their twin),
    and the decision for their exact copies sent to each partition that asked for it."""

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        nodes = _read_own(self.cc / "g_nodes", task.key, _GNODE_SCHEMA)
        heads = nodes.filter(pc.equal(nodes.column("node"), nodes.column("head")))
        del nodes
        node = heads.column("node").to_numpy()
        removed = read_partition(self.cc / "g_removed", part, _REMOVED_SCHEMA).sort_by("node")
        flagged = read_partition(self.cc / "g_exactfor", part, _FLAG_SCHEMA).column("node").to_numpy()
        gone = np.zeros(len(node), bool)
        at = _lookup(node, removed.column("node").to_numpy())
        gone[at] = True
        pos = np.zeros(len(node), np.int64)
        pos[at] = np.arange(len(at))
        ids = heads.column("id")
        twin_id = pc.if_else(pa.array(gone), removed.column("twin_id").take(pa.array(pos)), ids) if len(at) else ids
        twin_sim = np.where(gone, removed.column("sim").to_numpy()[pos], 1.0) if len(at) else np.ones(len(node))
        # a kept document is linked by "exact" when exact copies were removed for it: its own, or
        # those of a head it removed (the greedy scan flagged it)
        has_exact = heads.column("hmem").to_numpy(zero_copy_only=False) | np.isin(node, flagged)
        rows = pa.table({
            "node": node, "reason": np.where(gone, "near_duplicate", "").tolist(), "id": ids,
            "cluster_id": self._cluster_ids(heads.column("label").to_numpy()), "kept": ~gone, "kept_id": twin_id,
            "linked_by": np.where(gone | ~has_exact, "near", "exact").tolist(), "similarity": twin_sim},
            schema=RESULT_SCHEMA)
        self._write(rows, f"g{task.key}")
        want = read_partition(self.cc / "g_want", part, _WANT_SCHEMA)
        h = pa.array(_lookup(node, want.column("head").to_numpy()))
        answer = pa.table({"head": want.column("head"), "kept_id": twin_id.take(h), "sim": pa.array(twin_sim).take(h)},
                          schema=_ANSWER_SCHEMA)
        target = want.column("target").to_numpy()
        scatter(answer, target, self.parts, self.cc / "g_answer", task.key)
        return {"documents": len(node), "kept": int((~gone).sum()), "removed_near": int(gone.sum()),
                "removed_exact": 0}


class MemberRowsJob(_RowsBase):
    """Per node partition: the cluster rows of its exact copies in giant components, removed for
    their head's kept document (the head itself, or its twin when the head was removed)."""

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        part = int(task.payload)
        nodes = _read_own(self.cc / "g_nodes", task.key, _GNODE_SCHEMA)
        members = nodes.filter(pc.not_equal(nodes.column("node"), nodes.column("head")))
        del nodes
        answer = read_partition(self.cc / "g_answer", part, _ANSWER_SCHEMA).sort_by("head")
        h = pa.array(_lookup(answer.column("head").to_numpy(), members.column("head").to_numpy()))
        n = members.num_rows
        rows = pa.table({
            "node": members.column("node"), "reason": ["exact_duplicate"] * n, "id": members.column("id"),
            "cluster_id": self._cluster_ids(members.column("label").to_numpy()), "kept": np.zeros(n, bool),
            "kept_id": answer.column("kept_id").take(h), "linked_by": ["exact"] * n,
            "similarity": answer.column("sim").take(h)}, schema=RESULT_SCHEMA)
        self._write(rows, f"m{task.key}")
        return {"documents": n, "kept": 0, "removed_near": 0, "removed_exact": n}


# ------------------------------------------------------------------------------------ driver


def resolve_giants(ctx: StageContext, cc: Location, sizes: dict[int, int], part_tasks: list[ShardTask],
                   offsets: dict[str, int], rows: int, min_sim: float) -> dict[str, Any]:
    """The giant path's passes (see the module docstring); the cluster statistics of the giant
    components in the shape of a representatives task's result (so the stage sums them alike)."""
    parts = len(part_tasks)
    ctx.run_pass("giant-exact-u", ExactFirstJob(cc, parts), part_tasks)
    ctx.run_pass("giant-exact-v", ExactSecondJob(cc, parts), part_tasks)
    done = ctx.run_pass("giant-heads", HeadsJob(cc, parts, min_sim), part_tasks)
    found = ctx.run_pass("giant-roots", RootsJob(cc), part_tasks)
    roots = {int(lb): doc_id for r in found for lb, doc_id in r["roots"]}
    splitters = splitters_from([s for r in done for s in r["sample"]], parts)
    ctx.run_pass("giant-range", RangeJob(cc, parts, splitters), part_tasks)
    ctx.run_pass("giant-greedy", GreedyJob(cc, parts, len(splitters) + 1, rows), [ShardTask("all", None)])
    got = ctx.run_pass("giant-heads-rows", HeadRowsJob(cc, offsets, roots, parts), part_tasks)
    got += ctx.run_pass("giant-copies-rows", MemberRowsJob(cc, offsets, roots, parts), part_tasks)
    size_list = sorted(sizes.values())
    hist = Counter(str(s) if s < 10 else ("10-99" if s < 100 else "100+") for s in size_list)
    return {"clusters": len(size_list), "documents_in_clusters": sum(r["documents"] for r in got),
            "kept_in_clusters": sum(r["kept"] for r in got), "largest_cluster": max(size_list, default=0),
            "removed_exact": sum(r["removed_exact"] for r in got), "removed_near": sum(r["removed_near"] for r in got),
            "cluster_size_histogram": dict(hist)}

