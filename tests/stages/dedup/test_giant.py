"""Giant components (:mod:`stages.dedup.giant`): the same cluster rows as the one-task path.

Three levels: the streaming greedy against :func:`representatives` on random graphs (pure); the
giant passes run in this process against :func:`cluster_rows` on random graphs (every component
giant); and the whole stage on the real local Ray, where the same input with every component giant
and with the default threshold gives byte-identical ``data/`` and ``__clusters/``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from test_dedup_resume import kill_in_pass_then_resume

from pipeline.executor import ShardTask
from pipeline.locations import Location
from stages.dedup.cluster_passes import (
    RESULT_SCHEMA,
    LabelJoinJob,
    StarJob,
    cluster_rows,
    read_folder,
    write_pairs_outputs,
)
from stages.dedup.components import _forest, representatives
from stages.dedup.giant import encode_keys, giant_labels, greedy_scan, resolve_giants

# ----------------------------------------------------------------------------------- random graphs


def random_graph(seed: int, keep_first: bool = False) -> tuple[pa.Table, pa.Table]:
    """(node, k0, id, root=0) rows and verified edges (u < v, kind, sim) with exact stars from each
    exact group's best copy, near edges between random documents (also to exact copies), ties in
    k0, NUL bytes and prefixes in ids, sims in a few values (ties) around the twin threshold."""
    rng = random.Random(seed)
    n = rng.randrange(2, 120)
    nodes = sorted(rng.sample(range(10 * n), n))
    k0 = [0.0 if keep_first else float(rng.choice([-3, -2, -2, -1, 0])) for _ in nodes]
    ids = [rng.choice(["d", "d\x00", "d\x00a", "da", "e", ""]) + str(rng.randrange(3 * n)) for _ in nodes]
    ids = [f"{i}#{k}" if rng.random() < 0.5 else i for k, i in enumerate(ids)]
    key = {nd: (k, i, nd) for nd, k, i in zip(nodes, k0, ids, strict=True)}
    edges: list[tuple[int, int, str, float]] = []
    pool = list(nodes)
    rng.shuffle(pool)
    while len(pool) > 1 and rng.random() < 0.6:  # exact groups: a star from the best copy
        group = [pool.pop() for _ in range(min(len(pool), rng.randrange(2, 5)))]
        best = min(group, key=lambda x: key[x])
        edges += [(min(best, x), max(best, x), "exact", 1.0) for x in group if x != best]
    pairs = {(min(a, b), max(a, b)) for a, b in (rng.sample(nodes, 2) for _ in range(rng.randrange(0, 4 * n)))
             if a != b} - {(u, v) for u, v, _, _ in edges}
    edges += [(u, v, "near", rng.choice([0.65, 0.7, 0.75, 0.75, 0.9, 1.0])) for u, v in sorted(pairs)]
    forest = pa.table({"node": pa.array(nodes, pa.int64()), "k0": k0, "id": ids, "root": pa.array([0] * n, pa.int64())})
    edge_t = pa.table({"u": pa.array([e[0] for e in edges], pa.int64()),
                       "v": pa.array([e[1] for e in edges], pa.int64()), "kind": [e[2] for e in edges],
                       "sim": pa.array([e[3] for e in edges], pa.float64())})
    return forest, edge_t


def streaming_reference(forest: pa.Table, edges: pa.Table, min_sim: float, ranges: int) -> dict[int, tuple]:
    """kept/twin/similarity per head by the giant path's rule: heads from the exact stars, near edges
    between heads oriented by the encoded keys, cut into ``ranges`` key ranges scanned in order."""
    nodes = forest.column("node").to_numpy()
    keys = encode_keys(forest.column("k0").to_numpy(), forest.column("id"), nodes).to_pylist()
    key = dict(zip(nodes.tolist(), keys, strict=True))
    head = {x: x for x in nodes.tolist()}
    rows = edges.to_pylist()
    for e in rows:
        if e["kind"] == "exact":
            a, b = sorted((e["u"], e["v"]), key=key.__getitem__)
            head[b] = a
    oriented = []
    for e in rows:
        hu, hv = head[e["u"]], head[e["v"]]
        if e["kind"] == "exact" or hu == hv or e["sim"] < min_sim:
            continue
        lo, hi = sorted((hu, hv), key=key.__getitem__)
        oriented.append((key[hi], -e["sim"], key[lo], hi, lo, e["sim"]))
    oriented.sort()
    removed = bytearray(int(nodes.max()) // 8 + 1 if len(nodes) else 1)
    decided: dict[int, tuple] = {}
    bounds = np.linspace(0, len(oriented), ranges + 1).astype(int)
    for r in range(ranges):  # cuts may split one hi's edges: the scan must carry over
        chunk = oriented[bounds[r]:bounds[r + 1]]
        hi = np.array([c[3] for c in chunk], np.int64)
        lo = np.array([c[4] for c in chunk], np.int64)
        for k in greedy_scan(hi, lo, removed).tolist():
            decided.setdefault(int(hi[k]), (int(lo[k]), chunk[k][5]))
    return {x: decided.get(x) for x in nodes.tolist() if head[x] == x}


@pytest.mark.parametrize("keep_first", [False, True])
def test_streaming_greedy_matches_representatives(keep_first):
    for seed in range(300):
        forest, edges = random_graph(seed, keep_first)
        reps = representatives(forest, edges, 0.7).to_pylist()
        got = streaming_reference(forest, edges, 0.7, ranges=1 + seed % 4)
        for row in reps:
            if row["reason"] == "exact":
                continue
            want = None if row["kept"] else (row["kept_node"], row["similarity"])
            assert got[row["node"]] == want, (seed, row)


def test_keys_sort_as_arrow_sorts_the_keep_key():
    rng = random.Random(1)
    n = 2000
    k0 = np.array([rng.choice([-0.0, 0.0, -1.5, 2.0, np.inf, -np.inf, np.nan, -np.nan]) for _ in range(n)])
    ids = pa.array([rng.choice(["", "a", "a\x00", "a\x00\x00", "a\x01", "ab", "é", "b"]) for _ in range(n)])
    nodes = np.array(rng.sample(range(10**12), n), np.int64)
    t = pa.table({"k0": k0, "id": ids, "node": nodes})
    arrow = t.sort_by([("k0", "ascending"), ("id", "ascending"), ("node", "ascending")]).column("node").to_pylist()
    keys = encode_keys(k0, ids, nodes).to_pylist()
    ours = [nd for _, nd in sorted(zip(keys, nodes.tolist(), strict=True))]
    assert ours == arrow


# ----------------------------------------------------------------------------------- passes in-process


class LocalContext:
    """Just enough of a stage context to run passes in this process, in task order."""

    def __init__(self) -> None:
        self.passes: list[str] = []

    def run_pass(self, name: str, job: Any, tasks: list[ShardTask], **_: Any) -> list[dict[str, Any]]:
        self.passes.append(name)
        job.setup()
        return [job.run(t, None) for t in tasks]


def run_cluster_passes(forest: pa.Table, edges: pa.Table, parts: int, cc: Location, threshold: int,
                       rows: int, offsets: dict[str, int]) -> tuple[pa.Table, dict[str, Any], list[str]]:
    """Pairs outputs, star rounds, label join and the giant path as the stage runs them."""
    key = {nd: (k, i) for nd, k, i in zip(forest["node"].to_pylist(), forest["k0"].to_pylist(),
                                          forest["id"].to_pylist(), strict=True)}
    u, v = edges["u"].to_pylist(), edges["v"].to_pylist()
    verified = edges.append_column("ku0", pa.array([key[x][0] for x in u], pa.float64())).append_column(
        "kuid", pa.array([key[x][1] for x in u], pa.string())).append_column(
        "kv0", pa.array([key[x][0] for x in v], pa.float64())).append_column(
        "kvid", pa.array([key[x][1] for x in v], pa.string()))
    half = verified.num_rows // 2  # two "pairs tasks"
    for i, t in enumerate((verified.slice(0, half), verified.slice(half))):
        write_pairs_outputs(_forest(t), t, parts, cc, f"b{i}")
    tasks = [ShardTask(f"p{p:04d}", p) for p in range(parts)]
    ctx = LocalContext()
    graph = cc / "graph0"
    for rnd in range(1, 65):
        labels = cc / f"labels{rnd}"
        if not sum(r["violations"] for r in ctx.run_pass("large", StarJob("large", graph, cc / f"h{rnd}", labels,
                                                                                  parts), tasks)):
            break
        ctx.run_pass("small", StarJob("small", cc / f"h{rnd}", cc / f"graph{rnd}", None, parts), tasks)
        graph = cc / f"graph{rnd}"
    giant = giant_labels(ctx, cc, labels, tasks, threshold, forest.num_rows)  # type: ignore[arg-type]
    ctx.run_pass("label-join", LabelJoinJob(cc, labels, parts, np.array(sorted(giant), np.int64)), tasks)
    stats = resolve_giants(ctx, cc, giant, tasks, offsets, rows, 0.7) if giant else {}  # type: ignore[arg-type]
    found = [read_folder(cc / "result" / k) for k in offsets]
    got = pa.concat_tables([t for t in found if t is not None] or [RESULT_SCHEMA.empty_table()])
    return got.sort_by("node"), stats, ctx.passes


@pytest.mark.parametrize("keep_first", [False, True])
def test_giant_passes_give_the_cluster_rows_of_one_task(tmp_path, keep_first):
    for seed in range(40):
        forest, edges = random_graph(seed, keep_first)
        if not edges.num_rows:
            continue
        offsets = {"00000": 0, "00001": int(forest["node"].to_numpy().max()) // 2 + 1}
        parts = 1 + seed % 5
        got, stats, passes = run_cluster_passes(forest, edges, parts, Location.of(tmp_path / f"cc{seed}{keep_first}"),
                                                1, int(forest["node"].to_numpy().max()) + 1, offsets)
        assert "giant-greedy" in passes
        linked = np.unique(np.r_[edges["u"].to_numpy(), edges["v"].to_numpy()])
        sub = forest.filter(pa.array(np.isin(forest["node"].to_numpy(), linked)))
        # the reference: every component in one task, roots by the keep rule
        from stages.dedup.components import _components
        comp = _components(sub.select(["node", "k0", "id"]), edges["u"].to_numpy(), edges["v"].to_numpy())
        want, want_stats = cluster_rows(comp, edges, 0.7)
        assert got.to_pylist() == want.to_pylist(), seed
        for k in ("clusters", "documents_in_clusters", "kept_in_clusters", "removed_exact", "removed_near",
                  "largest_cluster"):
            assert stats[k] == want_stats[k], (seed, k)


# ----------------------------------------------------------------------------------- the stage on Ray

SPEC = """
name: giant
output: out
inputs:
  docs: {{paths: [{docs}]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.2}}
  - {{name: dedup, type: dedup, inputs: [ingest], partitions: 8, keep: {keep}{extra}}}
"""


def write_corpus(path: Path, seed: int = 7) -> None:
    """Chains (several star rounds), exact copies of chain members (some padded with spaces, so
    ``keep: longest`` prefers a copy whose normalised text is the same), documents of equal length
    (ties in the keep key), a tight group, and singletons."""
    rng = random.Random(seed)
    vocab = [f"w{rng.randrange(10**9):09d}" for _ in range(5000)]
    docs = []
    for c in range(12):
        words = [rng.choice(vocab) for _ in range(200 + 2 * 25)]
        chain = [{"id": f"c{c:02d}-{i:03d}", "text": " ".join(words[2 * i: 2 * i + 200])} for i in range(25)]
        for i in rng.sample(range(25), 6):
            for j in range(rng.randrange(1, 3)):
                pad = "  " * rng.randrange(0, 2)
                chain.append({"id": f"c{c:02d}-{i:03d}x{j}", "text": chain[i]["text"] + pad})
        docs += chain
    base = [rng.choice(vocab) for _ in range(150)]
    docs += [{"id": f"tight-{k:02d}", "text": " ".join([*base[:149], f"v{k:08d}"])} for k in range(10)]
    docs += [{"id": f"single-{k:04d}", "text": " ".join(rng.choice(vocab) for _ in range(150))} for k in range(200)]
    rng.shuffle(docs)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def digest(out: Path) -> dict[str, str]:
    files = sorted(f for d in ("data", "__clusters") for f in (out / "dedup" / d).rglob("*.parquet"))
    assert files
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("keep", ["longest", "first"])
def test_every_component_giant_gives_identical_output(run_spec, tmp_path, keep):
    docs = tmp_path / "docs.jsonl"
    write_corpus(docs)
    outs, stats = {}, {}
    runs = (("default", ""), ("giant", ", giant_component_docs: 1"), ("mixed", ", giant_component_docs: 30"))
    for name, extra in runs:
        d = tmp_path / name
        d.mkdir()
        _, out = run_spec(SPEC.format(docs=docs, keep=keep, extra=extra), directory=d)
        outs[name] = digest(out)
        m = json.loads((out / "dedup" / "manifest.json").read_text())
        stats[name] = {k: v for k, v in m["stats"].items() if k not in ("seconds", "peak_task_rss_mb", "passes")}
        assert ("giant-greedy" in m["stats"]["peak_task_rss_mb"]) == (name != "default")  # the path ran
    assert stats["default"]["component_rounds"] >= 2
    assert stats["default"]["removed_exact"] > 0 and stats["default"]["removed_near"] > 0
    assert outs["giant"] == outs["default"]
    assert outs["mixed"] == outs["default"]
    assert stats["giant"] == stats["default"]
    assert stats["mixed"] == stats["default"]


def test_a_driver_killed_in_the_giant_passes_resumes_identically(run_spec, tmp_path):
    docs = tmp_path / "docs.jsonl"
    write_corpus(docs, seed=11)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    _, ref_out = run_spec(SPEC.format(docs=docs, keep="longest", extra=""), directory=ref_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    giant = SPEC.format(docs=docs, keep="longest", extra=", giant_component_docs: 1")
    m = kill_in_pass_then_resume(run_spec, run_dir, giant, "giant-heads")
    assert "giant-greedy" in m["stats"]["peak_task_rss_mb"]
    assert digest(run_dir / "out") == digest(ref_out)
