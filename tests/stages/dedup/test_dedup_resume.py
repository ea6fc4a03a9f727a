"""Dedup's components passes on the real local Ray: chains of near-duplicates that need several
large-star rounds, the same clusters as a union-find over all verified pairs, and a driver killed
during the components passes resuming to byte-identical output."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from conftest import REPO_ROOT, process_tree, start_time

SPEC = """
name: chains
output: out
inputs:
  docs: {{paths: [{docs}]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.2}}
  - {{name: dedup, type: dedup, inputs: [ingest], partitions: 8}}
"""


def write_chains(path: Path, chains: int = 40, length: int = 30, seed: int = 3) -> None:
    """Chains of documents, each a 200-word window shifted 2 words from the last: neighbours have
    Jaccard ~0.98 and documents 10 links apart ~0.82, so a chain is one component whose members
    are numbered in shuffled order (many rounds to converge)."""
    rng = random.Random(seed)
    vocab = [f"w{rng.randrange(10**9):09d}" for _ in range(5000)]
    docs = []
    for c in range(chains):
        words = [rng.choice(vocab) for _ in range(200 + 2 * length)]
        docs += [{"id": f"c{c:03d}-{i:03d}", "text": " ".join(words[2 * i: 2 * i + 200]), "source": f"s{c % 3}"}
                 for i in range(length)]
    docs += [{"id": f"single-{k:04d}", "text": " ".join(rng.choice(vocab) for _ in range(150)), "source": "s0"}
             for k in range(300)]
    rng.shuffle(docs)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def digest(out: Path) -> dict[str, str]:
    files = sorted(f for f in (out / "dedup").rglob("*.parquet"))
    assert files
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_BACKEND_LOG_LEVEL="fatal", PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_in_pass_then_resume(run_spec, run_dir: Path, spec: str, pass_name: str) -> dict:
    """Run ``spec`` in ``run_dir`` with the CLI, SIGKILL the driver once pass ``pass_name`` has
    committed a shard, wait for the killed run's processes (its embedded Ray) to be gone, resume with
    ``break_lock`` in this process on the session's Ray; the resumed run's dedup manifest.

    The resumed run is the same ``run_pipeline`` the CLI calls; in this process it needs no Ray of
    its own (a CLI resume started, warmed and stopped one: most of its 15-18 s here)."""
    (run_dir / "spec.yaml").write_text(spec)
    proc = _cli("run", "spec.yaml", "--quiet", cwd=run_dir)
    markers = run_dir / "out" / ".tmp"
    pattern = f"dedup-*/_shards/{pass_name}-*.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(markers.glob(pattern)):
            break
        time.sleep(0.01)
    run_procs = {pid: start_time(pid) for pid in process_tree(proc.pid)}
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (run_dir / "out" / "dedup" / "manifest.json").exists(), "dedup finished before the kill"
    assert list(markers.glob(pattern)), f"killed before the {pass_name} pass"
    deadline = time.time() + 30  # the embedded Ray dies with its driver (pipeline.ray_watchdog)
    while (alive := [p for p, t in run_procs.items() if start_time(p) == t]) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes of the killed run still alive: {alive}"
    run_spec(spec, directory=run_dir, break_lock=True)
    manifest = json.loads((run_dir / "out" / "dedup" / "manifest.json").read_text())
    assert manifest["shards"]["resumed"] > 0  # the passes committed before the kill were not redone
    return manifest

def test_chains_need_rounds_and_a_killed_driver_resumes_identically(run_spec, tmp_path):
    docs = tmp_path / "docs.jsonl"
    write_chains(docs)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    _, ref_out = run_spec(SPEC.format(docs=docs), directory=ref_dir)
    m = json.loads((ref_out / "dedup" / "manifest.json").read_text())
    assert m["stats"]["component_rounds"] >= 2
    clusters = pq.read_table(ref_out / "dedup" / "__clusters").to_pylist()
    by_chain: dict[str, set[str]] = {}
    for row in clusters:
        by_chain.setdefault(row["id"].split("-")[0], set()).add(row["cluster_id"])
    assert len(by_chain) == 40 and all(len(roots) == 1 for roots in by_chain.values())  # one cluster per chain
    assert not any(r["id"].startswith("single") for r in clusters)
    assert all(r["similarity"] >= 0.7 for r in clusters if not r["kept"])  # every removed doc has a near twin

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    kill_in_pass_then_resume(run_spec, run_dir, SPEC.format(docs=docs), "large-star1")
    assert digest(run_dir / "out") == digest(ref_out)
