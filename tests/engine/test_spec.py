"""Spec validation and DAG compilation: errors name the key path, the bad value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.dag import build_dag
from pipeline.errors import SpecError
from pipeline.spec import json_schema, parse_spec

BASE = """
name: t
inputs:
  raw: {paths: [docs.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [raw]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), source="spec.yaml")
    return info.value.problems


def test_valid_spec_compiles_to_dag():
    spec = parse_spec(BASE + "  - {name: f, type: filter, inputs: [ingest], min_chars: 5}\n")
    dag = build_dag(spec)
    assert dag.order == ["ingest", "f"]
    assert dag.edges() == [("raw", "ingest", "dataset"), ("ingest", "f", "dataset")]


def test_unknown_key_suggests_the_right_one():
    (msg,) = problems(BASE + "  - {name: f, type: filter, inputs: [ingest], min_char: 5}\n")
    assert msg.startswith("stages[1].min_char: unknown key (did you mean 'min_chars'?")
    assert "allowed:" in msg and "max_chars" in msg


def test_bound_violation_names_path_and_value():
    (msg,) = problems(BASE.replace("inputs: [raw]}", "inputs: [raw], shard_mb: -1}"))
    assert msg == "stages[0].shard_mb: must be > 0 (got -1)"


def test_wrong_type_and_bad_literal():
    msgs = problems(BASE.replace("inputs: [raw]}", "inputs: [raw], on_error: explode, min_chars: many}"))
    assert "stages[0].on_error: must be one of 'quarantine' or 'fail' (got 'explode')" in msgs
    assert "stages[0].min_chars: must be an integer (got 'many')" in msgs


def test_unknown_stage_type_lists_allowed():
    (msg,) = problems(BASE + "  - {name: x, type: frobnicate, inputs: [ingest]}\n")
    assert msg.startswith("stages[1]: unknown stage type 'frobnicate' (allowed: ")
    assert "'ingest'" in msg and "'filter'" in msg


def test_missing_reference():
    (msg,) = problems(BASE + "  - {name: f, type: filter, inputs: [ingst]}\n")
    assert msg == (
        "stages[1].inputs[0]: unknown stage or input 'ingst' (did you mean 'ingest'? known: ingest, raw)"
    )


def test_cycle_is_reported_with_its_path():
    (msg,) = problems(
        BASE
        + "  - {name: a, type: filter, inputs: [b]}\n"
        + "  - {name: b, type: filter, inputs: [a]}\n"
    )
    assert msg.startswith("stages[1].inputs: cycle ")
    assert "a -> b -> a" in msg or "b -> a -> b" in msg


def test_duplicate_names():
    (msg,) = problems(BASE + "  - {name: ingest, type: filter, inputs: [raw]}\n")
    assert "stages[1].name: duplicate name 'ingest'" in msg


def test_stage_cannot_read_raw_input_directly():
    (msg,) = problems(BASE + "  - {name: f, type: filter, inputs: [raw]}\n")
    assert "only stages of type ingest read inputs" in msg


def test_missing_required_and_yaml_syntax():
    assert problems("name: t\nstages: []\n") == ["stages: must have at least 1 item (got 0)"]
    (msg,) = problems("name: t\nstages: [\n")
    assert "invalid YAML" in msg


def test_json_schema_covers_every_stage_type():
    schema = json_schema()
    text = str(schema)
    for stage_type in ("ingest", "filter"):
        assert f"'{stage_type}'" in text
    assert schema["title"] == "tokenmill pipeline spec"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  - {name: f, type: filter, inputs: [ingest], min_char: 5}\n", "stages[1].min_char: unknown key"),
        ("  - {name: a, type: filter, inputs: [b]}\n  - {name: b, type: filter, inputs: [a]}\n", "cycle"),
        ("  - {name: f, type: filter, inputs: [nope]}\n", "unknown stage or input 'nope'"),
    ],
)
def test_cli_validate_fails_in_one_line_without_traceback(tmp_path, extra, expected):
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(BASE) + extra)
    res = run_cli("validate", "spec.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: spec.yaml: ") and expected in lines[0]


def test_cli_validate_ok_and_schema(tmp_path):
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(BASE))
    res = run_cli("validate", "spec.yaml", cwd=tmp_path)
    assert res.returncode == 0 and "valid (1 stages: ingest)" in res.stdout
    res = run_cli("schema", cwd=tmp_path)
    assert res.returncode == 0 and '"tokenmill pipeline spec"' in res.stdout


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "yaml_specs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_spec_is_valid_and_compiles(path):
    from pipeline.spec import load_spec

    dag = build_dag(load_spec(path))
    assert dag.order and len(set(dag.order)) == len(dag.order)
