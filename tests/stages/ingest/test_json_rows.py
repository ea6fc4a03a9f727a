"""Ingest's batch path for JSON lines gives exactly the rows, rejects and counts of the per-line path.

``IngestJob._json_lines`` appends the common row (string text without blank ends, string or absent
id, lang and source) inline and hands every other line to ``_json_line``; both are run here on the
same lines, without Ray, and must agree to the last field.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from pipeline.spec import FilesInput
from stages.ingest.stage import IngestJob, _Rows

LINES = [
    orjson.dumps({"id": "a", "text": "plain text", "lang": "en", "source": "web"}),
    orjson.dumps({"text": "no id: derived from file and line"}),
    orjson.dumps({"id": 17, "text": "an integer id"}),
    orjson.dumps({"id": None, "text": "a null id"}),
    orjson.dumps({"id": {"k": 1}, "text": "an object id"}),
    orjson.dumps({"id": "b", "text": "  leading blanks"}),
    orjson.dumps({"id": "c", "text": "trailing newline\n"}),
    orjson.dumps({"id": "d", "text": "   "}),
    orjson.dumps({"id": "e", "text": ""}),
    orjson.dumps({"id": "f", "text": "ab"}),
    orjson.dumps({"id": "g", "text": 12}),
    orjson.dumps({"id": "h"}),
    orjson.dumps({"id": "i", "text": "lang is a number", "lang": 3}),
    orjson.dumps({"id": "j", "text": "source is zero", "source": 0}),
    orjson.dumps({"id": "k", "text": "source is empty", "source": ""}),
    orjson.dumps({"id": "l", "text": "lang is empty", "lang": ""}),
    orjson.dumps({"id": "m", "text": "kept fields", "url": "http://x", "meta": {"a": [1]}, "n": 4}),
    orjson.dumps(["not", "an", "object"]),
    b'{"id": "broken", "text": ',
    b"",
    b"   ",
    b'{"id": "bad utf8", "text": "\xff"}',
    b'{"id": "lone", "text": "a\\ud800b"}',
    b'  {"id": "padded", "text": "blank around the object"}  ',
    orjson.dumps({"id": "\u00e9t\u00e9", "text": "\u00e9t\u00e9 \U0001f600 multibyte"}),
]


def run(inp: FilesInput, min_chars: int, batch: bool) -> tuple[dict, list, Counter, Counter, int]:
    job = IngestJob({"docs": inp}, "/base", "quarantine", min_chars, {"dir/f.jsonl": "f.jsonl"})
    job.counts, job.rejected, job.bytes_in, job.rejects = Counter(), Counter(), 0, []
    job.rows = _Rows(inp.keep_fields)
    if batch:
        job._json_lines("dir/f.jsonl", 10, LINES, inp, "docs")
    else:
        for k, raw in enumerate(LINES):
            job.counts["in"] += 1
            job.bytes_in += len(raw) + 1
            job._json_line("dir/f.jsonl", 10 + k, raw, inp, "docs")
    return job.rows.table().to_pydict(), job.rejects, job.counts, job.rejected, job.bytes_in


@pytest.mark.parametrize("min_chars", [1, 3, 20])
@pytest.mark.parametrize("fields", [
    {},
    {"keep_fields": ["url", "meta", "n"]},
    {"lang": "de", "source": "fixed"},
    {"fields": {"id": None, "lang": None, "source": None}},
])
def test_batch_path_equals_per_line_path(min_chars, fields):
    inp = FilesInput.model_validate({"paths": ["dir/f.jsonl"], **fields})
    batch, general = run(inp, min_chars, batch=True), run(inp, min_chars, batch=False)
    assert batch == general
    rows, _, counts, rejected, _ = batch
    assert counts["in"] == len(LINES) == counts["out"] + counts["too_short"] + sum(rejected.values())
    assert rows["id"]  # the cases above keep rows on both paths
