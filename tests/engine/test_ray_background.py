"""The embedded Ray starts in a background thread that holds the session until it is shut down:
Ray's head processes die with the thread that started them (PR_SET_PDEATHSIG), so start and shutdown
must run on one thread that lives as long as the session; the run waits for Ray at its first pass."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pytest

import pipeline.ray_session as rs
from pipeline import ray_stand_in
from pipeline.spec import RayOptions


def _fake_session(log: list[tuple[str, str]], delay: float = 0.2, fail: Exception | None = None):
    @contextlib.contextmanager
    def session(options, address=None, worker_env=True, preload=()):
        assert not worker_env  # set by the starting thread, not by the session's
        time.sleep(delay)
        log.append(("start", threading.current_thread().name))
        if fail is not None:
            raise fail
        try:
            yield
        finally:
            log.append(("stop", threading.current_thread().name))
    return session


def test_start_and_shutdown_run_on_one_thread_that_lives_with_the_session(monkeypatch):
    log: list[tuple[str, str]] = []
    monkeypatch.setattr(rs, "ray_session", _fake_session(log))
    monkeypatch.setattr(rs, "_starts_embedded", lambda options, address: True)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = signal.getsignal(signal.SIGTERM)
    try:
        with rs.ray_session_in_background(RayOptions()):
            assert log == []  # the block runs at once, while Ray starts
            assert signal.getsignal(signal.SIGTERM) is rs._exit_on_sigterm  # set in the main thread
            assert os.environ["OMP_NUM_THREADS"] == "1"  # the raylet starts with the workers' environment
            rs.wait_for_ray()
            assert os.environ["OMP_NUM_THREADS"] == "7"  # the driver's own once Ray is up
            assert log == [("start", "tokenmill-ray")]
            assert any(t.name == "tokenmill-ray" for t in threading.enumerate())  # still holding the session
        assert log == [("start", "tokenmill-ray"), ("stop", "tokenmill-ray")]
        rs.wait_for_ray()  # no session starting: returns at once
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_failed_start_is_raised_where_ray_is_first_needed(monkeypatch):
    log: list[tuple[str, str]] = []
    monkeypatch.setattr(rs, "ray_session", _fake_session(log, fail=RuntimeError("no raylet")))
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match="no raylet"), rs.ray_session_in_background(RayOptions()):
            rs.wait_for_ray()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert log == [("start", "tokenmill-ray")]


def test_worker_preload_names_the_executor_the_stages_and_what_their_workers_import():
    from pipeline.registry import discover_stages
    from pipeline.stage_api import worker_preload

    stages = discover_stages()
    modules = worker_preload([stages["ingest"], stages["encode"]])
    assert modules[modules.index("pipeline.executor") + 1:] == [
        stages["ingest"].__module__, stages["encode"].__module__, *stages["encode"].worker_imports]
    assert "gigatoken" in modules
    assert len(modules) == len(set(modules))


def test_the_embedded_rays_workers_import_the_preload_before_their_first_task(tmp_path):
    """A process of its own (this one holds the session's Ray): its embedded Ray's worker has the
    preloaded module imported when the first task arrives, which imports nothing itself."""
    assert _probe(tmp_path,
                  "import sys, ray\n"
                  "from pipeline.ray_session import ray_session\n"
                  "from pipeline.spec import RayOptions\n"
                  "with ray_session(RayOptions(num_cpus=1), preload=['colorsys']):\n"
                  "    print(ray.get(ray.remote(lambda: 'colorsys' in sys.modules).remote()))\n") == "True"


def _probe(tmp_path, code: str) -> str:
    """Run ``code`` in a process of its own (this one holds the session's Ray, so an embedded Ray
    needs another process); its last line of output."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_the_embedded_raylets_agents_are_stand_ins_that_go_with_it(tmp_path):
    """The embedded raylet runs the stand-ins, not Ray's agents, reads "-1, not in use" from the
    dashboard agent's port files and runs tasks; a task that asks for a runtime environment gets it
    (the runtime-env stand-in becomes the real agent); nothing outlives the session."""
    import json

    got = json.loads(_probe(
        tmp_path,
        "import glob, json, os, time, ray\n"
        "from pipeline.ray_session import ray_session\n"
        "from pipeline.ray_watchdog import _cmdline, _session_folder, _table\n"
        "from pipeline.spec import RayOptions\n"
        "def procs():\n"  # this run's processes, found as the watchdog finds them
        "    session = _session_folder(os.getpid())\n"
        "    return {pid: cmd for pid in _table() if session.search(cmd := _cmdline(pid))}\n"
        "with ray_session(RayOptions(num_cpus=1)):\n"
        "    task = ray.get(ray.remote(lambda: 6 * 7).remote())\n"
        "    session = ray._private.worker.global_worker.node.get_session_dir_path()\n"
        "    ports = {os.path.basename(f).rsplit('_', 1)[0]: open(f).read().strip()\n"
        "             for f in glob.glob(session + '/*_port_*')}\n"
        "    before = procs()\n"
        "    env = ray.get(ray.remote(lambda: os.environ.get('PROBE')).options(\n"
        "        runtime_env={'env_vars': {'PROBE': 'yes'}}).remote(), timeout=120)\n"
        "deadline = time.monotonic() + 30\n"  # the session's processes exit on their own after shutdown
        "while procs() and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        "print(json.dumps({'task': task, 'env': env, 'ports': ports, 'before': list(before.values()),\n"
        "                  'after': list(procs().values())}))\n"))
    assert got["task"] == 42 and got["env"] == "yes"
    assert got["ports"]["metrics_agent_port"] == "-1" and got["ports"]["dashboard_agent_listen_port"] == "-1"
    assert int(got["ports"]["runtime_env_agent_port"]) > 0  # bound and written by the stand-in

    argv = [c.split(" ") for c in got["before"]]  # [python, -S|-u, script, ...]
    assert sorted(a[3] for a in argv if a[2:3] == [ray_stand_in.__file__]) == ["dashboard", "runtime_env"]
    assert not [a for a in argv if len(a) > 2 and a[2].endswith(("dashboard/agent.py", "agent/main.py"))]
    assert got["after"] == []  # raylet, stand-ins, the started agent and workers all gone
