"""Dedup: exact (normalised-text hash) and near-duplicate (MinHash + LSH) removal.

Near dedup follows Broder (1997), "On the resemblance and containment of documents", with the LSH
banding of Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3: a document's set of
shingles is summarised by ``num_perm`` min-hashes, the signature is cut into ``bands`` of ``rows``
values, and two documents that agree on a whole band become a candidate pair.

Signatures are datasketch's (``MinHash`` default ``affine32`` scheme since datasketch 2.0: shingle
hashes pre-mixed by MurmurHash3's finaliser, permutations ``a*h + b mod 2^32`` with odd ``a``, ``a, b``
drawn from ``RandomState(seed)``), computed vectorised over all the
shingles of a batch at once: the tests check them value for value against ``datasketch.MinHash``
fed the same shingle hashes. Shingle hashes are our own: words hashed once per batch with xxh64 and
n-grams combined in numpy, which is several times faster than datasketch's per-shingle SHA-1 (see
``benchmarks/bench_dedup.py``).

Execution, every step an engine pass (progress, resume markers, retries) writing Parquet:

1. *signature pass* (one task per input part): exact hash, signature, band keys (and, for
   true-Jaccard verification, each document's distinct shingle hashes); band keys are written
   hash-partitioned into ``P`` bucket files (a shuffle write);
2. *pairs pass* (one task per partition): pairs inside each bucket (all pairs of small buckets,
   a window in keep order for big ones; stars for exact buckets), verified on the true Jaccard of
   the shingle sets or on the signature estimate, reduced to a forest (connected components);
3. *merge passes*: forests merged pairwise in rounds; a merge holds the documents that have a
   duplicate (memory O(duplicated documents), never O(corpus));
4. *kept twins* (driver, O(duplicated documents)): greedy centres in keep order inside each
   component, so every removed document has a kept document with similarity >= threshold -
   twin_margin; the clusters table; the drop set written as one (node, reason) file per input part;
5. *filter pass* (one task per input part): drop the rows its part's drop file names.

The root of a cluster is the best document by the keep rule (``longest``, ``shortest``, ``first``
by id, or the highest value of a numeric ``column``), ties broken by id: independent of workers and
block order. The root is always kept; other members are kept when no kept document is near them.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.context import StageContext
from pipeline.executor import ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import PartWriter, parquet_rows, read_one
from pipeline.stage_api import ReportPart, Stage, register_stage
from stages.dedup.components import UnionFind, _forest_table, _merge_forest_files, representatives
from stages.dedup.config import DedupConfig
from stages.dedup.filter import FilterDuplicatesJob, _write_drop_tables
from stages.dedup.pairs import _EDGE_SCHEMA, PairsJob, SignatureJob
from stages.dedup.report import report_part
from stages.dedup.signatures import lsh_params


@register_stage
class DedupStage(Stage[DedupConfig]):
    """Exact + MinHash-LSH near-duplicate removal with a deterministic keep rule."""

    config_model = DedupConfig
    code_version: ClassVar[str] = "2"  # 2: kept twins, all-pairs buckets, clusters table kept_id

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        files = [f for _, f in ctx.input_files()]
        keys = [f"{i:05d}" for i in range(len(files))]
        counts = [parquet_rows(f) for f in files]
        offsets = dict(zip(keys, np.r_[0, np.cumsum(counts)[:-1]].astype(int).tolist(), strict=True)) if files else {}
        tasks = [ShardTask(k, f) for k, f in zip(keys, files, strict=True)]
        t0 = time.perf_counter()
        # pass 1: signatures and the bucket shuffle (side files only; no dataset rows yet)
        ctx.run_pass("sig", SignatureJob(cfg, ctx.work_dir, offsets), tasks)
        t1 = time.perf_counter()
        # pass 2: per partition, candidate pairs, verified on the signatures (or shingles) they need,
        # reduced to a forest; pass 3: forests merged pairwise in rounds. Every step is an engine
        # pass writing Parquet (progress, resume markers, retries), nothing handed through the driver.
        sig_files = (ctx.work_dir / "_signatures").glob("*.parquet") if cfg.near.verify else []
        verify_at = cfg.near.threshold - cfg.near.verify_margin if cfg.near.verify else 0.0
        pdirs = (ctx.work_dir / "_buckets").glob("p*")
        pair_dir = ctx.work_dir / "_pairs"
        ctx.run_pass("pairs", PairsJob(cfg.near.bucket_window, sig_files, verify_at, pair_dir),
                     [ShardTask(pdir.name, pdir.glob("*.parquet")) for pdir in pdirs])
        level = [pair_dir / "forest" / f"{pdir.name}.parquet" for pdir in pdirs]
        rounds = 0
        while len(level) > 1:
            rounds += 1
            jobs = [(level[i], level[i + 1], pair_dir / f"merge{rounds}" / f"{i:05d}.parquet")
                    for i in range(0, len(level) - 1, 2)]
            merged = ctx.map_function(f"merge{rounds}", _merge_forest_files, jobs)
            level = merged + ([level[-1]] if len(level) % 2 else [])
        forest = read_one(level[0]) if level else _forest_table(UnionFind())
        edge_files = [pair_dir / "edges" / f"{pdir.name}.parquet" for pdir in pdirs]
        edges = pa.concat_tables([read_one(f) for f in edge_files]) if edge_files else None
        ctx.manifest.stats["merge_rounds"] = rounds

        t2 = time.perf_counter()
        # the clusters table and the drop set
        drop, cluster_stats, clusters = self._clusters(forest, edges, files, offsets, keys)
        w = PartWriter(ctx.side_dir("clusters"), "part-00000")
        w.write(clusters)
        w.commit()
        drop_dir = ctx.work_dir / "_drop"
        _write_drop_tables(drop, drop_dir, offsets, counts)
        t3 = time.perf_counter()
        # pass 4: filter
        results = ctx.map_shards(FilterDuplicatesJob(drop_dir, offsets), tasks)
        self._group_stats(ctx, results, cluster_stats)
        bands, rows = lsh_params(cfg.near) if cfg.near.enabled else (0, 0)
        ctx.manifest.stats.update(cluster_stats)
        ctx.manifest.stats["seconds"] = {"signatures": round(t1 - t0, 3), "components": round(t2 - t1, 3),
                                         "clusters": round(t3 - t2, 3),
                                         "filter": round(time.perf_counter() - t3, 3)}
        ctx.manifest.stats["parameters"] = {"num_perm": cfg.near.num_perm, "bands": bands, "rows": rows,
                                            "threshold": cfg.near.threshold, "shingle": cfg.near.shingle.model_dump(),
                                            "partitions": cfg.partitions, "keep": cfg.keep}
        for side in ("_buckets", "_signatures", "_drop", "_pairs"):
            (ctx.work_dir / side).rmtree()

    def _clusters(self, forest: pa.Table, edges: pa.Table | None, files: list[Location], offsets: dict[str, int],
                  keys: list[str]) -> tuple[pa.Table, dict[str, Any], pa.Table]:
        near = self.config.near
        if edges is None:
            edges = _EDGE_SCHEMA.empty_table().append_column("sim", pa.array([], pa.float64()))
        reps = representatives(forest, edges, near.threshold - near.twin_margin)
        nodes = forest.column("node").to_numpy()
        roots = forest.column("root").to_numpy()
        ids = forest.column("id")
        kept = reps.column("kept").to_numpy(zero_copy_only=False)
        reason = reps.column("reason").to_numpy(zero_copy_only=False)
        has_exact = np.zeros(len(nodes), bool)
        has_exact[np.searchsorted(nodes, reps.column("kept_node").to_numpy()[reason == "exact"])] = True
        linked = np.where(kept, np.where(has_exact, "exact", "near"), reason)
        drop = pa.table({"node": pa.array(nodes[~kept], pa.int64()),
                         "reason": pa.array([f"{r}_duplicate" for r in reason[~kept].tolist()], pa.string())})
        clusters = pa.table({
            "id": ids, "cluster_id": ids.take(pa.array(np.searchsorted(nodes, roots))), "kept": reps.column("kept"),
            "kept_id": ids.take(pa.array(np.searchsorted(nodes, reps.column("kept_node").to_numpy()))),
            "linked_by": pa.array(linked.tolist(), pa.string()), "similarity": reps.column("similarity"),
        })
        clusters = clusters.sort_by([("cluster_id", "ascending"), ("id", "ascending")])
        sizes = Counter(roots.tolist())
        hist: Counter[str] = Counter()
        for size in sizes.values():
            hist[str(size) if size < 10 else ("10-99" if size < 100 else "100+")] += 1
        stats = {"clusters": len(sizes), "documents_in_clusters": len(nodes),
                 "kept_in_clusters": int(kept.sum()), "largest_cluster": max(sizes.values(), default=0),
                 "removed_exact": int((reason == "exact").sum()), "removed_near": int((reason == "near").sum()),
                 "cluster_size_histogram": dict(sorted(hist.items(), key=lambda kv: _size_order(kv[0])))}
        return drop, stats, clusters

    def _group_stats(self, ctx: StageContext, results: list[dict[str, Any]], cluster_stats: dict[str, Any]) -> None:
        """Removed per source and per language into the manifest, and warnings past the thresholds."""
        cfg = self.config
        warnings: list[str] = []
        for column in ("source", "lang"):
            total: dict[str, list[int]] = {}
            for r in results:
                for value, (n, removed) in r.get("by_group", {}).get(column, {}).items():
                    slot = total.setdefault(value, [0, 0])
                    slot[0] += n
                    slot[1] += removed
            if not total:
                continue
            ctx.manifest.stats[f"removed_by_{column}"] = {
                v: {"rows_in": n, "removed": d, "share": round(d / n, 4) if n else 0.0}
                for v, (n, d) in sorted(total.items())}
            if column == "source":
                warnings += [f"dedup removed {d:,} of {n:,} documents ({d / n:.0%}) of source {v!r} "
                             f"(warn_source_share {cfg.warn_source_share})"
                             for v, (n, d) in sorted(total.items()) if n and d / n > cfg.warn_source_share]
        largest = cluster_stats.get("largest_cluster", 0)
        if largest > cfg.warn_cluster_size:
            warnings.append(f"one dedup cluster holds {largest:,} documents "
                            f"(warn_cluster_size {cfg.warn_cluster_size:,})")
        for text in warnings:
            ctx.warn(text)

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return report_part(manifest, stage_dir)

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        p = s.get("parameters", {})
        rows = [("clusters", f"{s.get('clusters', 0):,}"), ("removed (exact)", f"{s.get('removed_exact', 0):,}"),
                ("removed (near)", f"{s.get('removed_near', 0):,}"),
                ("LSH", f"{p.get('bands')} bands × {p.get('rows')} rows, {p.get('num_perm')} perms, "
                        f"threshold {p.get('threshold')}")]
        rows += [(f"clusters of size {k}", f"{v:,}") for k, v in s.get("cluster_size_histogram", {}).items()]
        for column in ("source", "lang"):
            rows += [(f"removed from {column} {v}", f"{g['removed']:,} of {g['rows_in']:,} ({g['share']:.1%})")
                     for v, g in s.get(f"removed_by_{column}", {}).items()]
        rows += [("warning", w) for w in s.get("warnings", [])]
        return rows


def _size_order(label: str) -> int:
    """Histogram labels in size order: "2" ... "9", "10-99", "100+"."""
    return int(label.split("-")[0].rstrip("+"))
