"""The spec's JSON Schema, checked with the ``jsonschema`` package as a generic validator (an editor's view)."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from pipeline.spec import json_schema, parse_spec

SPEC = """
name: s
inputs:
  docs: {paths: [a.jsonl]}
  tok: {kind: artifact, path: tokenizer.json}
stages:
  - {name: ingest, type: ingest, inputs: [docs]}
  - name: dedup
    type: dedup
    inputs: [ingest]
    near: {threshold: 0.8}
"""


def _errors(doc: dict) -> list[jsonschema.ValidationError]:
    v = jsonschema.Draft202012Validator(json_schema())
    return sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))


def test_schema_is_valid_and_accepts_a_good_spec():
    jsonschema.Draft202012Validator.check_schema(json_schema())
    doc = yaml.safe_load(SPEC)
    assert _errors(doc) == []
    parse_spec(SPEC)  # and pydantic agrees


def test_wrong_key_under_dedup_is_reported_at_that_key():
    doc = yaml.safe_load(SPEC)
    doc["stages"][1]["nearr"] = {"threshold": 0.7}
    errs = _errors(doc)
    assert len(errs) == 1
    (e,) = errs
    assert list(e.absolute_path) == ["stages", 1] and e.validator == "additionalProperties"
    assert "'nearr' was unexpected" in e.message
    best = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(json_schema()).iter_errors(doc))
    assert "nearr" in best.message


@pytest.mark.parametrize(("path", "value", "where"), [
    (("stages", 1, "near"), {"threshold": "high"}, ["stages", 1, "near", "threshold"]),
    (("stages", 1, "type"), "dedupe", ["stages", 1, "type"]),
    (("inputs", "tok", "paths"), ["x"], ["inputs", "tok"]),
])
def test_other_mistakes_point_inside_the_selected_branch(path, value, where):
    doc = yaml.safe_load(SPEC)
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    errs = _errors(doc)
    assert errs and all(list(e.absolute_path)[: len(where)] == where for e in errs)
    assert not any(e.validator == "oneOf" for e in errs)
