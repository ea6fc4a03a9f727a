"""Plain-task passes queue one task behind each running one, but never run more than their cap, on
a real local Ray (2 CPUs)."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.executor import ShardOutput, ShardTask, queue_depth, run_shards


class SpanJob:
    """Each shard sleeps a little and records (process id, start, end) in a file named by its key."""

    def __init__(self, marks: str):
        self.marks = Path(marks)

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict:
        start = time.time()
        time.sleep(0.2)
        out.data.write(pa.table({"key": [task.key]}))
        (self.marks / task.key).write_text(f"{os.getpid()} {start} {time.time()}")
        return {"rows_in": 1, "rows_out": 1}


def spans(marks: Path) -> list[tuple[float, float]]:
    rows = [p.read_text().split() for p in marks.iterdir()]
    return sorted((float(a), float(b)) for _, a, b in rows)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted(itertools.chain(((a, 1) for a, _ in intervals), ((b, -1) for _, b in intervals)),
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_queue_depth_queues_only_when_every_slot_is_used():
    assert queue_depth(workers=2, slots=2) == 4  # one queued behind each running task
    assert queue_depth(workers=1, slots=2) == 1  # a cap below the slots: a queued task would run at once
    assert queue_depth(workers=8, slots=8) == 16


@pytest.mark.parametrize("reuse", [False, True], ids=["tasks", "kept-setup tasks"])
@pytest.mark.parametrize("max_workers", [1, 2])
def test_tasks_never_exceed_the_cap_and_all_commit(ray_local, tmp_path, reuse, max_workers):
    marks = tmp_path / "marks"
    marks.mkdir()
    tasks = [ShardTask(f"{i:05d}", i) for i in range(8)]
    results = run_shards(SpanJob(str(marks)), tasks, tmp_path / "work", reuse_setup=reuse,
                         max_workers=max_workers)
    assert len(results) == 8 and all(r["rows_out"] == 1 for r in results)
    assert sorted(p.name for p in (tmp_path / "work" / "data").iterdir()) == [f"part-{t.key}.parquet" for t in tasks]
    assert most_at_once(spans(marks)) <= max_workers
