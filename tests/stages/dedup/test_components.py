"""Connected components as passes over partitioned Parquet (large-star / small-star) give the same
clusters and roots as a union-find over all edges at once (the reference), for any partition count."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.executor import ShardTask
from pipeline.locations import Location
from stages.dedup.cluster_passes import LabelJoinJob, StarJob, read_partition, write_pairs_outputs
from stages.dedup.components import UnionFind, _forest, roots_by_key


def _edges(rng: random.Random, key: dict[int, tuple], n_edges: int, nodes: int, path: bool) -> pa.Table:
    if path:  # one long chain: the worst case for the number of rounds
        order = list(range(nodes))
        rng.shuffle(order)
        pairs = list(itertools.pairwise(order))
    else:
        pairs = [(rng.randrange(nodes), rng.randrange(nodes)) for _ in range(n_edges)]
    pairs = [(min(a, b), max(a, b)) for a, b in pairs if a != b]
    return pa.table({"u": pa.array([a for a, _ in pairs], pa.int64()), "v": pa.array([b for _, b in pairs], pa.int64()),
                     "kind": ["near"] * len(pairs), "sim": [0.9] * len(pairs),
                     "ku0": [key[a][0] for a, _ in pairs], "kuid": [key[a][1] for a, _ in pairs],
                     "kv0": [key[b][0] for _, b in pairs], "kvid": [key[b][1] for _, b in pairs]})


def _run_passes(tables: list[pa.Table], parts: int, cc: Location) -> tuple[pa.Table, int]:
    """The stage's component passes, run in this process: local forests, star rounds, label join."""
    for i, t in enumerate(tables):
        write_pairs_outputs(_forest(t), t, parts, cc, f"b{i}")
    tasks = [ShardTask(f"p{p:04d}", p) for p in range(parts)]
    graph = cc / "graph0"
    for rnd in range(1, 65):
        labels, half = cc / f"labels{rnd}", cc / f"half{rnd}"
        large = StarJob("large", graph, half, labels, parts)
        if not sum(large.run(t, None)["violations"] for t in tasks):  # type: ignore[arg-type]
            break
        small = StarJob("small", half, cc / f"graph{rnd}", None, parts)
        for t in tasks:
            small.run(t, None)  # type: ignore[arg-type]
        graph = cc / f"graph{rnd}"
    join = LabelJoinJob(cc, labels, parts)
    for t in tasks:
        join.run(t, None)  # type: ignore[arg-type]
    schema = pa.schema([("node", pa.int64()), ("k0", pa.float64()), ("id", pa.string()), ("label", pa.int64())])
    nodes = pa.concat_tables([read_partition(cc / "comp_nodes", p, schema) for p in range(parts)])
    return nodes, rnd


@pytest.mark.parametrize(("seed", "parts", "path"), [(0, 1, False), (1, 3, False), (2, 8, False), (3, 4, True),
                                                     (4, 2, True)])
def test_star_passes_find_the_union_find_roots(tmp_path, seed, parts, path):
    rng = random.Random(seed)
    nodes = 600
    key = {n: (float(rng.choice([0.0, 1.0, 2.5])), f"doc-{rng.randrange(10**6):06d}") for n in range(nodes)}
    tables = [_edges(rng, key, 200, nodes, path and i == 0) for i in range(3)]  # three bucket partitions
    got, rounds = _run_passes(tables, parts, Location.of(tmp_path / "cc"))
    uf = UnionFind()
    for t in tables:
        for a, b in zip(t["u"].to_pylist(), t["v"].to_pylist(), strict=True):
            uf.add(a, key[a])
            uf.add(b, key[b])
            uf.union(a, b)
    got = got.sort_by("node")
    assert got["node"].to_pylist() == sorted(uf.parent)  # every linked document, once
    roots = roots_by_key(got)
    assert dict(zip(got["node"].to_pylist(), roots.tolist(), strict=True)) == {n: uf.find(n) for n in uf.parent}
    # the label is the component's smallest node, a component's members share one partition's file
    label = got["label"].to_numpy()
    assert all(lab == min(n for n in uf.parent if uf.find(n) == uf.find(lab)) for lab in set(label.tolist()))
    assert rounds <= 2 * int(np.log2(nodes)) ** 2
    assert len(set(roots.tolist())) < got.num_rows  # clusters were formed
