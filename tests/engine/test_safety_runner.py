"""Run safety (issue 16): the output lock, what a run may replace, spec bounds, resume fingerprints
(helper modules, inputs by content), the sweep of stale work folders, and no Ray left after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO_ROOT, process_tree, s3_filesystem, start_time, write_spec

from pipeline.errors import SpecError
from pipeline.locations import Location
from pipeline.output_guard import LOCK_NAME, MARKER_NAME, OutputLock, OutputLocked, OutputNotOwned
from pipeline.progress import QuietReporter
from pipeline.runner import make_plan, run_pipeline, stage_code_hash
from pipeline.spec import load_spec, parse_spec

SPEC = """
name: t
output: out
inputs:
  docs: {paths: [udhr_articles_1-3.jsonl.zst]}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: SHARD}
"""


def _spec(d: Path, shard: str = "0.05") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "udhr_articles_1-3.jsonl.zst").exists():
        shutil.copy(DATA_DIR / "udhr_articles_1-3.jsonl.zst", d)
    return write_spec(d, SPEC.replace("SHARD", shard))


def _run(path: Path, **kwargs):
    return run_pipeline(load_spec(path), reporter=QuietReporter(), **kwargs)


# ------------------------------------------------------------------------------------- the lock


def test_a_second_run_is_refused_while_another_process_holds_the_lock(ray_local, tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pipeline.output_guard import OutputLock
            from pipeline.locations import Location
            lock = OutputLock(Location({str(out)!r})).acquire()
            print("locked", flush=True)
            sys.stdin.read()
            lock.release()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked) as info:
            _run(spec)
        msg = str(info.value)
        assert "\n" not in msg and f"pid {holder.pid}" in msg and LOCK_NAME in msg and "in use" in msg
        with pytest.raises(OutputLocked):  # a live lock is never broken, even when asked
            _run(spec, break_lock=True)
        assert not (out / "ingest").exists()
    finally:
        holder.communicate("")
    _run(spec)  # released: the run goes ahead, and leaves no lock behind
    assert (out / "ingest" / "manifest.json").exists() and not (out / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_named_and_broken_only_on_request(ray_local, tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    lock = {"host": os.uname().nodename, "pid": dead.pid, "started_at": time.time() - 60, "token": "x"}
    (out / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(OutputLocked) as info:
        _run(spec)
    msg = str(info.value)
    assert "stale" in msg and f"process {dead.pid} is not running" in msg and "--break-lock" in msg
    assert (out / LOCK_NAME).exists()  # never broken silently
    _run(spec, break_lock=True)
    assert (out / "ingest" / "manifest.json").exists() and not (out / LOCK_NAME).exists()


def test_cli_refuses_in_one_line(tmp_path):
    spec = _spec(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(
        {"host": "elsewhere", "pid": 1, "started_at": time.time(), "token": "x"}))
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=tmp_path, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "host elsewhere pid 1" in res.stderr


def test_lock_on_an_object_store(s3_endpoint):
    fs = s3_filesystem(s3_endpoint)
    fs.create_dir("locks")
    out = Location("locks/out", fs, "s3")
    first = OutputLock(out).acquire()
    with pytest.raises(OutputLocked, match="in use by another run"):
        OutputLock(out).acquire()
    first.release()
    OutputLock(out).acquire().release()
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------ ownership


def test_a_user_folder_named_like_a_stage_is_refused_and_kept(ray_local, tmp_path):
    spec = _spec(tmp_path)
    (tmp_path / "out" / "ingest").mkdir(parents=True)
    (tmp_path / "out" / "ingest" / "precious.txt").write_text("mine")
    with pytest.raises(OutputNotOwned) as info:
        _run(spec)
    assert str(tmp_path / "out" / "ingest") in str(info.value)
    assert (tmp_path / "out" / "ingest" / "precious.txt").read_text() == "mine"


def test_user_root_files_are_refused_but_a_fresh_or_own_output_is_fine(ray_local, tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("my report")
    with pytest.raises(OutputNotOwned, match=r"report\.html"):
        _run(spec)
    assert (out / "report.html").read_text() == "my report"
    (out / "report.html").unlink()
    (out / "notes.txt").write_text("kept")  # files tokenmill does not write are left alone
    _run(spec)
    assert (out / MARKER_NAME).exists() and (out / "run.json").exists()
    _run(spec, force=["ingest"])  # its own output: stage folder and root files are replaced
    assert (out / "notes.txt").read_text() == "kept"


def test_stale_work_folders_of_superseded_fingerprints_are_swept(ray_local, tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    _run(spec)
    stale = out / ".tmp" / "ingest-0123456789abcdef"  # an interrupted run of an older config
    stale.mkdir(parents=True)
    (stale / "part.parquet").write_bytes(b"x")
    other = out / ".tmp" / "ingest2-0123456789abcdef"  # another stage's: not ingest's to sweep
    other.mkdir()
    _run(_spec(tmp_path, shard="0.02"))
    assert not stale.exists() and other.exists()


# ---------------------------------------------------------------------------------- spec bounds


BASE = """name: p
inputs: {raw: {paths: [a.jsonl]}}
stages:
  - {name: NAME, type: ingest, inputs: [raw]EXTRA}
"""


@pytest.mark.parametrize("name, expected", [
    ("run.json", "stages[0].name: 'run.json' is reserved"),
    ("report.html", "stages[0].name: 'report.html' is reserved"),
    (".tmp", "stages[0].name: must match"),
    ("_shards", "stages[0].name: must match"),
    ("a" * 300, "stages[0].name: must be at most 100 characters (got 300)"),
])
def test_reserved_and_overlong_stage_names_are_rejected(name, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(BASE.replace("NAME", repr(name)).replace("EXTRA", ""))
    assert expected in str(info.value)


def test_huge_shard_mb_is_a_spec_error():
    with pytest.raises(SpecError, match=r"stages\[0\].shard_mb: must be ≤ 65536"):
        parse_spec(BASE.replace("NAME", "i").replace("EXTRA", ", shard_mb: 1e308"))


def test_alias_bomb_is_refused_without_expanding_it():
    big = "x" * (1 << 20)
    text = "name: p\nbig: &b " + big + "\nrefs:\n" + "".join("  - *b\n" for _ in range(999))
    with pytest.raises(SpecError, match="too big once its YAML aliases are expanded"):
        parse_spec(text)
    with pytest.raises(SpecError, match="too big"):
        parse_spec("name: &a [*a]\n")  # a recursive alias


def test_num_cpus_above_the_host_is_refused(tmp_path):
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace("output: out", "output: out\nray: {num_cpus: 100000}"))
    with pytest.raises(SpecError, match=rf"ray.num_cpus: 100000 is more than this host's {os.cpu_count()} CPUs"):
        run_pipeline(load_spec(spec), reporter=QuietReporter())
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- fingerprints


def test_code_fingerprint_covers_helper_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "plug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("def f():\n    return 1\n")
    (pkg / "stage.py").write_text("from plug.helper import f\n\n\nclass S:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from plug.stage import S

    before = stage_code_hash(S)
    (pkg / "helper.py").write_text("def f():\n    return 2\n")
    assert stage_code_hash(S) != before != "unknown"

    from pipeline.registry import stage_class
    from pipeline.runner import _module_closure

    pack_code = {n for n, _ in _module_closure(stage_class("pack").__module__)}
    assert {"stages.pack.stage", "stages.pack.packing", "stages.pack.formats.megatron"} <= pack_code
    assert "stages.clean.core" in {n for n, _ in _module_closure(stage_class("clean").__module__)}
    assert "stages.ingest.sources" in {n for n, _ in _module_closure(stage_class("ingest").__module__)}


def test_a_copied_spec_and_data_with_new_mtimes_is_up_to_date(ray_local, tmp_path):
    a = tmp_path / "a"
    spec_a = _spec(a)
    _run(spec_a)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    later = time.time() + 3600
    for f in b.rglob("*"):
        os.utime(f, (later, later))
    plan_a = make_plan(load_spec(spec_a), a / "out")
    plan_b = make_plan(load_spec(b / "spec.yaml"), b / "out")
    assert [s.fingerprint for s in plan_a.stages] == [s.fingerprint for s in plan_b.stages]
    assert [s.action for s in plan_b.stages] == ["skip"]
    # a same-size edit of the content is seen
    data = b / "udhr_articles_1-3.jsonl.zst"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    assert make_plan(load_spec(b / "spec.yaml"), b / "out").stages[0].action == "run"


# ----------------------------------------------------------------------------------- kill -9


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_kill_9_of_the_driver_leaves_no_ray_process_of_that_run(tmp_path):
    # a corpus of 200 shards, so that the run is still on Ray a second after its stage starts (the
    # articles file alone was ingested, Ray shut down and only the report left within that second)
    lines = "".join(f'{{"text": "document {i} {"word " * 40}"}}\n' for i in range(16_000))
    (tmp_path / "many.jsonl").write_text(lines)
    spec = write_spec(tmp_path, SPEC.replace("udhr_articles_1-3.jsonl.zst", "many.jsonl")
                      .replace("SHARD", str(round(len(lines) / 200 / 1e6, 4))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    spec.write_text(spec.read_text().replace("output: out", "output: out\nray: {num_cpus: 1}"))
    driver = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline:  # until the stage runs on a fully started Ray (its agents outlived it)
        seen |= process_tree(driver.pid)
        # the raylet itself, not only the stage's folder: the folder may appear before Ray is up
        ray_up = any("raylet" in _cmd(p) for p in seen)
        if (ray_up and list((tmp_path / "out" / ".tmp").glob("ingest-*"))) or driver.poll() is not None:
            break
        time.sleep(0.2)
    time.sleep(1)
    seen |= process_tree(driver.pid)
    assert driver.poll() is None, "the run ended before Ray was up"
    ray_procs = {p: (start_time(p), _cmd(p)) for p in seen if "ray" in _cmd(p) and "ray_watchdog" not in _cmd(p)}
    assert any("raylet" in c for _, c in ray_procs.values())
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 10  # the bound; the check passes as soon as the last of them is gone
    while (alive := {p: c for p, (start, c) in ray_procs.items() if start_time(p) == start}) and time.time() < deadline:
        time.sleep(0.1)  # same pid and same start time: the same process, still alive
    assert not alive, f"Ray processes of the killed run still alive 10 s later: {alive}"


def test_derived_ids_do_not_depend_on_where_the_spec_folder_is(ray_local, tmp_path):
    """Rows without an id are named ``<file relative to the input's folder>:<line>``: the same in a copy
    of the project, and the same when only the spec file moves (its paths edited to match)."""
    from pipeline.parquet_io import read_table

    ids = []
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "x.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    for d, rel in ((tmp_path / "a", "../corpus/x.jsonl"), (tmp_path / "deeper" / "b", "../../corpus/x.jsonl"),
                   (tmp_path, "corpus/x.jsonl")):
        d.mkdir(parents=True, exist_ok=True)
        spec = write_spec(d, SPEC.replace("udhr_articles_1-3.jsonl.zst", rel).replace("SHARD", "1"))
        _run(spec)
        ids.append(read_table(sorted((d / "out" / "ingest" / "data").glob("part-*.parquet")))["id"].to_pylist())
    assert ids[0] == ids[1] == ids[2] == ["x.jsonl:1", "x.jsonl:2"]
