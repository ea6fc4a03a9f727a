"""Connected components of verified pairs and the kept twins inside each one: the pure core.

The keep key orders documents (``longest``, ``shortest``, ``first``, ``column``; ties by id). A
partition's verified pairs are reduced locally to connected components (``_forest``); the
global components are found by the *large-star / small-star* iterations of Kiveris, Lattanzi,
Mirrokni, Rastogi & Vassilvitskii (2014), "Connected Components in MapReduce and Beyond" (SoCC '14):
each step is a function of one node's neighbourhood, so each runs as a pass over edge files
partitioned by node hash and no process ever holds more than one partition of the graph. Node
numbers (row offsets) are the labels the iterations minimise; the root by the keep rule is then
picked inside each component (``roots_by_key``). ``representatives`` chooses greedy centres in keep
order so every removed document has a kept document with similarity >= threshold - twin_margin."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stages.dedup.signatures import _mix64


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


def _components(keys: pa.Table, u: np.ndarray, v: np.ndarray) -> pa.Table:
    """Connected components of the edges (u, v) over the nodes of ``keys`` (node, k0, id): rows
    (node, k0, id, root) sorted by node, the root being each component's smallest (k0, id) member.

    The same roots as :class:`UnionFind`, computed with numpy (:func:`component_labels`) instead
    of Python dicts: measured, a dict forest of 300k+ documents left its worker process holding
    ~1 GB (fragmented small-object arenas) into every later stage; arrays are freed.
    """
    node_col = keys.column("node").to_numpy()
    nodes, first = np.unique(node_col, return_index=True)
    keys = keys.take(pa.array(first))
    n = len(nodes)
    if n == 0:
        return keys.append_column("root", pa.array([], pa.int64()))
    labels = component_labels(n, np.searchsorted(nodes, u), np.searchsorted(nodes, v))
    ranked = pa.table({"label": labels, "k0": keys.column("k0"), "id": keys.column("id"), "i": np.arange(n)})
    ranked = ranked.sort_by([("label", "ascending"), ("k0", "ascending"), ("id", "ascending"), ("i", "ascending")])
    lab, idx = ranked.column("label").to_numpy(), ranked.column("i").to_numpy()
    head = np.r_[True, lab[1:] != lab[:-1]]
    root_of_label = np.empty(labels.max() + 1, np.int64)
    root_of_label[lab[head]] = nodes[idx[head]]
    return pa.table({"node": pa.array(nodes, pa.int64()), "k0": keys.column("k0"), "id": keys.column("id"),
                     "root": pa.array(root_of_label[labels], pa.int64())})


def component_labels(n: int, iu: np.ndarray, iv: np.ndarray) -> np.ndarray:
    """A label per node ``0..n-1`` (its component's smallest node) of the undirected edges (iu, iv).

    Hook and compress in numpy: each round every root joins the smallest root it has an edge to,
    then every node points straight at its root; a component with an edge to another merges every
    round, so O(log n) rounds. Why not scipy's ``connected_components`` (what this replaced): its
    import alone cost each worker process 0.25 s of CPU (scipy 1.x, measured on 2 shared cores),
    more than the local forests of the Debian corpus's pairs pass take to label here; only the
    grouping is used, so any labelling gives the same roots (:func:`_components` ranks members).
    """
    parent = np.arange(n)
    while True:
        ru, rv = parent[iu], parent[iv]
        split = ru != rv
        if not split.any():
            return parent
        lo, hi = np.minimum(ru[split], rv[split]), np.maximum(ru[split], rv[split])
        np.minimum.at(parent, hi, lo)  # roots only, pointing lower: no cycle
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


def _forest(edges: pa.Table) -> pa.Table:
    """One partition's verified edges -> (node, k0, id, root) rows."""
    keys = pa.concat_tables([
        pa.table({"node": edges.column("u"), "k0": edges.column("ku0"), "id": edges.column("kuid")}),
        pa.table({"node": edges.column("v"), "k0": edges.column("kv0"), "id": edges.column("kvid")}),
    ])
    return _components(keys, edges.column("u").to_numpy(), edges.column("v").to_numpy())


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


def node_partition(nodes: np.ndarray, parts: int) -> np.ndarray:
    """The hash partition of each node (node numbers are dense row offsets: hashed, not taken modulo,
    so a part of the corpus full of duplicates spreads over all partitions)."""
    return (_mix64(nodes.astype(np.uint64)) % np.uint64(parts)).astype(np.int64)


def _unique_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (src, dst) rows, sorted by src then dst."""
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    keep = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])] if len(src) else np.zeros(0, bool)
    return src[keep], dst[keep]


def large_star(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One large-star step over the neighbourhoods of the nodes in ``src`` (both directions of every
    edge of these nodes are present): each node u links its *larger* neighbours to m(u), the smallest
    of u and its neighbours.

    Returns (nodes, m(node), new edge larger end, new edge smaller end, violations). ``violations``
    counts nodes of the *input* graph that are neither a star centre (only larger neighbours) nor a
    leaf (exactly one neighbour, smaller): zero everywhere means the input is a forest of stars
    centred on each component's smallest node, and then ``m`` is every node's component label.
    """
    src, dst = _unique_pairs(src, dst)
    if not len(src):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty, 0
    head = np.r_[True, src[1:] != src[:-1]]
    group = np.cumsum(head) - 1
    nodes = src[head]
    m = np.minimum(dst[head], nodes)  # dst ascends inside each group: its first row is the smallest
    smaller = np.bincount(group, dst < src)
    larger = np.bincount(group, dst > src)
    violations = int(np.count_nonzero((smaller >= 2) | ((smaller >= 1) & (larger >= 1))))
    up = dst > src
    return nodes, m, dst[up], m[group[up]], violations


def small_star(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One small-star step: every edge is given once, larger end first (``dst < src``), at the
    partition of its larger end. Each node u and its smaller neighbours are all linked to the
    smallest of them. Returns the new edges (larger end, smaller end)."""
    src, dst = _unique_pairs(src, dst)
    if not len(src):
        return src, dst
    head = np.r_[True, src[1:] != src[:-1]]
    group = np.cumsum(head) - 1
    m = dst[head][group]  # the smallest neighbour of each row's node (all neighbours here are smaller)
    other = dst != m
    return np.r_[dst[other], src[head]], np.r_[m[other], dst[head]]


def roots_by_key(nodes: pa.Table) -> np.ndarray:
    """The root of each row's component: its best member by the keep key (smallest (k0, id), then
    node). ``nodes``: (node, k0, id, label) rows, every member of a component present."""
    n = nodes.num_rows
    ranked = pa.table({"label": nodes.column("label"), "k0": nodes.column("k0"), "id": nodes.column("id"),
                       "node": nodes.column("node"), "i": np.arange(n)})
    ranked = ranked.sort_by([("label", "ascending"), ("k0", "ascending"), ("id", "ascending"),
                             ("node", "ascending")])
    lab, node, idx = (ranked.column(c).to_numpy() for c in ("label", "node", "i"))
    head = np.r_[True, lab[1:] != lab[:-1]] if n else np.zeros(0, bool)
    root = np.empty(n, np.int64)
    root[idx] = np.repeat(node[head], np.diff(np.r_[np.flatnonzero(head), n]))
    return root
