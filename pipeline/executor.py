"""Run per-shard work on Ray: Ray Data schedules, each shard streams Arrow batches to its own part file.

Why shards and not ``read_parquet().map_batches().write_parquet()``: Ray Data's Parquet sink names
files randomly and moves block boundaries between runs (measured on Ray 2.60), so outputs would be neither
byte-identical nor resumable per file. Here the unit of work is a shard with a deterministic key;
a worker streams the shard's input in bounded Arrow batches through the stage's pure transform
into ``part-<key>.parquet`` (temp file, then rename), then writes ``_shards/<key>.json`` with its
counts -- the commit point. A re-run after a crash skips every committed shard. Ray Data does the
scheduling: task or actor pools, retries of failed workers, backpressure.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.layout import REJECTS_DIR
from pipeline.locations import Location
from pipeline.manifest import read_json
from pipeline.memory import peak_rss_mb, release_memory, release_memory_if_grown, reset_peak_rss
from pipeline.parquet_io import REJECT_SCHEMA, PartWriter
from pipeline.retries import RetryConfig

SHARDS_DIR = "_shards"
#: a stage's scratch folder (pass results, partitions): removed when the stage commits
SCRATCH_DIR = "_scratch"


@dataclass(frozen=True)
class ShardTask:
    """One unit of work. ``key`` names its output (``part-<key>.parquet``); payload is picklable."""

    key: str
    payload: Any


class ShardOutput:
    """Where a shard writes: its data part and its rejects part, committed together.

    A shard whose input has no size bound (a whole compressed file) writes its data as a series of
    parts instead (:meth:`start_rolling`, :meth:`roll`), so that every part, and the memory of every
    stage that reads one, stays bounded whatever the input's size."""

    def __init__(self, work_dir: Location | Path, key: str, schema: Any = None):
        work_dir = Location.of(work_dir)
        self.key = key
        self.data = PartWriter(work_dir / "data", f"part-{key}", schema=schema, tally=True)
        self.rejects = PartWriter(work_dir / REJECTS_DIR, f"part-{key}", schema=REJECT_SCHEMA, write_empty=False)
        self.finished: list[PartWriter] = []  # the earlier parts of a rolling shard

    def start_rolling(self) -> None:
        """Name the data parts ``part-<key>-0000``, ``-0001``, ... (in the order :meth:`roll` starts
        them, which is also their names' order); call before the first write."""
        self.data = self._part(0)

    def roll(self) -> None:
        """Close the current data part (committed with the shard) and start the next one."""
        self.finished.append(self.data)
        self.data = self._part(len(self.finished))

    def _part(self, n: int) -> PartWriter:
        old = self.data
        return PartWriter(old.final.parent, f"part-{self.key}-{n:04d}", schema=old.schema,
                          options=old.options, tally=True)

    def tally_stats(self) -> dict[str, Any] | None:
        """The text figures of the shard's data parts (:mod:`pipeline.text_tally`), None without text."""
        from pipeline import text_tally

        merged = None
        for part in [*self.finished, self.data]:
            if part.tally is not None:
                merged = text_tally.merge(merged, part.tally.to_stats())
        return merged

    def commit(self) -> tuple[int, int]:
        return sum(p.commit() for p in [*self.finished, self.data]), self.rejects.commit()

    def abort(self) -> None:
        for part in [*self.finished, self.data]:
            part.abort()
        self.rejects.abort()


class ShardJob(Protocol):
    """Picklable work shipped to Ray workers. ``setup`` runs once per worker process or actor."""

    def setup(self) -> None: ...

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]: ...


class SidePass:
    """Runs a job that writes only side files (no dataset part) as an extra pass of a stage.

    Its tasks are the stage's shard tasks with their keys prefixed by ``name`` (so each pass has its
    own commit markers for resume); the job sees the plain key, which names its side files.
    """

    def __init__(self, name: str, job: ShardJob):
        self.prefix, self.job = f"{name}-", job

    def tasks(self, tasks: Sequence[ShardTask]) -> list[ShardTask]:
        return [ShardTask(self.prefix + t.key, t.payload) for t in tasks]

    def setup(self) -> None:
        self.job.setup()

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        out.data.write_empty = False
        return self.job.run(ShardTask(task.key.removeprefix(self.prefix), task.payload), out)


class WorkerError(Exception):
    """A shard raised: ``user_error`` marks input and environment errors (one line), others carry a
    traceback. ``environment`` marks an OSError (denied, EIO, disk full), whose worker traceback is
    kept in ``traceback`` for ``TOKENMILL_DEBUG=1``."""

    def __init__(self, message: str, user_error: bool, environment: bool = False, traceback: str = ""):
        super().__init__(message)
        self.user_error, self.environment, self.traceback = user_error, environment, traceback


def shard_done(work_dir: Location, key: str) -> dict[str, Any] | None:
    return read_json(work_dir / SHARDS_DIR / f"{key}.json")


def _run_one(job: ShardJob, work_dir: Location, task: ShardTask) -> dict[str, Any]:
    from pipeline.errors import TokenmillError

    out = ShardOutput(work_dir, task.key)
    reset_peak_rss()
    try:
        stats = job.run(task, out)
        data_bytes, _ = out.commit()
        stats.setdefault("part_bytes", data_bytes)
        text = out.tally_stats() if data_bytes else None
        if text is not None:  # the report's text figures of this part (pipeline.text_tally)
            stats["text_tally"] = text
        # the worker's peak resident size during this shard: the manifest's memory per pass
        stats.setdefault("peak_rss_mb", peak_rss_mb())
    except TokenmillError as exc:
        out.abort()
        return {"__error__": str(exc), "__user__": True}
    except OSError as exc:  # the environment, not the code: a denied or failing read, a full disk
        tb = traceback.format_exc()
        with contextlib.suppress(OSError):  # taking back a part may fail on the same disk
            out.abort()
        return {"__error__": _os_error_line(exc, task.key), "__user__": True, "__env__": True, "__tb__": tb}
    except Exception:
        out.abort()
        return {"__error__": traceback.format_exc(), "__user__": False}
    # the shard's commit point (written whole: renamed into place, or one upload)
    (work_dir / SHARDS_DIR / f"{task.key}.json").write_text(json.dumps(stats, sort_keys=True, default=str))
    return stats


def _os_error_line(exc: OSError, key: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"shard {key}: {type(exc).__name__}: {text}"


def _actor_class(job: ShardJob, work_dir: Location, tasks: list[ShardTask]) -> type:
    """A Ray Data callable class that sets the job up once per actor (tokenizers, models).

    The job travels inside the class definition (a closure) rather than as constructor arguments,
    which Ray Data would put in the object store (and warn about for restartable actors).
    """

    class ShardActor:
        def __init__(self) -> None:
            self.job, self.work_dir, self.tasks = job, work_dir, tasks
            self.job.setup()

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = [_run_one(self.job, self.work_dir, self.tasks[int(i)]) for i in batch["i"]]
            release_memory()  # this actor lives on: it should not keep one shard's peak for the next
            return {"i": batch["i"], "result": np.array([json.dumps(r, default=str) for r in results], dtype=object)}

    return ShardActor


def run_shards(
    job: ShardJob,
    tasks: Iterable[ShardTask],
    work_dir: Location | Path,
    *,
    use_actors: bool = False,
    reuse_setup: bool = False,
    worker_cpus: float = 1.0,
    max_workers: int | None = None,
    on_result: Callable[[ShardTask, dict[str, Any], bool], None] | None = None,
    retries: RetryConfig | None = None,
) -> list[dict[str, Any]]:
    """Run ``job`` over ``tasks`` on Ray; returns per-task stats in task order.

    ``tasks`` may be an iterator that yields while the pass runs (ingest's plan of one big
    compressed file, cut into ranges as it is read): plain tasks are then submitted as they arrive,
    so the workers start on the first range instead of waiting for the whole plan (the actor path
    takes them all first). While the embedded Ray is still starting (:func:`pipeline.ray_session.ray_starting`)
    the plan goes on instead of waiting: the driver's cutting fills the start's idle cores.

    Tasks committed by an earlier, interrupted run of the same stage are not run again.
    ``on_result(task, stats, resumed)`` is called as shards finish (for progress display).
    ``retries``: how often Ray re-runs a shard whose worker died and restarts a dead actor (a re-run
    rewrites the same part file from scratch, so the output does not depend on how often it ran).
    ``reuse_setup``: plain tasks, but each worker process keeps the job it set up for the pass's
    later shards (:func:`_set_up_job`): a costly ``setup`` (a tokenizer) runs once per worker
    without a dedicated actor's process start and Ray Data's planning (measured on the encode stage).
    """
    import ray

    from pipeline.ray_session import configure_data_context, ray_starting, wait_for_ray

    work_dir = Location.of(work_dir)
    results: dict[str, dict[str, Any]] = {}
    seen: list[ShardTask] = []
    # one listing, then only the markers that exist are read (one request each on an object store)
    committed = {m.name for m in (work_dir / SHARDS_DIR).glob("*.json")}

    def to_run(source: Iterable[ShardTask]) -> Iterator[ShardTask]:
        """The tasks not committed by an earlier run, as they arrive (the others' results are read)."""
        for task in source:
            seen.append(task)
            done = shard_done(work_dir, task.key) if f"{task.key}.json" in committed else None
            if done is not None:
                results[task.key] = done
                if on_result:
                    on_result(task, done, True)
            else:
                yield task

    arriving = to_run(tasks)
    streamed = not isinstance(tasks, Sequence) and not use_actors
    if streamed:  # the first task, and more while the embedded Ray starts; the others as the pass runs
        pending: list[ShardTask] = []
        while (not pending or ray_starting()) and (nxt := next(arriving, None)) is not None:
            pending.append(nxt)
    else:
        pending = list(arriving)

    if pending:
        wait_for_ray()  # the embedded Ray may still be starting (pipeline.ray_session.ray_session_in_background)
        cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        cap = int(os.environ.get("TOKENMILL_MAX_WORKERS", "0")) or cluster_cpus  # a cap for tests and shared hosts
        slots = max(1, int(cluster_cpus / worker_cpus))  # how many of this pass's tasks Ray can run at once
        workers = max(1, min(slots if streamed else len(pending), max_workers or cap, cap, slots))
        retries = retries or RetryConfig()
        if use_actors:
            import ray.data  # only here: importing Ray Data cost the driver 0.4-0.9 s on every run

            configure_data_context()
            ds = ray.data.from_items([{"i": i} for i in range(len(pending))], override_num_blocks=len(pending))
            # Ray 2.60 has no named map_batches parameter for retries yet; the pin (==2.60.0) keeps
            # **ray_remote_args working, so its deprecation notice is silenced here and only here.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            actor_args: dict[str, Any] = {"max_restarts": retries.max_actor_restarts}
            if retries.max_actor_restarts != 0:  # Ray retries an actor's task only on a restarted actor
                actor_args["max_task_retries"] = retries.max_task_retries
            ds = ds.map_batches(
                _actor_class(job, work_dir, list(pending)),
                batch_size=1,
                # every actor starts at once (initial_size): with min_size=1 alone the pool began with one
                # actor and Ray Data added the second only after ~10 s (measured on the encode stage, 15
                # shards on 2 CPUs); min_size=1 keeps the pool allowed to shrink, and no task waits on a
                # CPU the actors hold (the input is from_items: no read tasks)
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
                num_cpus=worker_cpus,
                **actor_args,
            )
            try:
                for row in ds.iter_rows():
                    task = pending[int(row["i"])]
                    _accept(task, json.loads(row["result"]), results, on_result)
            except ray.exceptions.RayError as exc:
                raise _worker_died(exc, retries) from None
        else:
            # Plain Ray tasks, at most ``workers`` running (see queue_depth): a Ray Data execution costs 1.5-2 s of
            # planning and start-up per pass here (measured: 8 empty shards 1.6-2.0 s through
            # Ray Data, 0.02 s as tasks), which multi-pass stages paid on every pass.
            run_remote = ray.remote(_run_task).options(num_cpus=worker_cpus, max_retries=retries.max_task_retries)
            # the job travels nested in a list so Ray does not resolve it: a worker that kept the set-up
            # job of this pass (``reuse_setup``) does not deserialise it again
            token = uuid.uuid4().hex if reuse_setup else ""
            job_ref, queue, in_flight = [ray.put(job)], list(pending), {}
            depth = queue_depth(workers, slots)
            more = streamed  # tasks may still arrive
            try:
                while queue or in_flight or more:
                    while len(in_flight) < depth and (queue or more):
                        if not queue:  # waits for the plan's next task, if it is not there yet
                            nxt = next(arriving, None)
                            if nxt is None:
                                more = False
                                break
                            queue.append(nxt)
                        task = queue.pop(0)
                        in_flight[run_remote.remote(job_ref, token, work_dir, task)] = task
                    if not in_flight:
                        continue
                    done, _ = ray.wait(list(in_flight), num_returns=1)
                    for ref in done:
                        task = in_flight.pop(ref)
                        _accept(task, json.loads(ray.get(ref)), results, on_result)
            except ray.exceptions.RayError as exc:
                raise _worker_died(exc, retries) from None
            finally:  # a failed shard stops the pass: the shards still running are not waited for
                for ref in in_flight:
                    ray.cancel(ref)
    return [results[t.key] for t in seen]


def queue_depth(workers: int, slots: int) -> int:
    """How many tasks of a pass are submitted at once: one queued behind each running one when the
    pass may use every slot Ray has for it, so a worker that finishes a shard starts the next at
    once (Ray hands the queued task to the worker whose lease it already holds, the one whose
    set-up is kept) instead of waiting for the driver to see the result and submit another: that
    wait left each encode worker idle 0.3 s between shards on a loaded host (``idle_in_span``).
    With fewer workers than slots (``TOKENMILL_MAX_WORKERS``, ``max_workers``) queued tasks would
    run at once, beyond the cap: exactly ``workers`` then."""
    return 2 * workers if workers >= slots else workers


#: the job this worker process set up last, by its pass's token (``reuse_setup``); one at most, so a
#: worker holds no more than one pass's set-up state (a tokenizer) once the pass is over
_KEPT_JOB: dict[str, ShardJob] = {}


def _set_up_job(job_ref: list[Any], token: str) -> ShardJob:
    """The pass's job, set up: the kept one when this process already set it up for this pass."""
    import ray

    if token and token in _KEPT_JOB:
        return _KEPT_JOB[token]
    job: ShardJob = ray.get(job_ref[0])
    job.setup()
    if token:
        _KEPT_JOB.clear()
        _KEPT_JOB[token] = job
    return job


#: seconds a worker of a ``reuse_setup`` pass stays idle after a shard before it gives memory back
IDLE_RELEASE_S = 0.5
#: the pending idle release of this worker process (``reuse_setup`` passes)
_IDLE_RELEASE: list[threading.Timer] = []


def _release_when_idle() -> None:
    """Give memory back once this process has run no task for :data:`IDLE_RELEASE_S`.

    Why not after every shard, as other passes do: in a pass that keeps its set-up job the next
    shard follows at once and needs the same memory again; the release (a full collection, Arrow's
    pool, glibc's trim) and faulting the pages back in cost each encode worker 0.3 s between shards
    on a loaded host (``idle_in_span.between`` 3.6-4.5 worker-seconds of a 12 s span, 0.25 s
    without it). A new task cancels the timer; a task of another pass releases first
    (:func:`_run_task`), so the next stage does not carry this one's high-water mark either."""
    timer = threading.Timer(IDLE_RELEASE_S, release_memory_if_grown)
    timer.daemon = True
    _IDLE_RELEASE.append(timer)
    timer.start()


def _cancel_idle_release() -> None:
    while _IDLE_RELEASE:
        _IDLE_RELEASE.pop().cancel()  # a release already running finishes: harmless beside a shard


def _run_task(job_ref: list[Any], token: str, work_dir: Location, task: ShardTask) -> str:
    """One shard as a Ray task: its stats as JSON (the same types as a resumed shard's marker)."""
    _cancel_idle_release()
    if _KEPT_JOB and token not in _KEPT_JOB:  # the pass whose memory this process kept is over
        release_memory_if_grown()
    job = _set_up_job(job_ref, token)
    stats = _run_one(job, work_dir, task)
    if token:
        _release_when_idle()
    else:
        release_memory_if_grown()  # Ray reuses this worker process for later shards and stages
    return json.dumps(stats, default=str)


def _accept(task: ShardTask, stats: dict[str, Any], results: dict[str, dict[str, Any]],
            on_result: Callable[[ShardTask, dict[str, Any], bool], None] | None) -> None:
    if "__error__" in stats:
        raise WorkerError(stats["__error__"], bool(stats["__user__"]), bool(stats.get("__env__")),
                          stats.get("__tb__", ""))
    results[task.key] = stats
    if on_result:
        on_result(task, stats, False)


def _worker_died(exc: Exception, retries: RetryConfig) -> WorkerError:
    """A worker, actor or node died more often than the retries allow."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return WorkerError(f"a Ray worker died and its retries are used up ({type(exc).__name__}: {reason}); "
                       f"retries: max_task_retries={retries.max_task_retries}, "
                       f"max_actor_restarts={retries.max_actor_restarts}", user_error=True)
