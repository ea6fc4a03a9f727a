"""Shared fixtures: one real local Ray for the whole session, and a helper that runs a spec."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")

DATA_DIR = Path(__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: every folder of test modules (tests/engine, tests/stages/<type>, ...): pytest imports test modules by
#: their folder, and Ray workers unpickling a job defined in one need the same folders on their path
TEST_DIRS = sorted({str(p.parent) for p in Path(__file__).parent.rglob("test_*.py")} | {str(Path(__file__).parent)})


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, started once for the session (starting Ray costs seconds)."""
    import ray

    from pipeline.ray_session import WORKER_ENV, configure_data_context

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        object_store_memory=512 << 20,
        # test modules (jobs and stages defined in tests) must import on the workers too
        runtime_env={"env_vars": {**WORKER_ENV, "PYTHONPATH": os.pathsep.join(
            [*TEST_DIRS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}},
    )
    configure_data_context()
    yield ray
    ray.shutdown()


#: the shared Debian corpus beside the project (on CI too); tests that need real multilingual text read its head
SHARED_CORPUS = REPO_ROOT.parent / "shared" / "data" / "debian-multilingual.jsonl.zst"


def shared_corpus_rows(n: int) -> list[dict]:
    """The first ``n`` documents of the shared corpus (the test is skipped when it is not there)."""
    import io
    import itertools
    import json

    import zstandard

    if not SHARED_CORPUS.is_file():
        pytest.skip(f"corpus not found: {SHARED_CORPUS}")
    with SHARED_CORPUS.open("rb") as f:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        return [json.loads(line) for line in itertools.islice(reader, n)]


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` once it is gone: a pid names
    the same process for as long as its start time is the same (pids are reused)."""
    from pipeline.ray_watchdog import _stat

    stat = _stat(pid)
    return None if stat is None else stat[1]


def process_tree(pid: int) -> set[int]:
    """The live descendants of process ``pid`` (children, their children, ...), from ``/proc``."""
    from pipeline.ray_watchdog import _descendants, _table

    return _descendants({pid}, _table())


def write_spec(directory: Path, text: str) -> Path:
    path = directory / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def run_spec(ray_local, tmp_path):
    """Write a YAML spec into tmp_path and run it on the session's Ray; returns (plan, output dir)."""
    from pipeline.progress import QuietReporter
    from pipeline.runner import run_pipeline
    from pipeline.spec import load_spec

    def _run(text: str, directory: Path | None = None, **kwargs):
        d = directory or tmp_path
        spec = load_spec(write_spec(d, text))
        plan = run_pipeline(spec, reporter=QuietReporter(), **kwargs)
        return plan, (plan.output.local if plan.output.is_local else plan.output)

    return _run


# ------------------------------------------------------------------------------ a real S3 endpoint


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server in this process: a real HTTP endpoint speaking the S3 protocol, reachable from
    Ray workers in other processes (and from the nodes of the test cluster).

    Every request goes straight to moto's S3 application, the one moto's own all-services server
    hands S3 requests to, and is not logged: that server's dispatcher lists moto's package folder
    under a lock for every request, and with the log line that was a third of moto's CPU time
    (measured on the whole-pipeline S3 test: 31.5 s -> 20 s), spent in this process, whose GIL the
    driver of in-process runs shares."""
    import threading

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app  # the `test` extra
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: object, **kwargs: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, create_backend_app("s3"), threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def s3_filesystem(endpoint: str):
    """pyarrow's own S3 client on the endpoint (what tokenmill uses for s3:// URIs)."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                             endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
