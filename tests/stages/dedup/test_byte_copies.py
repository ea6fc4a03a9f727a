"""Byte copies go through near dedup once (``near.copies_once``): the same output, byte for byte,
as the path where every copy is signed, paired and verified itself (``copies_once: false``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_dedup import mutate, sample_texts, write_docs

from stages.dedup.byte_copies import MEMBER_SCHEMA
from stages.dedup.pairs import BatchDocs, _bucket_rows, _copy_keys, _shared_keys

SPEC = """
name: dd
output: out
inputs:
  docs: {{paths: [docs.jsonl], keep_fields: [q]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.02}}
  - name: dedup
    type: dedup
    inputs: [ingest]
    keep: {keep}
    partitions: {partitions}
    giant_component_docs: {giant}
    exact: {{enabled: {exact}}}
    near: {{copies_once: {once}, bucket_window: {window}, threshold: 0.8}}
"""


def copies_corpus() -> list[dict]:
    """Originals, near variants, byte copies of both (1 to 6 each, ids sorting before, between and
    after the others'), case/space variants (exact after normalisation but not byte-equal) with
    their own byte copies, short and empty texts with copies; ``q`` differs between copies."""
    rng = random.Random(11)
    docs: list[dict] = []
    for i, text in enumerate(sample_texts(60, 24)):
        words = text.split()[:300]
        group = [" ".join(words)] + [" ".join(mutate(words, rate, rng)) for rate in (0.01, 0.03, 0.08)]
        for j, t in enumerate(group):
            docs.append({"id": f"d{i:02d}-{j}", "text": t, "q": float(rng.randrange(5))})
            for c in range(rng.choice([0, 0, 1, 2, 3, 6])):  # byte copies, ids around the original's
                prefix = rng.choice(["a", "d", "z"])
                docs.append({"id": f"{prefix}{i:02d}-{j}~{c}", "text": t, "q": float(rng.randrange(5))})
        if i % 4 == 0:  # normalised-equal, bytes differ; then a byte copy of that variant
            variant = group[0].upper() + "  "
            docs += [{"id": f"u{i:02d}-{c}", "text": variant, "q": 1.0} for c in range(2)]
    for c in range(3):
        docs += [{"id": f"e-{c}", "text": "", "q": 0.0}, {"id": f"s-{c}", "text": "short text", "q": float(c)},
                 {"id": f"w-{c}", "text": "   ", "q": 0.0}]
    rng.shuffle(docs)
    return docs


def run(run_spec, tmp_path: Path, name: str, **params: object) -> tuple[dict[str, bytes], dict]:
    """The dedup stage's output files (bytes) and stats for one setting."""
    d = tmp_path / name
    d.mkdir()
    write_docs(d / "docs.jsonl", copies_corpus())
    values = {"keep": "longest", "partitions": 3, "giant": 200_000, "exact": "true", "once": "true", "window": 64}
    values.update(params)
    _, out = run_spec(SPEC.format(**values), directory=d)
    files = {str(p.relative_to(out / "dedup")): p.read_bytes() for p in sorted((out / "dedup").rglob("*.parquet"))}
    stats = json.loads((out / "dedup" / "manifest.json").read_text())["stats"]
    return files, stats


SAME_STATS = ("removed_exact", "removed_near", "clusters", "documents_in_clusters", "kept_in_clusters",
              "largest_cluster", "cluster_size_histogram")


@pytest.mark.parametrize(("keep", "window", "giant"), [("longest", 64, 200_000), ("first", 2, 200_000),
                                                       ("column", 3, 1)])
def test_byte_copies_once_give_the_output_of_every_copy_signed(run_spec, tmp_path, keep, window, giant):
    """A small bucket window makes the near buckets windowed: over distinct texts with the copies
    signed once, over documents without, which on this corpus finds the same clusters (not
    guaranteed in general: see ``stages.dedup.byte_copies``); ``giant: 1`` sends every component
    through the giant passes."""
    col = {"keep": "column\n    keep_column: q" if keep == "column" else keep, "window": window, "giant": giant}
    once, once_stats = run(run_spec, tmp_path, "once", **col)
    every, every_stats = run(run_spec, tmp_path, "every", once="false", **col)
    assert once_stats["passes"].keys() >= {"byte-hash", "byte-groups"}
    assert "byte-hash" not in every_stats["passes"]
    assert len(once) > 2 and once == every
    assert {k: once_stats[k] for k in SAME_STATS} == {k: every_stats[k] for k in SAME_STATS}
    assert once_stats["removed_exact"] > 40 and once_stats["removed_near"] > 10
    if keep == "longest":  # and for any partitioning
        assert run(run_spec, tmp_path, "once1", partitions=1, **col)[0] == once


def test_without_exact_dedup_copies_are_signed_as_before(run_spec, tmp_path):
    """The short-circuit needs exact dedup (its exact stars join the copies): without, it is off."""
    once, stats = run(run_spec, tmp_path, "once", exact="false")
    every, _ = run(run_spec, tmp_path, "every", exact="false", once="false")
    assert "byte-hash" not in stats["passes"] and once == every and stats["removed_near"] > 50


def test_shared_keys_keep_the_buckets_of_two_documents_per_kind():
    """Near bucket 7 holds one document (dropped), near bucket 9 three; exact bucket 5 two rows,
    exact bucket 6 one (dropped); near key 5 and exact key 9 are other buckets than their numbers'."""
    t = pa.table({"key": np.array([7, 9, 9, 9, 5, 5, 6, 5, 9], np.uint64),
                  "kind": ["near"] * 4 + ["exact"] * 3 + ["near", "exact"], "node": [1, 1, 3, 4, 1, 2, 4, 8, 8]})
    kept = _shared_keys(t)
    assert kept.column("key").to_pylist() == [9, 9, 9, 5, 5]
    assert kept.column("node").to_pylist() == [1, 3, 4, 1, 2]


def test_byte_copies_get_their_carriers_exact_key_only():
    """A copy's bucket rows: its carrier's exact key under its own node, keep key and id; no near keys."""
    docs = BatchDocs(np.array([10, 11, 12]), np.array([-5.0, -3.0, -3.0]), pa.array(["a", "b", "c"]))
    keyset = [(np.array([100, 101, 102], np.uint64), np.arange(3), 0),
              (np.array([200, 202], np.uint64), np.array([0, 2]), 1)]
    members = pa.table({"carrier": [10, 12, 12], "node": [40, 41, 42], "k0": [-5.0, -3.0, -3.0],
                        "id": ["a2", "c2", "c3"]}, schema=MEMBER_SCHEMA)
    rows = _bucket_rows(*_copy_keys(keyset, docs, members), 4)
    assert rows.column("kind").to_pylist() == ["exact"] * 3
    assert rows.column("key").to_pylist() == [100, 102, 102]
    assert rows.column("node").to_pylist() == [40, 41, 42]
    assert rows.column("id").to_pylist() == ["a2", "c2", "c3"]
