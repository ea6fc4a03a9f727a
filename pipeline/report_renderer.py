"""The run report's charts drawn beside the run, in a low-priority process of its own.

Why: importing matplotlib and drawing the charts (about 0.2 s each) were the last 2.5-3 s of a
``pipeline run`` (the six-stage benchmark spec at 1x: import 0.5 s, nine charts 2.2 s of a 25 s
run), on one core, after every stage had finished. A stage's charts read only its own manifest and
output (``Stage.report``), so this process draws them as each stage commits (importing matplotlib
at the first stage that has charts), at the lowest CPU priority (``SCHED_IDLE``, else nice 19: with
the time the stages leave idle, not theirs), and at the end draws the run-wide charts (funnel, time
per stage, lengths: SVG, :mod:`pipeline.svg_charts`) and writes the report. The page is
the one :func:`pipeline.report.build_report` writes in the driver (tested byte for byte), which
stays the fallback when this process is not there, fails or is too slow, and the only way for an
output on an object store (this process is given a local path).

Protocol, one line each on stdin: ``stage NAME`` (NAME committed: draw its charts), then ``report``
(write the report, answer ``done`` on stdout, exit). End of input without ``report`` (the driver
ended or died) exits without writing anything.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from pipeline.locations import Location

#: seconds the driver waits for the report before it kills this process and writes the report itself
REPORT_TIMEOUT_S = 300.0


class ReportRenderer:
    """Driver side: starts the renderer process, tells it which stages committed, waits for the report."""

    def __init__(self, output: Location) -> None:
        package_root = str(Path(__file__).resolve().parents[1])  # importable whatever the driver's sys.path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", "pipeline.report_renderer", str(output)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    @classmethod
    def start(cls, output: Location) -> ReportRenderer | None:
        """A renderer for ``output``, or None when its process cannot start (the driver draws the report)."""
        try:
            return cls(output)
        except OSError:
            return None

    def stage_committed(self, name: str) -> None:
        self._send(f"stage {name}\n")

    def write_report(self, timeout: float = REPORT_TIMEOUT_S) -> bool:
        """Ask for the report and wait for it; False (the process is gone) when it was not written."""
        if not self._send("report\n"):
            return False
        assert self.proc is not None
        try:
            answer, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return False
        written = self.proc.returncode == 0 and answer.strip() == "done"
        self.proc = None
        return written

    def close(self) -> None:
        """Stop the process if it still runs (a failed or interrupted run); idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def _send(self, line: str) -> bool:
        if self.proc is None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):  # it died: the driver writes the report itself
            self.close()
            return False
        return True


def _die_with_the_driver() -> None:
    """On Linux, end with the driver even mid-chart (PR_SET_PDEATHSIG); elsewhere the end of stdin does."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    _die_with_the_driver()
    with contextlib.suppress(OSError):
        os.nice(19)
    with contextlib.suppress(OSError, AttributeError):
        # below nice 19: Ray's workers run at nice 15 by default, against which nice 19 still gets ~30 %
        # of a shared core; SCHED_IDLE runs only on a core nothing else wants (Linux)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from pipeline.report import StageCharts, build_report, stage_charts

    output = Location.of(argv[0])
    drawn: dict[str, StageCharts] = {}
    for line in sys.stdin:
        command, _, name = line.rstrip("\n").partition(" ")
        if command == "stage":
            try:
                drawn[name] = stage_charts(output, name)
            except Exception:  # drawn again, in the same way, by build_report
                drawn.pop(name, None)
        elif command == "report":
            build_report(output, drawn)
            print("done", flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
