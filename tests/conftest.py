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


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs (notes/ray.md: the fast configuration for tests)."""
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
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}},
    )
    configure_data_context()
    yield ray
    ray.shutdown()


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
        return plan, plan.output

    return _run
