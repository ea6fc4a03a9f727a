"""A run's terminal shows tokenmill's lines only: no Ray engine notice (``logging.cc ... Set ray log
level``) and no core-worker error about restartable actors (ray#53727), in a fresh process."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import orjson
import zstandard
from conftest import REPO_ROOT, write_spec

SPEC = """
name: quiet
output: out
inputs:
  docs: {paths: [docs.jsonl.zst]}
stages:
  - {name: ingest, type: ingest, inputs: [docs]}
  - {name: tokenizer, type: train_tokenizer, inputs: [ingest], vocab_size: 400, report: {heldout_docs: 5}}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tokenizer}
"""


def test_run_prints_no_ray_engine_lines(tmp_path):
    raw = (REPO_ROOT / "yaml_specs" / "data" / "debian-sample.jsonl.zst").read_bytes()
    lines = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().splitlines()[:80]
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        b"".join(orjson.dumps(orjson.loads(x)) + b"\n" for x in lines)))
    spec = write_spec(tmp_path, SPEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[encode] done" in res.stderr
    for noise in ("logging.cc", "Set ray log level", "core_worker.cc", "53727"):
        assert noise not in res.stderr and noise not in res.stdout
