"""A driver-bound stage (HF tokenizer training) runs beside the stages that do not need its output,
and a stage that needs it starts only once it is committed; the outputs are those of a run where
every stage runs alone."""

from __future__ import annotations

import json
import threading

import orjson
from conftest import shared_corpus_rows

from pipeline.progress import QuietReporter
from pipeline.runner import run_pipeline
from pipeline.spec import load_spec
from stages.tokenizer.stage import TrainTokenizerConfig, TrainTokenizerStage

SPEC = """
name: overlap
seed: 5
output: out
inputs:
  docs: {paths: [docs.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 0.2}
  - {name: tok, type: train_tokenizer, inputs: [ingest], vocab_size: 3000, report: {heldout_docs: 10}}
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


def _run(directory, lines: bytes, serial: bool, monkeypatch) -> tuple[list, dict[str, bytes]]:
    directory.mkdir()
    (directory / "docs.jsonl").write_bytes(lines)
    (directory / "spec.yaml").write_text(SPEC)
    with monkeypatch.context() as m:
        if serial:
            m.setattr(TrainTokenizerStage, "driver_bound", lambda self: False)
        events = Events()
        run_pipeline(load_spec(directory / "spec.yaml"), reporter=events)
    out = directory / "out"
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/data/*.parquet"))}
    files["tok/tokenizer.json"] = (out / "tok" / "tokenizer.json").read_bytes()
    return events.events, files


def test_hf_training_overlaps_the_stages_beside_it_and_outputs_do_not_change(ray_local, tmp_path, monkeypatch):
    assert TrainTokenizerStage(TrainTokenizerConfig(name="t", type="train_tokenizer")).driver_bound()  # llama3: HF
    assert not TrainTokenizerStage(TrainTokenizerConfig(name="t", type="train_tokenizer",
                                                        pretokenizer="gpt2")).driver_bound()  # gigatoken
    rows = shared_corpus_rows(600)
    lines = b"".join(orjson.dumps({"id": r["id"], "text": r["text"][:8000], "lang": r.get("lang")}) + b"\n"
                     for r in rows)
    events, files = _run(tmp_path / "overlap", lines, False, monkeypatch)
    at = {(kind, name): i for i, (kind, name, _) in enumerate(events)}
    threads = {name: thread for kind, name, thread in events if kind == "start"}
    assert threads["tok"] == "tokenmill-tok" and threads["dedup"] == threads["ingest"] != "tokenmill-tok"
    assert at["finish", "ingest"] < at["start", "tok"] and at["finish", "ingest"] < at["start", "dedup"]
    assert at["start", "dedup"] < at["finish", "tok"]  # side by side
    assert at["finish", "tok"] < at["start", "encode"] and at["finish", "dedup"] < at["start", "encode"]

    serial_events, serial_files = _run(tmp_path / "serial", lines, True, monkeypatch)
    assert [(k, n) for k, n, _ in serial_events] == [(k, n) for name in ("ingest", "tok", "dedup", "encode")
                                                      for k, n in (("start", name), ("finish", name))]
    assert files == serial_files  # byte for byte
    manifest = json.loads((tmp_path / "overlap" / "out" / "tok" / "manifest.json").read_text())
    assert manifest["stats"]["trainer"]["trainer"] == "hf"
