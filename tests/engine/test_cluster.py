"""A real two-node Ray cluster on this machine: multi-node runs, job submission, fault tolerance.

The head and the worker node are separate ``ray start --block`` processes (each in its own session,
so teardown ends exactly their processes and never another engineer's Ray). Every pipeline run on
the cluster is a subprocess (``sys.executable -m pipeline ...``): a process may only ``ray.init``
once, and this one holds the session-scoped ``ray_local``, on which the single-node reference runs.
Outputs are compared byte for byte with that single-node run of the same spec: the whole spec for
the ``--address`` and job runs, its first stages (:data:`FAULT_STAGES`) for the fault tests.

Order matters: the node-removal test kills the worker node, so it runs last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import s3_filesystem

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "dedup", "balance", "tokenizer", "encode", "clean", "pack")
#: the stages the fault tests run: their faults strike in ingest (plain Ray tasks) and encode (workers
#: that keep the tokenizer), and each run is compared up to encode; clean and pack (a third of a run's
#: time here) run on the cluster in the ``--address`` and job runs, on the same executor
FAULT_STAGES = STAGES[:5]
#: 3000 documents of ~0.5 KB in shards of 0.25 MB: 7 shards per stage, as many as 6000 in 0.5 MB
#: shards gave, for the kill tests to strike in the middle of; half the tokenizer and clean work
N_DOCS, SHARD_MB = 3000, 0.25


#: ports handed out so far: the kernel may give the same free port to two ``bind(0)`` calls once the
#: first socket is closed, and a node given one port for two components fails to start
_PORTS: set[int] = set()


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_BACKEND_LOG_LEVEL="fatal")
    env.update(extra)
    return env


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _agent_ports() -> list[str]:
    """Free ports for the node's agents: the defaults (52365, ...) may be taken by another local Ray
    (the test session's own), and a head whose job agent cannot bind answers "No available agent"."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]


class LocalCluster:
    """A head and one worker node, each a ``ray start --block`` process in a session of its own, so
    that what the cluster started (Ray's workers run in process groups of their own, but stay in the
    session) is told apart from any other Ray on the machine, another engineer's or the test session's."""

    def __init__(self, tmp: Path):
        self.port, self.dash = _free_port(), _free_port()
        self.gcs = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dash}"
        self.tmp = tmp
        # a short path: Ray's Unix socket paths under the temp dir must stay below 108 bytes
        self.ray_tmp = tempfile.mkdtemp(prefix="tmray", dir="/tmp")
        self.procs: dict[str, subprocess.Popen] = {}
        self.sessions: set[int] = set()  # every node's, stopped ones too: their processes are the cluster's

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen([_ray_bin(), "start", "--block", *args], env=_env(),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.add(self.procs[name].pid)

    def start(self) -> None:
        self._start("head", ["--head", f"--port={self.port}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=true", f"--dashboard-port={self.dash}",
                             "--dashboard-host=127.0.0.1", f"--temp-dir={self.ray_tmp}",
                             f"--ray-client-server-port={_free_port()}", "--resources={\"head\": 1}",
                             *_agent_ports()])
        self._wait_nodes(1, 90)
        self.add_worker()

    def add_worker(self) -> None:
        self._start("worker", [f"--address={self.gcs}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                               "--resources={\"worker_node\": 1}", *_agent_ports()])
        self._wait_nodes(2, 90)

    def alive_nodes(self) -> int:
        code = ("import ray,json,logging;ray.init(address=" + repr(self.gcs) + ",logging_level=logging.ERROR);"
                "print('NODES',sum(n['Alive'] for n in ray.nodes()))")
        try:
            r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return 0
        for line in r.stdout.splitlines():
            if line.startswith("NODES"):
                return int(line.split()[1])
        return 0

    def _wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():  # a node that failed to start does not come up later
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start of the {name} exited: "
                                       + (self.tmp / f"{name}.log").read_text()[-2000:])
            if self.alive_nodes() >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"cluster did not reach {n} nodes: " + (self.tmp / "head.log").read_text()[-2000:])

    def processes(self, node: str | None = None) -> set[int]:
        """Live processes of the cluster: in the sessions of its ``ray start`` processes or naming its
        temp dir (the GCS, raylets, log monitors, dashboard); ``node``: that node's session only (the
        temp dir is every node's)."""
        sessions = {self.procs[node].pid} if node else self.sessions
        found = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                state, _, _, sid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if state != "Z" and (int(sid) in sessions or (not node and self.ray_tmp in cmd)):  # zombies are dead
                found.add(int(proc.name))
        return found

    def _kill(self, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove_node(self, name: str) -> None:
        """An abrupt node loss, as when a machine dies: every process of the node is SIGKILLed at once
        (its raylet, agents and workers; nothing is drained or told to the head)."""
        self._kill(self.processes(name))
        self.procs.pop(name).wait(10)

    def stop_all(self) -> None:
        """Stop every node and make sure no process of the cluster is left for later tests: SIGTERM
        (a head takes about 30 s to stop that way, a worker node under a second), a few seconds'
        grace, then SIGKILL of whatever of the cluster is still alive (it is thrown away: nothing of
        it outlives SIGKILL and the removal of its temp dir, /dev/shm included)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 2
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.time()))
        deadline = time.time() + 10
        while (left := self.processes()) and time.time() < deadline:
            self._kill(left)
            time.sleep(0.1)
        for proc in self.procs.values():
            proc.wait(10)  # reaped: no zombie ray start either
        self.procs.clear()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        assert not left, f"processes of the test cluster survived SIGKILL: {sorted(left)}"

    def worker_pids(self) -> list[int]:
        """Ray worker processes of this cluster running a map task (Ray names a worker's process after
        the task it runs)."""
        pids = []
        for pid in self.processes():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::") and ("Map" in cmd or "_run_task" in cmd):
                pids.append(pid)
        return pids


def make_corpus(path: Path, n_docs: int, seed: int = 7) -> None:
    """Deterministic multilingual-looking JSONL with exact and near duplicates."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)]
    with path.open("w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(40, 160)))
            if i % 10 == 9:
                text = f"duplicate body {i % 30}"  # exact duplicates for dedup
            f.write(json.dumps({"id": f"d{i}", "text": text, "lang": rng.choice(["en", "de", "fr"]),
                                "source": "synthetic"}) + "\n")


#: each stage of the test spec by name, in order (the same configs whichever stages a spec keeps)
STAGE_SPECS = {
    "dedup": "{name: dedup, type: dedup, inputs: [ingest], near: {threshold: 0.8}}",
    "balance": "{name: balance, type: balance, inputs: [dedup], strategy: temperature, alpha: 0.5}",
    "tokenizer": "{name: tokenizer, type: train_tokenizer, inputs: [balance], vocab_size: 800, "
                 "report: {heldout_docs: 20}}",
    "encode": "{name: encode, type: encode, inputs: [balance], tokenizer: tokenizer}",
    "clean": "{name: clean, type: clean, inputs: [encode], tokenizer: tokenizer, "
             "influence: {enabled: true, order: 2, reference: {langs: [en]}, keep_ratio: 0.8}}",
    "pack": "{name: pack, type: pack, inputs: [clean], method: best_fit, seq_len: 512, writers: [olmo, megatron]}",
}
assert tuple(STAGE_SPECS) == STAGES[1:]


def write_spec(directory: Path, corpus: Path | str, fail: bool = False, stages: tuple[str, ...] = STAGES) -> Path:
    """The test spec with its first ``len(stages)`` stages: a prefix has the same stage configs as the
    whole spec, so on the same input its stages write the same bytes as the whole spec's."""
    assert stages == STAGES[:len(stages)] and stages[0] == "ingest", stages
    if fail:  # a stage whose error happens on the cluster: an input file that is not there
        corpus = Path(corpus).with_name("missing.jsonl")
    spec = directory / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: cluster-test
        seed: 99
        output: out
        inputs:
          docs:
            paths: [{json.dumps(str(corpus))}]
            fields: {{id: id, text: text, lang: lang, source: source}}
        stages:
          - {{name: ingest, type: ingest, inputs: [docs], shard_mb: {SHARD_MB}}}
        """) + "".join(f"  - {STAGE_SPECS[name]}\n" for name in stages[1:]))
    return spec


def pipeline_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def run_cli(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(pipeline_cmd(*args), env=_env(**env), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def digest(out: Path, stages=STAGES) -> dict[str, str]:
    """sha256 of every data file of the stages: Parquet, tokenizer.json, report.json, token arrays (manifests
    hold timings, so they are left out)."""
    res = {}
    for stage in stages:
        files = sorted(f for f in (out / stage).rglob("*") if f.suffix in (".parquet", ".npy", ".bin", ".idx", ".json")
                       and f.name != "manifest.json")
        assert files, f"no parquet output under {out / stage}"
        for f in files:
            res[str(f.relative_to(out))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return res


def of_stages(files: dict[str, str], stages: tuple[str, ...]) -> dict[str, str]:
    """The digest of ``stages`` only (same configs, same input: the same bytes in any run that has them)."""
    return {rel: h for rel, h in files.items() if rel.split("/")[0] in stages}


def node_ids_of_tasks(dashboard: str) -> set[str]:
    code = textwrap.dedent(f"""
        from ray.util.state import list_tasks
        ts = list_tasks(address={dashboard!r}, filters=[("state", "=", "FINISHED")], limit=10000,
                        raise_on_missing_output=False)
        shard_tasks = [t for t in ts if ("MapBatches" in t.name or "_run_task" in t.name) and t.node_id]
        print("NODES", " ".join(sorted({{t.node_id for t in shard_tasks}})))
    """)
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    for line in r.stdout.splitlines():
        if line.startswith("NODES"):
            return set(line.split()[1:])
    raise AssertionError(r.stderr[-2000:])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    path = d / "docs.jsonl"
    make_corpus(path, N_DOCS)
    return path


@pytest.fixture(scope="module")
def reference(ray_local, corpus, tmp_path_factory) -> dict[str, str]:
    """The single-node run: in this process, on the test session's local Ray (one node, 2 CPUs),
    whose workers are up already (a process of its own paid 10-12 s more to start and warm one)."""
    from pipeline.progress import QuietReporter
    from pipeline.runner import run_pipeline
    from pipeline.spec import load_spec

    d = tmp_path_factory.mktemp("single")
    run_pipeline(load_spec(write_spec(d, corpus)), reporter=QuietReporter())
    return digest(d / "out")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("raycluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop_all()


def test_run_with_address_uses_both_nodes_and_matches_single_node(cluster, corpus, reference, tmp_path):
    spec = write_spec(tmp_path, corpus)
    r = run_cli("run", str(spec), "--quiet", "--address", cluster.gcs)
    assert r.returncode == 0, r.stderr
    assert digest(tmp_path / "out") == reference
    nodes = node_ids_of_tasks(cluster.dashboard)
    assert len(nodes) == 2, f"map tasks ran on {nodes}"


def test_submit_job_succeeds_and_matches(cluster, corpus, reference, tmp_path):
    spec = write_spec(tmp_path, corpus)
    r = run_cli("submit", str(spec), "--address", cluster.dashboard, "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCEEDED" in r.stdout
    assert digest(tmp_path / "out") == reference


def test_submit_failing_stage_returns_nonzero_with_error(cluster, corpus, tmp_path):
    spec = write_spec(tmp_path, corpus, fail=True)
    r = run_cli("submit", str(spec), "--address", cluster.dashboard)
    assert r.returncode != 0
    assert "missing.jsonl" in r.stdout + r.stderr
    assert "FAILED" in r.stdout + r.stderr


def _wait_committed(out: Path, stage: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> list[Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = sorted((out / ".tmp").glob(f"{stage}-*/_shards/*.json"))
        if len(done) >= n:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {n} shards were committed: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for committed shards")


def _kill_running_workers(cluster: LocalCluster, out: Path, stage: str, proc: subprocess.Popen) -> int:
    """While ``stage`` runs (its work folder is there, its manifest not yet), SIGKILL the cluster's
    workers that run a shard task as soon as there are any; how many were killed. The stages before
    it have finished by then; a worker may run a task of a stage beside it (stages run two at a time):
    that task is retried too, and the run's output is compared whole."""
    deadline = time.time() + 120
    while not list((out / ".tmp").glob(f"{stage}-*")):
        assert time.time() < deadline and proc.poll() is None, f"{stage} did not begin: {proc.stderr.read()}"
        time.sleep(0.02)
    killed = 0
    while not killed and not (out / stage / "manifest.json").exists():
        assert time.time() < deadline and proc.poll() is None, f"the run ended in {stage}: {proc.stderr.read()}"
        for pid in cluster.worker_pids():
            with contextlib.suppress(ProcessLookupError):  # it finished its task meanwhile
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.02)
    return killed


def test_fault_workers_killed_mid_stage(cluster, corpus, reference, tmp_path):
    """In one run, a worker killed under an ingest task (plain Ray tasks) and one killed under an
    encode task (tasks whose workers keep the tokenizer they set up): both tasks are retried, and
    the output is the reference's."""
    spec = write_spec(tmp_path, corpus, stages=FAULT_STAGES)
    proc = subprocess.Popen(pipeline_cmd("run", str(spec), "--quiet", "--address", cluster.gcs), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for stage in ("ingest", "encode"):
        assert _kill_running_workers(cluster, tmp_path / "out", stage, proc), f"{stage} ended before a kill"
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert digest(tmp_path / "out", FAULT_STAGES) == of_stages(reference, FAULT_STAGES)


def test_fault_driver_killed_then_resumed(cluster, corpus, reference, tmp_path):
    spec = write_spec(tmp_path, corpus, stages=FAULT_STAGES)
    out = tmp_path / "out"
    proc = subprocess.Popen(pipeline_cmd("run", str(spec), "--quiet", "--address", cluster.gcs), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    done = _wait_committed(out, "ingest", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (out / "ingest" / "manifest.json").exists(), "the stage finished before the kill"
    committed = {}
    for marker in done:
        for part in marker.parent.parent.rglob(f"part-{marker.stem}*.parquet"):
            committed[part.name] = part.stat().st_mtime_ns
    assert committed
    # the killed driver's lock is named as stale, never broken silently; --break-lock resumes
    r = run_cli("run", str(spec), "--quiet", "--address", cluster.gcs)
    assert r.returncode != 0 and "looks stale" in r.stderr and "--break-lock" in r.stderr, r.stderr
    r = run_cli("run", str(spec), "--quiet", "--address", cluster.gcs, "--break-lock")
    assert r.returncode == 0, r.stderr
    assert digest(out, FAULT_STAGES) == of_stages(reference, FAULT_STAGES)
    for name, mtime in committed.items():  # files committed before the kill were not rewritten
        (part,) = list((out / "ingest").rglob(name))
        assert part.stat().st_mtime_ns == mtime, name


def test_object_store_only_run_resumes_after_driver_kill(cluster, corpus, reference, tmp_path, s3_endpoint):
    """No shared disk: the corpus is read from S3 and every stage writes to S3 (moto's S3 server), from
    the driver and the workers of both nodes. The driver is killed while ingest commits shards; the
    re-run resumes from the shard markers in the bucket, and the objects equal the single-node files."""
    fs = s3_filesystem(s3_endpoint)
    fs.create_dir("cluster")
    with fs.open_output_stream("cluster/in/docs.jsonl", compression=None) as dst:
        dst.write(corpus.read_bytes())
    query = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    spec = write_spec(tmp_path, f"s3://testing:testing@cluster/in/docs.jsonl{query}", stages=FAULT_STAGES)
    out = f"s3://testing:testing@cluster/out{query}"
    proc = subprocess.Popen(pipeline_cmd("run", str(spec), "--quiet", "--address", cluster.gcs, "--output", out),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 120
    markers: list = []
    while len(markers) < 2:
        assert time.time() < deadline and proc.poll() is None, f"no shards committed: {proc.stderr.read()[-2000:]}"
        markers = [i for i in fs.get_file_info(pafs.FileSelector("cluster/out/.tmp", recursive=True,
                                                                 allow_not_found=True))
                   if "/_shards/" in i.path and i.path.startswith("cluster/out/.tmp/ingest-")]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert fs.get_file_info("cluster/out/ingest/manifest.json").type == pafs.FileType.NotFound

    r = run_cli("run", str(spec), "--quiet", "--address", cluster.gcs, "--output", out, "--break-lock")
    assert r.returncode == 0, r.stderr
    files = {i.path.removeprefix("cluster/out/"): i for i in fs.get_file_info(
        pafs.FileSelector("cluster/out", recursive=True)) if i.type == pafs.FileType.File}
    got = {rel: hashlib.sha256(fs.open_input_file(i.path).read()).hexdigest() for rel, i in files.items()
           if rel.split("/")[0] in FAULT_STAGES and rel.endswith((".parquet", ".npy", ".bin", ".idx", ".json"))
           and not rel.endswith("manifest.json")}
    assert got == of_stages(reference, FAULT_STAGES)
    manifest = json.loads(fs.open_input_file("cluster/out/ingest/manifest.json").read())
    assert manifest["shards"]["resumed"] >= len(markers), manifest["shards"]
    assert not [rel for rel in files if rel.startswith(".tmp/")]


def test_fault_worker_node_removed_mid_run(cluster, corpus, reference, tmp_path):
    spec = write_spec(tmp_path, corpus, stages=FAULT_STAGES)
    proc = subprocess.Popen(pipeline_cmd("run", str(spec), "--quiet", "--address", cluster.gcs), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    _wait_committed(tmp_path / "out", "ingest", 1, proc)
    cluster.remove_node("worker")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(tmp_path / "out", FAULT_STAGES) == of_stages(reference, FAULT_STAGES)
