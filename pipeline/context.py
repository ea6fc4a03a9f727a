"""What a running stage sees: its inputs, its output folder, Ray helpers and the manifest it fills."""

from __future__ import annotations

import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline import text_tally
from pipeline.executor import SCRATCH_DIR, ShardJob, ShardOutput, ShardTask, SidePass, WorkerError, run_shards
from pipeline.layout import DATA_DIR, REJECTS_DIR, side_dir_name
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
        return (self.dir / DATA_DIR).glob("part-*.parquet")

    def num_rows(self) -> int:
        return sum(parquet_rows(p) for p in self.files)


@dataclass
class RawInput:
    """A ``kind: files`` input for stages that read raw inputs; ``base_dir`` resolves its relative paths."""

    name: str
    spec: FilesInput
    base_dir: Path

    def files(self) -> list[Location]:
        """The input's files, sorted; a path or glob that matches nothing is a LocationError."""
        from pipeline.locations import expand_paths

        return expand_paths(self.spec.paths, self.base_dir, allow_empty=self.spec.allow_empty)


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
    #: another stage of this run may run beside this one (it neither feeds nor reads this one): work
    #: on the driver that could take every core (HF's trainer) then leaves them to Ray's workers
    shares_cores: bool = False

    @property
    def data_dir(self) -> Location:
        return self.work_dir / DATA_DIR

    @property
    def rejects_dir(self) -> Location:
        return self.work_dir / REJECTS_DIR

    def side_dir(self, name: str) -> Location:
        """The folder of side table ``name`` (a cluster table, ...): ``__<name>/``, which readers
        pointed at the stage folder skip (see :mod:`pipeline.layout`); ``pipeline inspect`` lists it."""
        return self.work_dir / side_dir_name(name)

    def warn(self, text: str) -> None:
        """A warning the user must see: printed now and kept in the manifest (``stats.warnings``)."""
        self.manifest.stats.setdefault("warnings", []).append(text)
        if self.reporter:
            self.reporter.message(f"warning: {text}")

    @property
    def scratch_dir(self) -> Location:
        """Working files of this run's passes; the engine removes the folder when the stage commits."""
        return self.work_dir / SCRATCH_DIR

    def artifact(self, field_name: str) -> Location:
        """The file behind a ``RefKind("artifact")`` config field (a stage's artifact or an artifact input)."""
        return self.artifact_paths[field_name]

    def input_files(self) -> list[tuple[DatasetInput, Location]]:
        return [(ds, f) for ds in self.datasets for f in ds.files]

    # ----------------------------------------------------------------------------- Ray helpers

    def map_shards(
        self,
        job: ShardJob,
        tasks: Iterable[ShardTask],
        *,
        use_actors: bool = False,
        reuse_setup: bool = False,
        worker_cpus: float = 1.0,
        max_workers: int | None = None,
        count_rows: bool = True,
        pass_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run a shard job on Ray (see :mod:`pipeline.executor`); adds its counts to the manifest.
        ``tasks`` may be an iterator of tasks that arrive while the pass runs (the progress total
        grows as they do)."""
        streamed = not isinstance(tasks, Sequence)
        label = pass_name if pass_name is not None else _pass_name(job, [] if streamed else tasks, self.config.type)
        if self.reporter:
            self.reporter.stage_total(self.name, 0 if streamed else len(tasks), label)
            if streamed:
                tasks = _counted(tasks, self.reporter, self.name)

        def on_result(task: ShardTask, stats: dict[str, Any], resumed: bool) -> None:
            self.manifest.shards["resumed" if resumed else "run"] += 1
            if self.reporter:
                self.reporter.shard_done(self.name, stats.get("rows_in", 0), stats.get("bytes_in", 0), resumed,
                                         rows_out=stats.get("rows_out"))

        started = time.perf_counter()
        try:
            results = run_shards(
                job, tasks, self.work_dir, use_actors=use_actors, reuse_setup=reuse_setup, worker_cpus=worker_cpus,
                max_workers=max_workers, on_result=on_result, retries=self.config.retries,
            )
        except WorkerError as exc:
            from pipeline.errors import StageFailed, TokenmillError

            if exc.environment:  # one line naming the stage; TOKENMILL_DEBUG=1 adds the worker's traceback
                debug = os.environ.get("TOKENMILL_DEBUG") and exc.traceback
                raise StageFailed(self.name, str(exc) + (f"\n{exc.traceback}" if debug else "")) from None
            if exc.user_error:
                raise TokenmillError(str(exc)) from None
            raise StageFailed(self.name, str(exc)) from None
        if count_rows:
            tally = None
            for stats in results:
                self.manifest.add_shard(stats)
                tally = text_tally.merge(tally, stats.get("text_tally"))
            if tally is not None:  # the text figures of the parts this pass wrote, for the run report
                self.manifest.stats["text"] = tally
        peaks = [s["peak_rss_mb"] for s in results if isinstance(s.get("peak_rss_mb"), int | float)]
        if peaks:  # the largest worker resident size of one shard, per pass: the memory model, measured
            memory = self.manifest.stats.setdefault("peak_task_rss_mb", {})
            memory[label or "main"] = max([*peaks, memory.get(label or "main", 0)])
        # wall seconds and tasks of each pass: where a multi-pass stage's time goes, fixed costs included
        passes = self.manifest.stats.setdefault("passes", {})
        passes[label or "main"] = {"seconds": round(time.perf_counter() - started, 3), "tasks": len(results)}
        return results

    def run_pass(
        self,
        name: str,
        job: ShardJob,
        tasks: Sequence[ShardTask],
        *,
        use_actors: bool = False,
        worker_cpus: float = 1.0,
        max_workers: int | None = None,
    ) -> list[dict[str, Any]]:
        """An extra named pass of this stage that writes side files, not dataset parts.

        Each task runs once per key with its own commit marker (``<name>-<key>``), so the pass
        resumes, retries and shows progress like the stage's main pass; rows are not counted.
        """
        side = SidePass(name, job)
        return self.map_shards(side, side.tasks(tasks), use_actors=use_actors, worker_cpus=worker_cpus,
                               max_workers=max_workers, count_rows=False)

    def map_function(self, name: str, fn: Callable[[Any], Any], payloads: Sequence[Any]) -> list[Any]:
        """``[fn(p) for p in payloads]`` as a pass on Ray workers, results in payload order.

        For small results only (a file's plan, a partition's frequent hashes): each result is
        pickled to the scratch folder under its task's key and read back on the driver, so a
        resumed run reads the results of committed tasks instead of computing them again.
        """
        folder = self.scratch_dir / name
        tasks = [ShardTask(f"{i:05d}", p) for i, p in enumerate(payloads)]
        self.run_pass(name, FunctionJob(fn, folder), tasks)
        return [pickle.loads((folder / f"{t.key}.pkl").read_bytes()) for t in tasks]

    def map_stage(self, stage: MapStage) -> None:
        """Stream every input part through ``stage.process`` (one output part per input part)."""
        state = stage.prepare(self)
        tasks = []
        multi = len(self.datasets) > 1
        for ds, path in self.input_files():
            key = path.stem.removeprefix("part-")
            tasks.append(ShardTask(f"{ds.name}-{key}" if multi else key, path))
        job = getattr(stage, "job_class", MapStageJob)(type(stage), stage.config, state)
        results = self.map_shards(job, tasks, use_actors=stage.use_actors, reuse_setup=stage.reuse_setup,
                                  worker_cpus=stage.worker_cpus, pass_name="")
        merged: dict[str, Any] = {}
        for stats in results:
            merge_stats(merged, stats.get("stats", {}))
        self.manifest.stats.update(merged)
        stage.finish(self, [s.get("stats", {}) for s in results])


def _counted(tasks: Iterable[ShardTask], reporter: Reporter, stage: str) -> Iterator[ShardTask]:
    """``tasks``, each added to the stage's progress total as it arrives."""
    for task in tasks:
        reporter.more_shards(stage, 1)
        yield task


def _pass_name(job: Any, tasks: Sequence[ShardTask], stage_type: str) -> str:
    """A pass's name for progress: a side pass's name, else the job class's (``CountJob`` -> ``count``);
    empty for a stage's own pass (a stage's main job)."""
    import re

    prefix = getattr(job, "prefix", "")
    if prefix:
        return prefix.rstrip("-")
    heads = {m.group(1) if (m := re.match(r"([a-z_]+)-", t.key)) else None for t in tasks}
    if len(heads) == 1 and None not in heads:  # task keys name the pass ("hist-00001", "count-00002")
        return heads.pop()
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(job).__name__.removesuffix("Job")).lower()
    return "" if name in ("", stage_type, "map_stage") else name


class FunctionJob:
    """A shard job calling ``fn(payload)`` and pickling the result to ``folder/<key>.pkl``."""

    def __init__(self, fn: Callable[[Any], Any], folder: Location):
        self.fn, self.folder = fn, folder

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        result = self.fn(task.payload)  # the executor releases the worker's memory after each task
        (self.folder / f"{task.key}.pkl").write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return {}


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
