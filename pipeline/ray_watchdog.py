"""Make the embedded Ray die with its driver, even after ``kill -9`` of the driver.

``ray.init(address="local")`` starts the head processes (GCS, raylet, dashboard, log monitor) as
children of the driver. When the driver is killed with SIGKILL it cannot run ``ray.shutdown()``:
GCS and raylet notice and exit, but the raylet's dashboard and runtime-env agents lived on for
more than 30 s (measured with Ray 2.60). Ray 2.60 has no option for this, so the driver starts this
watchdog in its own session (a SIGKILL of the driver's group does not reach it). It polls the
driver's process tree and remembers every Ray process in it (a command line naming this driver's
Ray session folder, or a Ray worker's ``ray::`` title) with its start time; once the driver is
gone it SIGKILLs the remembered processes still alive (same pid and same start time, so a reused
pid is never hit), their children, and the processes of the run it never scanned (`_orphans`):
a worker or agent the raylet started after the last scan is orphaned the moment the raylet dies,
and both outlived a killed run by more than 10 s on a loaded host. Only this run's processes are
touched (its tree, its session folder, its raylets' workers): other Ray instances on the machine
are not.

Linux only (it reads ``/proc``); elsewhere it exits at once and Ray's own shutdown applies.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.25
#: how often the whole process table is read for new Ray processes: every poll while Ray starts its
#: head processes and agents, then once a second. Reading all of /proc four times a second cost
#: 0.7 CPU-s per 20 s on this 2-core host with a test suite's processes beside it; checking that the
#: driver is alive reads one file. A Ray worker started after the last scan is found by its
#: ``RAY_RAYLET_PID`` when the driver is gone (`_orphans`).
SCAN_S = ((5.0, POLL_S), (float("inf"), 1.0))


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _table() -> dict[int, tuple[int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _session_folder(driver: int) -> re.Pattern[str]:
    """This driver's Ray session folder, ``/tmp/ray/session_<date>_<time>_<driver pid>/``, which the
    command lines of its head processes, agents and starting workers name."""
    return re.compile(rf"/session_[0-9_-]+_{driver}/")


def _is_ray(cmd: str, session: re.Pattern[str]) -> bool:
    """A Ray worker (``ray::`` title) or a process of this driver's session."""
    return cmd.startswith("ray::") or session.search(cmd) is not None


def _is_raylet(cmd: str) -> bool:
    return cmd.split(" ", 1)[0].endswith("/raylet")


def _raylet_of(pid: int) -> int | None:
    """The ``RAY_RAYLET_PID`` a Ray worker was started with (Ray sets it for every worker)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"RAY_RAYLET_PID="):
            with contextlib.suppress(ValueError):
                return int(entry.split(b"=", 1)[1])
    return None


def _orphans(session: re.Pattern[str], raylets: set[int], since: int, table: dict[int, tuple[int, int]]) -> set[int]:
    """Ray processes of this run that were never scanned: a raylet starts workers and agents at any
    time, and once it is gone they are no longer in the driver's tree. They are found by what names
    this run: a head process or agent by this driver's session folder on its command line, a worker
    by the ``RAY_RAYLET_PID`` Ray sets in its environment. Only processes started at or after
    ``since`` (the driver's start) are read, so an older Ray whose driver or raylet had the same pid
    cannot match."""
    recent = {pid: _cmdline(pid) for pid, (_, start) in table.items() if start >= since}
    found = {pid for pid, cmd in recent.items() if session.search(cmd)}
    raylets = raylets | {pid for pid in found if _is_raylet(recent[pid])}
    for pid, cmd in recent.items():
        if (cmd.startswith("ray::") or "default_worker.py" in cmd) and _raylet_of(pid) in raylets:
            found.add(pid)
    return found


def watch(driver: int, driver_start: int) -> None:
    me = os.getpid()
    seen: dict[int, int] = {}  # pid -> start ticks of every Ray process of this driver
    raylets: set[int] = set()  # the raylets among them, remembered while their command line is readable
    session = _session_folder(driver)
    began = last_scan = time.monotonic()
    while True:
        now = time.monotonic()
        every = next(interval for until, interval in SCAN_S if now - began < until)
        if not seen or now - last_scan >= every:
            table = _table()
            for pid in _descendants({driver, *seen}, table):
                if pid != me and pid not in seen and _is_ray(cmd := _cmdline(pid), session):
                    seen[pid] = table[pid][1]
                    if _is_raylet(cmd):
                        raylets.add(pid)
            last_scan = now
        alive = _stat(driver)
        if alive is None or alive[1] != driver_start:
            break
        time.sleep(POLL_S)
    for _ in range(2):  # once more after a moment: a raylet may have been spawning a worker
        table = _table()
        targets = {p for p, start in seen.items() if table.get(p, (0, -1))[1] == start}
        targets |= _orphans(session, raylets, driver_start, table)
        targets |= _descendants(targets, table) - {me}
        for pid in sorted(targets):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_S)


def start_watchdog() -> subprocess.Popen | None:
    """Start the watchdog of this process's embedded Ray; ``None`` where there is no /proc."""
    st = _stat(os.getpid())
    if st is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.ray_watchdog", str(os.getpid()), str(st[1])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def stop_watchdog(proc: subprocess.Popen | None) -> None:
    """After a normal ``ray.shutdown()``: the watchdog has nothing left to do."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
