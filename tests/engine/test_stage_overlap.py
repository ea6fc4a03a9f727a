"""Stages run side by side as their inputs complete (a driver-bound one, HF tokenizer training,
beside the Ray stages; two Ray stages beside each other), a stage that needs another's output starts
only once it is committed, and the outputs are those of a run where every stage runs alone."""

from __future__ import annotations

import json
import threading

import orjson
from conftest import shared_corpus_rows

from pipeline import runner
from pipeline.progress import QuietReporter
from pipeline.runner import run_pipeline
from pipeline.spec import load_spec
from stages.tokenizer.stage import TrainTokenizerConfig, TrainTokenizerStage

#: the specs' common head: one input, ingested in small shards
HEAD = """
name: overlap
seed: 5
output: out
inputs:
  docs: {paths: [docs.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 0.2}
"""
SPEC = HEAD + """  - {name: tok, type: train_tokenizer, inputs: [ingest], vocab_size: 3000, report: {heldout_docs: 10}}
  - {name: dedup, type: dedup, inputs: [ingest]}
  - {name: encode, type: encode, inputs: [dedup], tokenizer: tok}
"""


class Events(QuietReporter):
    """The order stages started and finished in, and on which thread."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []

    def stage_started(self, name: str, stage_type: str) -> None:
        self.events.append(("start", name, threading.current_thread().name))
        super().stage_started(name, stage_type)

    def stage_finished(self, name: str, manifest: dict) -> None:
        self.events.append(("finish", name, threading.current_thread().name))
        super().stage_finished(name, manifest)


def _lines(n: int, chars: int) -> bytes:
    """JSON lines of ``n`` documents of the shared corpus, their texts cut to ``chars``."""
    return b"".join(orjson.dumps({"id": r["id"], "text": r["text"][:chars], "lang": r.get("lang")}) + b"\n"
                    for r in shared_corpus_rows(n))


def _run(directory, lines: bytes, serial: bool, monkeypatch, spec: str = SPEC) -> tuple[list, dict[str, bytes]]:
    """``serial``: one stage at a time."""
    directory.mkdir()
    (directory / "docs.jsonl").write_bytes(lines)
    (directory / "spec.yaml").write_text(spec)
    with monkeypatch.context() as m:
        if serial:
            m.setattr(runner, "STAGES_AT_ONCE", 1)
            m.setattr(TrainTokenizerStage, "driver_bound", lambda self: False)
        events = Events()
        run_pipeline(load_spec(directory / "spec.yaml"), reporter=events)
    out = directory / "out"
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/data/*.parquet"))}
    if (out / "tok").exists():
        files["tok/tokenizer.json"] = (out / "tok" / "tokenizer.json").read_bytes()
    return events.events, files


def test_stages_run_side_by_side_and_outputs_do_not_change(ray_local, tmp_path, monkeypatch):
    assert TrainTokenizerStage(TrainTokenizerConfig(name="t", type="train_tokenizer")).driver_bound()  # llama3: HF
    assert not TrainTokenizerStage(TrainTokenizerConfig(name="t", type="train_tokenizer",
                                                        pretokenizer="gpt2")).driver_bound()  # gigatoken
    lines = _lines(600, 8000)
    events, files = _run(tmp_path / "overlap", lines, False, monkeypatch)
    at = {(kind, name): i for i, (kind, name, _) in enumerate(events)}
    threads = {name: thread for kind, name, thread in events if kind == "start"}
    assert threads == {name: f"tokenmill-{name}" for name in ("ingest", "tok", "dedup", "encode")}
    assert at["finish", "ingest"] < at["start", "tok"] and at["finish", "ingest"] < at["start", "dedup"]
    assert at["start", "dedup"] < at["finish", "tok"] and at["start", "tok"] < at["finish", "dedup"]  # side by side
    assert at["finish", "tok"] < at["start", "encode"] and at["finish", "dedup"] < at["start", "encode"]

    serial_events, serial_files = _run(tmp_path / "serial", lines, True, monkeypatch)
    assert [(k, n) for k, n, _ in serial_events] == [(k, n) for name in ("ingest", "tok", "dedup", "encode")
                                                      for k, n in (("start", name), ("finish", name))]
    assert files == serial_files  # byte for byte
    manifest = json.loads((tmp_path / "overlap" / "out" / "tok" / "manifest.json").read_text())
    assert manifest["stats"]["trainer"]["trainer"] == "hf"
    # beside dedup HF trains on one thread (same merges: the tokenizers compared above); alone, on all
    assert manifest["stats"]["trainer"]["threads"] == "one (stages beside it)"
    serial = json.loads((tmp_path / "serial" / "out" / "tok" / "manifest.json").read_text())
    assert serial["stats"]["trainer"]["threads"] == "all"


RAY_SPEC = HEAD + """  - {name: dedup, type: dedup, inputs: [ingest]}
  - {name: balance, type: balance, inputs: [ingest], strategy: unimax, budget: 200000}
"""


def test_two_ray_stages_share_the_workers_and_outputs_do_not_change(ray_local, tmp_path, monkeypatch):
    lines = _lines(600, 8000)
    events, files = _run(tmp_path / "overlap", lines, False, monkeypatch, RAY_SPEC)
    at = {(kind, name): i for i, (kind, name, _) in enumerate(events)}
    assert at["start", "dedup"] < at["finish", "balance"] and at["start", "balance"] < at["finish", "dedup"]
    serial_events, serial_files = _run(tmp_path / "serial", lines, True, monkeypatch, RAY_SPEC)
    assert [(k, n) for k, n, _ in serial_events] == [(k, n) for name in ("ingest", "dedup", "balance")
                                                      for k, n in (("start", name), ("finish", name))]
    assert files == serial_files and len(files) >= 3  # byte for byte


def test_a_stage_that_holds_the_driver_runs_alone(ray_local, tmp_path, monkeypatch):
    """gigatoken's trainer holds the GIL: nothing runs beside it (the driver of a stage beside it
    could not hand its workers tasks)."""
    gigatoken = TrainTokenizerConfig(name="t", type="train_tokenizer", pretokenizer="gpt2")
    assert TrainTokenizerStage(gigatoken).holds_driver()
    lines = _lines(300, 4000)
    spec = SPEC.replace("vocab_size: 3000,", "vocab_size: 3000, pretokenizer: gpt2,")
    events, _ = _run(tmp_path / "alone", lines, False, monkeypatch, spec)
    at = {(kind, name): i for i, (kind, name, _) in enumerate(events)}
    assert at["finish", "tok"] == at["start", "tok"] + 1  # nothing started or finished while it ran
