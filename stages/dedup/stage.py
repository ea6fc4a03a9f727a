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

0. *byte-copy passes* (with exact dedup on, :mod:`stages.dedup.byte_copies`): groups of
   byte-identical texts by a hash partition of their xxh3-128; one member per group (its carrier)
   stands for the others in the signature, near pairs and verification work (the copies keep
   their exact rows), for the same output up to the window of big near buckets;
1. *signature pass* (one task per input part): exact hash, signature, band keys (and, for
   true-Jaccard verification, each document's distinct shingle hashes); band keys are written
   hash-partitioned into ``P`` bucket files (a shuffle write), a carrier's exact key also for its copies;
2. *pairs pass* (one task per partition): pairs inside each bucket (all pairs of small buckets,
   a window in keep order for big ones; stars for exact buckets); *verification passes* (two
   joins over node partitions, :mod:`stages.dedup.verify`): each pair verified on the true Jaccard
   of the shingle sets or on the signature estimate, reduced to a local forest;
3. *components passes* (one task per node partition): large-star and small-star rounds (Kiveris
   et al. 2014) over the local forests' edges, shuffled by node hash, until the graph is a forest
   of stars; then nodes and edges move to the partition of their component (see
   :mod:`stages.dedup.cluster_passes`);
4. *representatives pass* (one task per component partition): each component's root by the keep
   rule and greedy centres in keep order, so every removed document has a kept document with
   similarity >= threshold - twin_margin; the cluster rows, split by input part. Components with
   more than ``giant_component_docs`` members (counted by two passes before the join) are not
   moved to one task: :mod:`stages.dedup.giant` resolves them with passes over node partitions
   and one sequential scan over their edges in keep order, to the same cluster rows;
5. *filter pass* (one task per input part): drop the rows its part's cluster rows remove, and
   write the part's share of the clusters table.

No step holds more than one partition (or one component of at most ``giant_component_docs``
members) in one process, except the giant path's scan, which adds a bitmap of N / 8 bytes; the
driver holds counts, file names and the giant components' labels (the memory model is in the README).

The root of a cluster is the best document by the keep rule (``longest``, ``shortest``, ``first``
by id, or the highest value of a numeric ``column``), ties broken by id: independent of workers and
block order. The root is always kept; other members are kept when no kept document is near them.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from pipeline.context import StageContext
from pipeline.executor import ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import parquet_rows, write_one
from pipeline.stage_api import ReportPart, Stage, register_stage
from stages.dedup.byte_copies import ByteGroupsJob, ByteHashJob
from stages.dedup.cluster_passes import (
    CLUSTER_COLUMNS,
    RESULT_SCHEMA,
    LabelJoinJob,
    RepresentativesJob,
    StarJob,
)
from stages.dedup.config import DedupConfig
from stages.dedup.filter import FilterDuplicatesJob
from stages.dedup.giant import giant_labels, resolve_giants
from stages.dedup.pairs import PairsJob, SignatureJob
from stages.dedup.report import report_part
from stages.dedup.signatures import lsh_params
from stages.dedup.verify import AttachFirstJob, VerifyJob


@register_stage
class DedupStage(Stage[DedupConfig]):
    """Exact + MinHash-LSH near-duplicate removal with a deterministic keep rule."""

    config_model = DedupConfig
    code_version: ClassVar[str] = "3"  # 3: components on workers, clusters table in parts

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        files = [f for _, f in ctx.input_files()]
        keys = [f"{i:05d}" for i in range(len(files))]
        counts = [parquet_rows(f) for f in files]
        offsets = dict(zip(keys, np.r_[0, np.cumsum(counts)[:-1]].astype(int).tolist(), strict=True)) if files else {}
        tasks = [ShardTask(k, f) for k, f in zip(keys, files, strict=True)]
        parts = cfg.partition_count(sum(counts))
        cfg = cfg.model_copy(update={"partitions": parts})  # the passes see the resolved count
        if cfg.near.enabled and cfg.near.bands is None:
            # bands and rows resolved once here: in a worker, datasketch's import (scipy) cost ~0.9 s of CPU
            bands, rows = lsh_params(cfg.near)
            cfg = cfg.model_copy(update={"near": cfg.near.model_copy(update={"bands": bands, "rows": rows})})
        part_tasks = [ShardTask(f"p{p:04d}", p) for p in range(parts)]
        cc = ctx.scratch_dir / "cc"
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[phase] = round(now - clock, 3)
            clock = now

        # byte copies first (with exact dedup on, their output is the same: see byte_copies), so
        # near dedup computes each text's signature and pairs once, whatever its copies
        byte = cfg.exact.enabled and cfg.near.enabled and cfg.near.copies_once
        if byte:
            ctx.run_pass("byte-hash", ByteHashJob(cfg, ctx.work_dir, offsets), tasks)
            ctx.run_pass("byte-groups", ByteGroupsJob(ctx.work_dir, offsets), part_tasks)
            (ctx.work_dir / "_bytehash").rmtree()
            lap("byte_copies")
        # pass 1: signatures and the bucket shuffle (side files only; no dataset rows yet)
        ctx.run_pass("sig", SignatureJob(cfg, ctx.work_dir, offsets, byte), tasks)
        for side in ("_copies", "_members"):
            (ctx.work_dir / side).rmtree()
        lap("signatures")
        # pass 2: per bucket partition, candidate pairs; passes 3-4: verified on the signatures or
        # shingle sets of both documents (two joins over node partitions), reduced to local forests
        verify_on = cfg.near.enabled and cfg.near.verify
        pdirs = (ctx.work_dir / "_buckets").glob("p*")
        pairs = ctx.run_pass("pairs", PairsJob(cfg.near.bucket_window, verify_on, cc, parts),
                             [ShardTask(pdir.name, pdir.glob("*.parquet")) for pdir in pdirs])
        verified = []
        if verify_on:
            signatures = ctx.work_dir / "_signatures"
            pairs = ctx.run_pass("verify-join", AttachFirstJob(cc, signatures, parts), part_tasks)
            verify_at = cfg.near.threshold - cfg.near.verify_margin
            verified = ctx.run_pass("verify", VerifyJob(cc, signatures, parts, verify_at), part_tasks)
        for side in ("_buckets", "_signatures"):
            (ctx.work_dir / side).rmtree()
        lap("pairs")
        # passes 3..: connected components (large-star / small-star), labels joined to the
        # components' partitions, then roots and kept twins per component, all on workers
        labels, rounds, clustered = self._components(ctx, cc, part_tasks)
        # components above giant_component_docs members are set aside by the join and resolved by
        # the giant passes (bounded memory per task); the others in one task each (fast)
        giant = giant_labels(ctx, cc, labels, part_tasks, cfg.giant_component_docs, clustered)
        ctx.run_pass("label-join", LabelJoinJob(cc, labels, parts, np.array(sorted(giant), np.int64)), part_tasks)
        lap("components")
        min_sim = cfg.near.threshold - cfg.near.twin_margin
        reps = ctx.run_pass("representatives", RepresentativesJob(cc, parts, offsets, min_sim), part_tasks)
        if giant:
            reps.append(resolve_giants(ctx, cc, giant, part_tasks, offsets, sum(counts), min_sim))
        cluster_stats = _sum_cluster_stats(reps)
        lap("representatives")
        # last pass: filter, and each input part's share of the clusters table
        clusters_dir = ctx.side_dir("clusters")
        results = ctx.map_shards(FilterDuplicatesJob(cc / "result", offsets, clusters_dir), tasks)
        if not clusters_dir.glob("*.parquet"):  # no cluster at all: an empty table, so readers see its columns
            write_one(RESULT_SCHEMA.empty_table().select(CLUSTER_COLUMNS), clusters_dir / "part-00000.parquet")
        lap("filter")
        self._group_stats(ctx, results, cluster_stats)
        bands, rows = lsh_params(cfg.near) if cfg.near.enabled else (0, 0)
        ctx.manifest.stats.update(cluster_stats)
        ctx.manifest.stats["candidate_pairs"] = sum(r.get("candidates", 0) for r in pairs)
        ctx.manifest.stats["verified_pairs"] = (sum(r.get("verified", 0) for r in verified) if verify_on
                                                else ctx.manifest.stats["candidate_pairs"])
        ctx.manifest.stats["component_rounds"] = rounds
        ctx.manifest.stats["seconds"] = seconds
        ctx.manifest.stats["parameters"] = {"num_perm": cfg.near.num_perm, "bands": bands, "rows": rows,
                                            "threshold": cfg.near.threshold, "shingle": cfg.near.shingle.model_dump(),
                                            "partitions": parts, "keep": self.config.keep}
        cc.rmtree()

    @staticmethod
    def _components(ctx: StageContext, cc: Location, part_tasks: list[ShardTask]) -> tuple[Location, int, int]:
        """Large-star and small-star passes until a large-star pass finds a forest of stars; the
        folder of its (node -> component label) files, the number of rounds and of clustered
        documents (the last large-star pass sees each once). Each round's inputs
        are removed once the round is done (a resumed run skips done passes without reading them)."""
        parts = len(part_tasks)
        graph = cc / "graph0"
        for rnd in range(1, MAX_STAR_ROUNDS + 1):
            labels, half = cc / f"labels{rnd}", cc / f"graph{rnd}-half"
            done = ctx.run_pass(f"large-star{rnd}", StarJob("large", graph, half, labels, parts), part_tasks)
            if not sum(r["violations"] for r in done):
                return labels, rnd, sum(r["nodes"] for r in done)
            ctx.run_pass(f"small-star{rnd}", StarJob("small", half, cc / f"graph{rnd}", None, parts), part_tasks)
            for folder in (graph, half, labels):
                folder.rmtree()
            graph = cc / f"graph{rnd}"
        raise RuntimeError(f"connected components did not converge in {MAX_STAR_ROUNDS} large-star rounds")

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


#: large-star rounds before the components passes give up (Kiveris et al.: O(log² n); a few in practice)
MAX_STAR_ROUNDS = 64


def _sum_cluster_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The representatives tasks' statistics summed (each task holds whole components)."""
    total: dict[str, Any] = {"clusters": 0, "documents_in_clusters": 0, "kept_in_clusters": 0, "largest_cluster": 0,
                             "removed_exact": 0, "removed_near": 0}
    hist: Counter[str] = Counter()
    for r in results:
        for key in total:
            total[key] = max(total[key], r[key]) if key == "largest_cluster" else total[key] + r[key]
        hist.update(r["cluster_size_histogram"])
    total["cluster_size_histogram"] = dict(sorted(hist.items(), key=lambda kv: _size_order(kv[0])))
    return total


def _size_order(label: str) -> int:
    """Histogram labels in size order: "2" ... "9", "10-99", "100+"."""
    return int(label.split("-")[0].rstrip("+"))
