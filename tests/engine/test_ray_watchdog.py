"""The watchdog's sweep after the driver died, on real processes (no Ray needed for this part;
``test_safety_runner`` kills a real run's driver)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ray_watchdog import _orphans, _session_folder, _stat, _table

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _spawn(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(args, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def test_processes_never_scanned_are_found_by_what_names_the_run(tmp_path):
    """What a raylet started after the watchdog's last scan is in neither the remembered set nor
    (once the raylet is gone) the driver's tree. An agent is found by the driver's session folder
    on its command line, a worker by the ``RAY_RAYLET_PID`` in its environment. Another driver's
    agent, another raylet's worker and a process without either are left alone."""
    sleeper = tmp_path / "default_worker.py"
    sleeper.write_text("import time\ntime.sleep(60)\n")
    driver = _spawn(["sleep", "60"])  # stands for the driver: only its pid and start time are used
    raylet = _spawn(["sleep", "60"])
    other_raylet = _spawn(["sleep", "60"])
    session = f"/tmp/ray/session_2026-12-06_15-14-43_267107_{driver.pid}"
    other_session = f"/tmp/ray/session_2026-12-06_15-14-43_267107_{other_raylet.pid}"
    ours = _spawn([sys.executable, str(sleeper)], RAY_RAYLET_PID=str(raylet.pid))
    agent = _spawn([sys.executable, str(sleeper), f"--log-dir={session}/logs"])
    theirs = _spawn([sys.executable, str(sleeper)], RAY_RAYLET_PID=str(other_raylet.pid))
    their_agent = _spawn([sys.executable, str(sleeper), f"--log-dir={other_session}/logs"])
    plain = _spawn([sys.executable, str(sleeper)])
    procs = [driver, raylet, other_raylet, ours, agent, theirs, their_agent, plain]
    try:
        since = _stat(driver.pid)[1]
        found = _orphans(_session_folder(driver.pid), {raylet.pid}, since, _table())
        assert {ours.pid, agent.pid} <= found
        assert not found & {theirs.pid, their_agent.pid, plain.pid, raylet.pid, other_raylet.pid}
        # processes started before the driver cannot be its run's (a reused pid of an older Ray)
        assert _orphans(_session_folder(driver.pid), {raylet.pid}, _stat(plain.pid)[1] + 10**9, _table()) == set()
    finally:
        for p in procs:
            p.kill()
            p.wait()
