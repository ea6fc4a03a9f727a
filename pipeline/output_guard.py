"""What keeps a run from corrupting or deleting data: the output lock and the ownership rules.

**The lock.** ``pipeline run`` holds ``<output>/.tokenmill-lock.json`` (host, pid, start time, a
random token) for the whole run, so two runs never write one output at once; ``plan`` and
``inspect`` only read and take no lock. Locally the file is written whole under a temp name and
hard-linked to the lock's name, which fails when the lock exists (atomic, like ``O_EXCL``, and
never seen half-written). Object stores have no create-if-absent that pyarrow exposes, so there the lock is
written after checking it is absent and then read back: a run whose token is not the one read
back lost the race and stops. The remaining window: two runs that both check before either
writes, and whose read-backs both follow their own writes, can both go on; it is as wide as the
time between one run's check and its write (one request, typically tens of milliseconds).

A lock is never broken silently. One left by a dead process on this host (its pid is gone, or
was reused by a process that started later) or one from another host older than
``TOKENMILL_LOCK_STALE_HOURS`` (default 24) is named as probably stale in the refusal, which says
to re-run with ``pipeline run --break-lock`` once no run uses the output. A lock held by a live
process on this host is never broken.

**Ownership.** tokenmill only replaces what it wrote: a stage folder holding a tokenmill
``manifest.json``, its own ``.tmp/`` work folders, and the root files ``run.json``,
``report.html`` and ``report.json`` only when ``.tokenmill-output.json`` at the output root marks
the folder as a tokenmill output. Anything else in the way is refused, naming its path. Files
tokenmill does not write (notes, other folders) are left alone.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import TokenmillError
from pipeline.locations import Location
from pipeline.manifest import MANIFEST_NAME, read_json, write_json_atomic

LOCK_NAME = ".tokenmill-lock.json"
MARKER_NAME = ".tokenmill-output.json"
ROOT_FILES = ("run.json", "report.html", "report.json")
TMP_DIR = ".tmp"
#: ``.tmp/<stage>-<fingerprint[:16]>`` and ``.tmp/trash-<stage>-<8 hex>`` are tokenmill's
_WORK_DIR = re.compile(r"(?P<stage>.+)-(?P<fp>[0-9a-f]{16})")


class OutputLocked(TokenmillError):
    """Another run holds the output's lock (or a stale lock is in the way)."""


class OutputNotOwned(TokenmillError):
    """Running would replace a file or folder that tokenmill did not write."""


def _stale_hours() -> float:
    return float(os.environ.get("TOKENMILL_LOCK_STALE_HOURS", "24"))


def _pid_start_time(pid: int) -> float | None:
    """When a local process started (seconds since the epoch), from /proc; ``None`` if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether a local process runs; a zombie (killed, not yet reaped: PID 1 of a container or VM may
    never reap it) is not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_reason(lock: dict[str, Any]) -> str | None:
    """Why a lock looks stale (its holder is gone), or ``None`` when it may be held by a live run."""
    host, pid, started = lock.get("host"), lock.get("pid"), float(lock.get("started_at") or 0)
    if host == socket.gethostname() and isinstance(pid, int):
        if not _pid_alive(pid):
            return f"process {pid} is not running"
        began = _pid_start_time(pid)
        if began is not None and began > started + 2:  # the pid was reused by a later process
            return f"pid {pid} now belongs to a process started after the lock"
        return None
    age_h = (time.time() - started) / 3600
    if age_h > _stale_hours():
        return f"taken {age_h:.1f} h ago on another host (older than TOKENMILL_LOCK_STALE_HOURS={_stale_hours():g})"
    return None


def _describe(lock: dict[str, Any] | None) -> str:
    if not lock:
        return "an unreadable lock"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(lock.get("started_at") or 0)))
    return f"host {lock.get('host')} pid {lock.get('pid')} since {since}"


@dataclass
class OutputLock:
    """The lock of one output folder, held from :meth:`acquire` to :meth:`release`."""

    output: Location
    token: str = ""

    @property
    def path(self) -> Location:
        return self.output / LOCK_NAME

    def acquire(self, break_lock: bool = False) -> OutputLock:
        held = read_json(self.path) if self.path.exists() else None
        if self.path.exists():
            reason = stale_reason(held) if held else "its content is unreadable"
            if break_lock and reason is not None:
                self.path.unlink()
            elif reason is not None:
                raise OutputLocked(f"{self.output.uri} is locked by {_describe(held)} ({self.path.uri}), which looks "
                                   f"stale: {reason}; if no run uses this output, re-run with "
                                   f"'pipeline run --break-lock'")
            else:
                hint = " (--break-lock only breaks stale locks)" if break_lock else ""
                raise OutputLocked(f"{self.output.uri} is in use by another run: {_describe(held)} holds "
                                   f"{self.path.uri}; wait for it to finish{hint}")
        self.token = uuid.uuid4().hex
        lock = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": self.token}
        self.output.mkdir()
        if self.path.is_local:  # written whole to a temp name, then hard-linked: fails if the lock exists
            tmp = Path(f"{self.path.path}.{self.token}.tmp")
            tmp.write_text(json.dumps(lock))
            try:
                os.link(tmp, self.path.path)
            except FileExistsError:
                return self._lost()
            except OSError:  # a file system without hard links: O_EXCL (atomic, briefly empty)
                try:
                    fd = os.open(self.path.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return self._lost()
                with os.fdopen(fd, "w") as f:
                    json.dump(lock, f)
            finally:
                tmp.unlink()
        else:  # no create-if-absent: write, then read back (see the module docstring for the window)
            write_json_atomic(self.path, lock)
            if (read_json(self.path) or {}).get("token") != self.token:
                return self._lost()
        return self

    def _lost(self) -> OutputLock:
        raise OutputLocked(f"{self.output.uri} is in use by another run: {_describe(read_json(self.path))} "
                           f"took {self.path.uri} first")

    def release(self) -> None:
        """Remove the lock, if it is still ours."""
        with suppress(OSError):
            if (read_json(self.path) or {}).get("token") == self.token:
                self.path.unlink()

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------ ownership


def is_tokenmill_manifest(stage_dir: Location, stage: str) -> bool:
    manifest = read_json(stage_dir / MANIFEST_NAME)
    return isinstance(manifest, dict) and manifest.get("stage") == stage and "fingerprint" in manifest


def _legacy_output(out: Location) -> bool:
    """An output written before the marker existed: its run.json is a tokenmill run summary."""
    summary = read_json(out / "run.json") if (out / "run.json").exists() else None
    return isinstance(summary, dict) and "pipeline" in summary and isinstance(summary.get("stages"), list)


def claim_output(out: Location, stages: list[str], pipeline: str) -> None:
    """Check that a run replaces only tokenmill's files in ``out``, then mark ``out`` as tokenmill's.

    Raises :class:`OutputNotOwned` naming the first path in the way. Call with the lock held."""
    marked = (out / MARKER_NAME).exists()
    owned = marked or _legacy_output(out)
    problems: list[str] = []
    if not owned:
        problems += [f"{(out / f).uri} (no tokenmill marker {MARKER_NAME} in the output folder)"
                     for f in (*ROOT_FILES, TMP_DIR) if (out / f).exists()]
    for name in stages:
        folder = out / name
        if not folder.exists() or is_tokenmill_manifest(folder, name):
            continue
        if owned and folder.is_dir():
            continue  # a commit interrupted between the rename and the manifest, in tokenmill's output
        problems.append(f"{folder.uri} (stage '{name}' would replace it, and it holds no tokenmill manifest)")
    if problems:
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise OutputNotOwned(f"refusing to replace what tokenmill did not write: {problems[0]}{more}; "
                             "move it away or choose another output")
    if not marked:
        write_json_atomic(out / MARKER_NAME, {"tokenmill_output": True, "pipeline": pipeline,
                                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def sweep_work_dirs(out: Location, stage: str, keep: str) -> list[str]:
    """Remove ``.tmp/<stage>-<fp>`` work folders of ``stage`` other than ``keep`` (superseded
    fingerprints) after the stage committed; returns the names removed."""
    removed = []
    for child in (out / TMP_DIR).iterdir():
        m = _WORK_DIR.fullmatch(child.name)
        if m and m["stage"] == stage and child.name != keep:
            child.rmtree()
            removed.append(child.name)
    return removed
