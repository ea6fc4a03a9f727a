"""Fault tolerance inside a stage: a worker process that dies under a shard is retried (tasks) or
restarted and set up again (actors, tasks with a kept set-up), per the stage's ``retries``
setting; with retries switched off the stage fails with a message that says so. The worker really
dies (``os._exit``), on a real Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.executor import ShardOutput, ShardTask, WorkerError, run_shards
from pipeline.parquet_io import read_table
from pipeline.stage_api import RetryConfig

TASKS = [ShardTask(f"{i:05d}", i) for i in range(4)]


class DiesOnceJob:
    """Writes one row per shard; the first attempt at shard 00002 kills its own worker process."""

    def __init__(self, marks: str):
        self.marks = Path(marks)

    def setup(self) -> None:
        (self.marks / f"setup-{os.getpid()}-{len(list(self.marks.glob('setup-*')))}").touch()

    def run(self, task: ShardTask, out: ShardOutput) -> dict:
        death = self.marks / f"died-{task.key}"
        if task.key == "00002" and not death.exists():
            death.touch()
            os._exit(1)  # the process dies mid-shard, as under the OOM killer or a lost node
        out.data.write(pa.table({"key": [task.key], "value": [task.payload * 10]}))
        return {"rows_in": 1, "rows_out": 1}


MODES = {"tasks": {}, "actors": {"use_actors": True}, "kept-setup tasks": {"reuse_setup": True}}


@pytest.mark.parametrize("mode", MODES)
def test_a_dead_worker_is_retried_and_the_output_is_complete(ray_local, tmp_path, mode):
    marks = tmp_path / "marks"
    marks.mkdir()
    results = run_shards(DiesOnceJob(str(marks)), TASKS, tmp_path / "work", **MODES[mode])
    assert (marks / "died-00002").exists()  # the worker really died once
    assert [r["rows_out"] for r in results] == [1, 1, 1, 1]
    table = read_table(sorted((tmp_path / "work" / "data").glob("part-*.parquet")))
    assert table.column("key").to_pylist() == [t.key for t in TASKS]
    assert table.column("value").to_pylist() == [0, 10, 20, 30]
    if mode != "tasks":  # the process that died was replaced by one that set the job up again
        assert len(list(marks.glob("setup-*"))) >= 2


@pytest.mark.parametrize("mode", MODES)
def test_with_retries_off_the_stage_fails_and_says_why(ray_local, tmp_path, mode):
    marks = tmp_path / "marks"
    marks.mkdir()
    off = RetryConfig(max_task_retries=0, max_actor_restarts=0)
    with pytest.raises(WorkerError, match="retries are used up") as info:
        run_shards(DiesOnceJob(str(marks)), TASKS, tmp_path / "work", retries=off, **MODES[mode])
    assert "max_task_retries=0" in str(info.value)
    assert (marks / "died-00002").exists()


def test_retries_are_not_part_of_the_fingerprint():
    from pipeline.spec import parse_spec

    base = "name: t\ninputs:\n  raw: {paths: [d.jsonl]}\nstages:\n  - {name: ingest, type: ingest, inputs: [raw]"
    plain = parse_spec(base + "}\n").stages[0]
    tuned = parse_spec(base + ", retries: {max_task_retries: 10, max_actor_restarts: 2}}\n").stages[0]
    assert tuned.retries.max_task_retries == 10
    assert plain.fingerprint_payload() == tuned.fingerprint_payload()


class CountsSetupsJob:
    """Records each ``setup`` and each shard with the worker's process id."""

    def __init__(self, marks: str):
        self.marks = Path(marks)
        self.ready = False

    def setup(self) -> None:
        assert not self.ready, "a set-up job was set up again"
        self.ready = True
        (self.marks / f"setup-{os.getpid()}-{len(list(self.marks.glob('setup-*')))}").touch()

    def run(self, task: ShardTask, out: ShardOutput) -> dict:
        (self.marks / f"shard-{task.key}-{os.getpid()}").touch()
        out.data.write(pa.table({"key": [task.key]}))
        return {"rows_in": 1, "rows_out": 1}


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "kept"])
def test_reuse_setup_sets_the_job_up_once_per_worker_process(ray_local, tmp_path, reuse):
    marks = tmp_path / "marks"
    marks.mkdir()
    tasks = [ShardTask(f"{i:05d}", i) for i in range(12)]
    run_shards(CountsSetupsJob(str(marks)), tasks, tmp_path / "work", reuse_setup=reuse)
    setups = list(marks.glob("setup-*"))
    workers = {p.name.split("-")[2] for p in marks.glob("shard-*")}
    assert len(list(marks.glob("shard-*"))) == 12
    if reuse:  # one set-up per worker process that ran shards of this pass, not one per shard
        assert len(setups) == len(workers) <= 2
        # a second pass is a new job: set up again, never the first pass's kept one
        run_shards(CountsSetupsJob(str(marks)), [ShardTask(f"b{i}", i) for i in range(4)], tmp_path / "work2",
                   reuse_setup=True)
        assert len(list(marks.glob("setup-*"))) > len(setups)
    else:
        assert len(setups) == 12
