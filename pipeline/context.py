"""What a running stage sees: its inputs, its output folder, Ray helpers and the manifest it fills."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.executor import ShardJob, ShardOutput, ShardTask, WorkerError, run_shards
from pipeline.locations import Location
from pipeline.manifest import ManifestBuilder, merge_stats
from pipeline.parquet_io import iter_batches, parquet_rows, read_schema

if TYPE_CHECKING:
    from pipeline.progress import Reporter
    from pipeline.spec import FilesInput
    from pipeline.stage_api import MapStage, StageConfig


@dataclass
class DatasetInput:
    """An upstream stage's dataset: its sorted Parquet parts and its manifest."""

    name: str
    dir: Location
    manifest: dict[str, Any]

    @property
    def files(self) -> list[Location]:
        return (self.dir / "data").glob("part-*.parquet")

    def num_rows(self) -> int:
        return sum(parquet_rows(p) for p in self.files)


@dataclass
class RawInput:
    """A ``kind: files`` input for ingest stages; ``base_dir`` resolves its relative paths."""

    name: str
    spec: FilesInput
    base_dir: Path


@dataclass
class StageContext:
    name: str
    config: StageConfig
    seed: int
    work_dir: Location
    output_root: Location
    datasets: list[DatasetInput] = field(default_factory=list)
    raw_inputs: list[RawInput] = field(default_factory=list)
    artifact_paths: dict[str, Location] = field(default_factory=dict)
    reporter: Reporter | None = None
    manifest: ManifestBuilder = field(default_factory=ManifestBuilder)

    @property
    def data_dir(self) -> Location:
        return self.work_dir / "data"

    @property
    def rejects_dir(self) -> Location:
        return self.work_dir / "rejects"

    def artifact(self, field_name: str) -> Location:
        """The file behind an ``ArtifactRef`` config field (a stage's artifact or an artifact input)."""
        return self.artifact_paths[field_name]

    def input_files(self) -> list[tuple[DatasetInput, Location]]:
        return [(ds, f) for ds in self.datasets for f in ds.files]

    # ----------------------------------------------------------------------------- Ray helpers

    def map_shards(
        self,
        job: ShardJob,
        tasks: Sequence[ShardTask],
        *,
        use_actors: bool = False,
        worker_cpus: float = 1.0,
        max_workers: int | None = None,
        count_rows: bool = True,
    ) -> list[dict[str, Any]]:
        """Run a shard job on Ray (see :mod:`pipeline.executor`); adds its counts to the manifest."""
        if self.reporter:
            self.reporter.stage_total(self.name, len(tasks))

        def on_result(task: ShardTask, stats: dict[str, Any], resumed: bool) -> None:
            self.manifest.shards["resumed" if resumed else "run"] += 1
            if self.reporter:
                self.reporter.shard_done(self.name, stats.get("rows_in", 0), stats.get("bytes_in", 0), resumed)

        try:
            results = run_shards(
                job, tasks, self.work_dir, use_actors=use_actors, worker_cpus=worker_cpus,
                max_workers=max_workers, on_result=on_result, retries=self.config.retries,
            )
        except WorkerError as exc:
            from pipeline.errors import StageFailed, TokenmillError

            if exc.user_error:
                raise TokenmillError(str(exc)) from None
            raise StageFailed(self.name, str(exc)) from None
        if count_rows:
            for stats in results:
                self.manifest.add_shard(stats)
        return results

    def map_stage(self, stage: MapStage) -> None:
        """Stream every input part through ``stage.process`` (one output part per input part)."""
        state = stage.prepare(self)
        tasks = []
        multi = len(self.datasets) > 1
        for ds, path in self.input_files():
            key = path.stem.removeprefix("part-")
            tasks.append(ShardTask(f"{ds.name}-{key}" if multi else key, path))
        job = getattr(stage, "job_class", MapStageJob)(type(stage), stage.config, state)
        results = self.map_shards(job, tasks, use_actors=stage.use_actors, worker_cpus=stage.worker_cpus)
        merged: dict[str, Any] = {}
        for stats in results:
            merge_stats(merged, stats.get("stats", {}))
        self.manifest.stats.update(merged)
        stage.finish(self, [s.get("stats", {}) for s in results])


class MapStageJob:
    """Ships a :class:`MapStage` to workers: rebuilt and ``setup`` once per worker, then per shard
    the input part is streamed in batches through ``process`` into the shard's output part."""

    def __init__(self, stage_cls: type[MapStage], config: StageConfig, state: Any):
        self.stage_cls, self.config, self.state = stage_cls, config, state
        self.stage: MapStage | None = None

    def setup(self) -> None:
        if self.stage is None:
            self.stage = self.stage_cls(self.config)
            self.stage.setup(self.state)

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        stage = self.stage
        assert stage is not None
        path = Location.of(task.payload)
        schema = stage.output_schema(read_schema(path))
        if schema is not None:
            out.data.schema = schema
        rows_in = rows_out = bytes_in = bytes_out = 0
        rejected: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        added: Counter[str] = Counter()
        stats: dict[str, Any] = {}
        for batch in iter_batches(path, stage.batch_rows):
            res = stage.process(batch)
            rows_in += batch.num_rows
            bytes_in += batch.nbytes
            out.data.write(res.kept)
            rows_out += res.kept.num_rows
            bytes_out += res.kept.nbytes
            if res.rejected is not None and res.rejected.num_rows:
                out.rejects.write(res.rejected)
                rejected.update(Counter(res.rejected.column("reason").to_pylist()))
            dropped.update(res.dropped)
            added.update(res.added)
            merge_stats(stats, res.stats)
        if out.data.schema is None:  # an empty input part: keep the input's schema
            out.data.schema = read_schema(path)
        if stage.reconciles_rows:
            lhs = rows_in + sum(added.values())
            rhs = rows_out + sum(dropped.values()) + sum(rejected.values())
            if lhs != rhs:
                raise AssertionError(f"{stage.type_name}: rows do not reconcile in {path.name}: {lhs} != {rhs}")
        return {
            "rows_in": rows_in, "rows_out": rows_out, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "rejected": dict(rejected), "dropped": dict(dropped), "added": dict(added), "stats": stats,
        }


def empty_like(table: pa.Table) -> pa.Table:
    return table.schema.empty_table()
