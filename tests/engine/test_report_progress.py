"""Progress in non-interactive logs: periodic plain lines with rows, MB, rate and ETA, no live display."""

from __future__ import annotations

import io
import re

from rich.console import Console

from pipeline.progress import Reporter


def test_periodic_lines_carry_rate_and_eta_until_the_stage_is_done():
    buf = io.StringIO()
    rep = Reporter(console=Console(file=buf, width=200), live=None, interval_s=0)
    assert rep.live is False  # a StringIO is not a terminal: no live display
    with rep:
        rep.stage_started("encode", "encode")
        rep.stage_total("encode", 3)
        for _ in range(3):
            rep.shard_done("encode", rows=1000, nbytes=2_000_000)
        rep.stage_finished("encode", {"wall_time_s": 1.0, "rows_in": 3000, "rows_out": 3000, "rejected": 0})
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[encode] running (encode)"
    assert re.fullmatch(r"\[encode\] 1/3 shards, 1,000 rows, 2\.0 MB, [\d.]+ MB/s, ETA \d+s", lines[1])
    assert re.fullmatch(r"\[encode\] 3/3 shards, 3,000 rows, 6\.0 MB, [\d.]+ MB/s", lines[3])  # done: no ETA
    assert lines[4].startswith("[encode] done in 1.0s: 3,000 rows in, 3,000 out")


def test_lines_are_throttled_to_the_interval():
    buf = io.StringIO()
    rep = Reporter(console=Console(file=buf, width=200), live=False, interval_s=3600)
    rep.stage_started("ingest", "ingest")
    rep.stage_total("ingest", 100)
    for _ in range(50):
        rep.shard_done("ingest", rows=1, nbytes=1)
    assert len(buf.getvalue().splitlines()) == 2  # the start line and the first progress line only


def test_each_pass_has_its_name_and_total_and_the_done_line_adds_up():
    buf = io.StringIO()
    rep = Reporter(console=Console(file=buf, width=200), live=False, interval_s=0)
    rep.stage_started("balance", "balance")
    rep.stage_total("balance", 2, "label")
    for _ in range(2):
        rep.shard_done("balance", rows=10, nbytes=1000)
    rep.stage_total("balance", 3, "sample")
    for _ in range(3):
        rep.shard_done("balance", rows=10, nbytes=1000, rows_out=14)
    rep.stage_finished("balance", {"wall_time_s": 2.0, "rows_in": 30, "rows_out": 42, "rejected": 0,
                                   "dropped": {"sampled_out": 3}, "added": {"copies": 15}})
    lines = buf.getvalue().splitlines()
    assert re.fullmatch(r"\[balance\] label: 1/2 shards, 10 rows, 0\.0 MB, [\d.]+ MB/s, ETA \d+s", lines[1])
    assert re.fullmatch(r"\[balance\] label: 2/2 shards, 20 rows, 0\.0 MB, [\d.]+ MB/s", lines[2])
    # the second pass starts again from 0 of its own total: never 8/12 after a 100 %
    assert re.fullmatch(r"\[balance\] sample: 1/3 shards, 10 rows → 14 out, .*ETA \d+s", lines[3])
    assert re.fullmatch(r"\[balance\] sample: 3/3 shards, 30 rows → 42 out, .*MB/s", lines[5])
    done = lines[6]
    assert done == "[balance] done in 2.0s: 30 rows in, 42 out, 0 rejected, 3 dropped, 15 added"
    assert 30 + 15 == 42 + 3  # what the line shows reconciles


def test_pack_counts_sequences_out_and_a_shardless_stage_shows_its_rows_when_done():
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=True, color_system=None)
    with Reporter(console=console, live=True) as rep:
        rep.stage_started("tokenizer", "train_tokenizer")
        rep.stage_finished("tokenizer", {"wall_time_s": 1.0, "rows_in": 3532, "rows_out": 3532, "rejected": 0})
        rep.stage_started("pack", "pack")
        rep.stage_total("pack", 2)
        rep.shard_done("pack", rows=100, nbytes=10, rows_out=40)
        rep.shard_done("pack", rows=100, nbytes=10, rows_out=41)
        rep.stage_finished("pack", {"wall_time_s": 1.0, "rows_in": 200, "rows_out": 81, "rejected": 0})
    out = buf.getvalue()
    assert "3,532 rows" in out and "200 rows → 81 out" in out


def test_pass_names_come_from_side_passes_task_keys_or_the_job():
    from pipeline.context import _pass_name
    from pipeline.executor import ShardTask, SidePass

    class MaskJob:
        pass

    class IngestJob:
        pass

    keys = [ShardTask(k, None) for k in ("00000", "00001")]
    assert _pass_name(SidePass("label", MaskJob()), keys, "balance") == "label"
    assert _pass_name(MaskJob(), [ShardTask(f"hist-{k.key}", None) for k in keys], "clean") == "hist"
    assert _pass_name(MaskJob(), keys, "clean") == "mask"
    assert _pass_name(IngestJob(), keys, "ingest") == ""  # a stage's own pass: no label


def test_a_pass_whose_shards_arrive_as_it_runs_grows_its_total():
    """Ingest's tasks of one big file arrive as the plan cuts its ranges: the total follows them."""
    buf = io.StringIO()
    rep = Reporter(console=Console(file=buf, width=200), live=False, interval_s=0)
    rep.stage_started("ingest", "ingest")
    rep.stage_total("ingest", 0)
    rep.more_shards("ingest", 1)
    rep.shard_done("ingest", rows=5, nbytes=1000)
    rep.more_shards("ingest", 1)
    rep.more_shards("ingest", 1)
    rep.shard_done("ingest", rows=5, nbytes=1000)
    rep.shard_done("ingest", rows=5, nbytes=1000)
    lines = buf.getvalue().splitlines()
    assert re.fullmatch(r"\[ingest\] 1/1 shards, 5 rows, .*MB/s", lines[1])
    assert re.fullmatch(r"\[ingest\] 2/3 shards, 10 rows, .*ETA \d+s", lines[2])
    assert re.fullmatch(r"\[ingest\] 3/3 shards, 15 rows, .*MB/s", lines[3])
