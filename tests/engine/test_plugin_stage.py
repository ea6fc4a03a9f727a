"""A stage type added from outside ``stages/`` (an entry point of a test distribution) runs end to end
through the real CLI and Ray, and its chart appears in the run report: a new stage is one package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
ROOT = Path(__file__).resolve().parents[2]


def test_plugin_stage_runs_end_to_end_with_its_chart(tmp_path):
    docs = [{"id": f"d{i}", "text": " ".join(["word"] * n)} for i, n in enumerate([1, 5, 12, 40, 150, 3])]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""
        name: plugin
        ray: {num_cpus: 2}
        output: out
        inputs:
          docs: {paths: [docs.jsonl]}
        stages:
          - {name: ingest, type: ingest, inputs: [docs]}
          - {name: words, type: wordcount, inputs: [ingest], min_words: 4}
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "spec.yaml"), "--quiet"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr

    out = tmp_path / "out"
    table = pq.read_table(out / "words" / "data")
    assert sorted(table["words"].to_pylist()) == [5, 12, 40, 150]
    manifest = json.loads((out / "words" / "manifest.json").read_text())
    assert manifest["dropped"] == {"too_few_words": 2}
    assert manifest["stats"]["histogram"] == {"10-99": 2, "100+": 1, "0-9": 1}

    report = json.loads((out / "report.json").read_text())
    assert "words:words" in report["charts"]
    page = (out / "report.html").read_text()
    assert 'data-chart="words:words"' in page and "words: words per document" in page
    assert "words counted: 207" in page
