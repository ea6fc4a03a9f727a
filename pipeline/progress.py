"""Progress for long runs: a live rich display on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class _StageProgress:
    total: int = 0
    done: int = 0
    rows: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)


class Reporter:
    """Receives stage and shard events from the runner."""

    def __init__(self, console: Console | None = None, live: bool | None = None, interval_s: float = 10.0):
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.interval_s = interval_s
        self._stages: dict[str, _StageProgress] = {}
        self._last_line = -math.inf  # the first progress line always prints (monotonic() starts near boot)
        self._progress: Progress | None = None
        self._task_ids: dict[str, int] = {}

    # lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Reporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]:<14}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("shards  {task.fields[rows]:>10} rows  {task.fields[mb]:>8} MB  {task.fields[rate]:>9}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    # events ------------------------------------------------------------------------------
    def stage_started(self, name: str, stage_type: str) -> None:
        self._stages[name] = _StageProgress()
        if self._progress is not None:
            self._task_ids[name] = self._progress.add_task(name, total=None, stage=name, rows="0", mb="0.0", rate="")
        else:
            self.message(f"[{name}] running ({stage_type})")

    def stage_total(self, name: str, shards: int) -> None:
        st = self._stages.setdefault(name, _StageProgress())
        st.total += shards
        if self._progress is not None and name in self._task_ids:
            self._progress.update(self._task_ids[name], total=st.total)

    def shard_done(self, name: str, rows: int, nbytes: int, resumed: bool = False) -> None:
        st = self._stages.setdefault(name, _StageProgress())
        st.done += 1
        st.rows += rows
        st.bytes += nbytes
        elapsed = max(1e-6, time.monotonic() - st.started)
        rate = f"{st.bytes / elapsed / 1e6:.1f} MB/s"
        if self._progress is not None and name in self._task_ids:
            self._progress.update(
                self._task_ids[name], completed=st.done, rows=f"{st.rows:,}", mb=f"{st.bytes / 1e6:.1f}", rate=rate
            )
        elif time.monotonic() - self._last_line >= self.interval_s or st.done == st.total:
            self._last_line = time.monotonic()
            eta = f", ETA {elapsed / st.done * (st.total - st.done):.0f}s" if st.total > st.done else ""
            mb = st.bytes / 1e6
            self.message(f"[{name}] {st.done}/{st.total} shards, {st.rows:,} rows, {mb:.1f} MB, {rate}{eta}")

    def stage_finished(self, name: str, manifest: dict) -> None:
        line = (
            f"[{name}] done in {manifest.get('wall_time_s', 0):.1f}s: {manifest.get('rows_in', 0):,} rows in, "
            f"{manifest.get('rows_out', 0):,} out, {manifest.get('rejected', 0):,} rejected"
        )
        dropped = sum(manifest.get("dropped", {}).values())
        if dropped:
            line += f", {dropped:,} dropped"
        if self._progress is not None and name in self._task_ids:
            task = self._task_ids[name]
            total = self._stages[name].total or 1
            self._progress.update(task, total=total, completed=total)
        self.message(line)

    def stage_skipped(self, name: str) -> None:
        self.message(f"[{name}] up to date, skipped")


class QuietReporter(Reporter):
    """No output (tests, library use)."""

    def __init__(self) -> None:
        super().__init__(console=Console(file=io.StringIO()), live=False)

    def message(self, text: str) -> None:
        return None
