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

from stages.dedup.pairs import _carrier_rows, _shared_keys

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
    """A small bucket window makes the buckets of copies windowed (pairs found at the member level
    must fall on the carriers as before); ``giant: 1`` sends every component through the giant passes."""
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


def test_shared_keys_drop_near_buckets_of_one_carrier_and_pairs_fall_on_carriers():
    """Bucket 7 holds one text's copies only (no pair across carriers): dropped; bucket 9 holds
    carriers 1 and 4 with copies 2, 3 of carrier 1; the exact bucket 5 of two rows stays."""
    t = pa.table({"key": np.array([7, 7, 9, 9, 9, 9, 5, 5, 6], np.uint64),
                  "kind": ["near"] * 6 + ["exact"] * 3, "node": [1, 2, 1, 2, 3, 4, 1, 2, 4],
                  "carrier": [1, 1, 1, 1, 1, 4, 1, 1, 4]})
    kept = _shared_keys(t)
    assert kept.column("key").to_pylist() == [9, 9, 9, 9, 5, 5]
    group = np.array([0, 0, 0, 0, 1, 1])
    rows = _carrier_rows(group, kept.column("node").to_numpy(), kept.column("carrier").to_numpy())
    assert rows.tolist() == [0, 0, 0, 3, 4, 4]
    with pytest.raises(RuntimeError):
        _carrier_rows(np.array([0, 0]), np.array([2, 3]), np.array([1, 1]))  # a copy without its carrier
