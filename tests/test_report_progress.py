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
