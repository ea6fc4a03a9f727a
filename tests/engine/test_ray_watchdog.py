"""The watchdog's sweep after the driver died, on real processes (no Ray needed for this part;
``test_safety_runner`` kills a real run's driver)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ray_watchdog import _orphaned_workers, _stat, _table

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _spawn(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(args, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def test_a_worker_never_scanned_is_found_by_the_raylet_pid_in_its_environment(tmp_path):
    """A worker the raylet started after the watchdog's last scan is not in the remembered set;
    it is killed because its ``RAY_RAYLET_PID`` names a remembered raylet. A worker of another
    raylet, and a process of ours without that variable, are left alone."""
    worker_script = tmp_path / "default_worker.py"
    worker_script.write_text("import time\ntime.sleep(60)\n")
    raylet = _spawn(["sleep", "60"])
    other_raylet = _spawn(["sleep", "60"])
    ours = _spawn([sys.executable, str(worker_script)], RAY_RAYLET_PID=str(raylet.pid))
    theirs = _spawn([sys.executable, str(worker_script)], RAY_RAYLET_PID=str(other_raylet.pid))
    plain = _spawn([sys.executable, str(worker_script)])
    procs = [raylet, other_raylet, ours, theirs, plain]
    try:
        since = _stat(raylet.pid)[1]
        found = _orphaned_workers({raylet.pid}, since, _table())
        assert ours.pid in found
        assert theirs.pid not in found and plain.pid not in found
        # a process started before the raylet cannot be its worker (a reused pid of an older Ray)
        assert _orphaned_workers({raylet.pid}, _stat(ours.pid)[1] + 10**9, _table()) == set()
    finally:
        for p in procs:
            p.kill()
            p.wait()
