"""Progress for long runs: a live rich display on a terminal, periodic plain lines otherwise.

Multi-pass stages (label then sample; signatures, pairs, then filter; count, score, then mask)
report each pass by name with its own shard total, so a display never shows a stage at 100 %
after its first pass and then falling back. Rows are shown as rows in and, where a stage changes the
count (documents in, sequences out; copies added), rows out; the done line adds up:
``in + added = out + dropped + rejected``.
"""

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
    rows_out: int = 0
    label: str = ""  # the pass's name ("" for a stage's only pass)
    passes: int = 0  # passes started so far (for the stage entry)


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
        self._passes: dict[str, _StageProgress] = {}  # the current pass of each stage

    # lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Reporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("shards  {task.fields[rows]:>22}  {task.fields[mb]:>8} MB  {task.fields[rate]:>9}"),
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
        self._passes[name] = self._stages[name]
        if self._progress is not None:
            self._task_ids[name] = self._progress.add_task(name, total=None, stage=name, rows="", mb="", rate="")
        else:
            self.message(f"[{name}] running ({stage_type})")

    def stage_total(self, name: str, shards: int, pass_name: str | None = None) -> None:
        """A pass of ``shards`` shards starts (``pass_name`` for stages with several passes)."""
        st = self._stages.setdefault(name, _StageProgress())
        st.passes += 1
        if not pass_name and st.passes == 1:  # the stage's own (first, unnamed) pass: the stage entry itself
            st.total += shards
            ps = st
        else:
            label = pass_name or f"pass {st.passes}"
            ps = _StageProgress(total=shards, label=label)
        self._passes[name] = ps
        if self._progress is not None:
            shown = f"{name} · {ps.label}" if ps.label else name
            task = self._task_ids.get(name)
            if task is not None and (st.passes == 1):
                self._progress.update(task, total=shards, completed=0, stage=shown, rows="0 rows", mb="0.0")
                self._task_ids[f"{name}\0{st.passes}"] = task
            else:
                self._task_ids[f"{name}\0{st.passes}"] = self._progress.add_task(
                    shown, total=shards, stage=shown, rows="0 rows", mb="0.0", rate="")

    def more_shards(self, name: str, shards: int) -> None:
        """The current pass has ``shards`` more shards than it had (tasks that arrive while it runs)."""
        st = self._stages.setdefault(name, _StageProgress())
        ps = self._passes.setdefault(name, st)
        ps.total += shards
        task = self._task_ids.get(f"{name}\0{st.passes}")
        if self._progress is not None and task is not None:
            self._progress.update(task, total=ps.total)

    def shard_done(self, name: str, rows: int, nbytes: int, resumed: bool = False, rows_out: int | None = None) -> None:
        st = self._stages.setdefault(name, _StageProgress())
        ps = self._passes.setdefault(name, st)
        ps.done += 1
        ps.rows += rows
        ps.bytes += nbytes
        ps.rows_out += rows if rows_out is None else rows_out
        if ps is not st:
            st.rows, st.bytes = st.rows + rows, st.bytes + nbytes
        elapsed = max(1e-6, time.monotonic() - ps.started)
        rate = f"{ps.bytes / elapsed / 1e6:.1f} MB/s"
        rows_text = f"{ps.rows:,} rows" + (f" → {ps.rows_out:,} out" if ps.rows_out != ps.rows else "")
        task = self._task_ids.get(f"{name}\0{st.passes}")
        if self._progress is not None and task is not None:
            self._progress.update(task, completed=ps.done, rows=rows_text, mb=f"{ps.bytes / 1e6:.1f}", rate=rate)
        elif time.monotonic() - self._last_line >= self.interval_s or ps.done == ps.total:
            self._last_line = time.monotonic()
            eta = f", ETA {elapsed / ps.done * (ps.total - ps.done):.0f}s" if ps.total > ps.done else ""
            where = f"{ps.label}: " if ps.label else ""
            # a pass that reports no rows or bytes (side passes writing signatures, counts) shows none
            figures = "".join([f", {rows_text}" if ps.rows or ps.rows_out else "",
                               f", {ps.bytes / 1e6:.1f} MB, {rate}" if ps.bytes else ""])
            self.message(f"[{name}] {where}{ps.done}/{ps.total} shards{figures}{eta}")

    def stage_finished(self, name: str, manifest: dict) -> None:
        line = (
            f"[{name}] done in {manifest.get('wall_time_s', 0):.1f}s: {manifest.get('rows_in', 0):,} rows in, "
            f"{manifest.get('rows_out', 0):,} out, {manifest.get('rejected', 0):,} rejected"
        )
        dropped = sum(manifest.get("dropped", {}).values())
        if dropped:
            line += f", {dropped:,} dropped"
        added = sum((manifest.get("added") or {}).values())
        if added:
            line += f", {added:,} added"
        st = self._stages.get(name) or _StageProgress()
        if self._progress is not None and name in self._task_ids and not st.passes:
            # a stage without shard passes (tokenizer training): its rows come from the manifest
            self._progress.update(self._task_ids[name], total=1, completed=1,
                                  rows=f"{manifest.get('rows_in', 0):,} rows")
        self.message(line)

    def stage_skipped(self, name: str) -> None:
        self.message(f"[{name}] up to date, skipped")


class QuietReporter(Reporter):
    """No output (tests, library use)."""

    def __init__(self) -> None:
        super().__init__(console=Console(file=io.StringIO()), live=False)

    def message(self, text: str) -> None:
        return None
