"""Language-balanced sampling: allocations by hand, shares after sampling, determinism, language ID."""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import orjson
import pyarrow.compute as pc
import pytest
import zstandard
from conftest import DATA_DIR

from pipeline.parquet_io import read_table
from stages.balance.stage import clamp_targets, copies_for, detect, temperature_targets, unimax_targets, weight_targets


def test_unimax_by_hand_with_cap_and_redistribution():
    sizes = {"a": 1.0, "b": 10.0, "c": 100.0}
    # budget 60 over 3 languages: a is capped at 4 × 1; its leftover goes to b and c (28 each)
    assert unimax_targets(sizes, 60, 4) == pytest.approx({"a": 4.0, "b": 28.0, "c": 28.0})
    # 2 epochs: a capped at 2, b capped at 20, c takes the rest
    assert unimax_targets(sizes, 60, 2) == pytest.approx({"a": 2.0, "b": 20.0, "c": 38.0})
    # a budget below the uniform share caps nothing
    assert unimax_targets(sizes, 3, 4) == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_temperature_and_weights_by_hand():
    sizes = {"a": 1.0, "b": 4.0, "c": 16.0}
    # p^0.5 is proportional to 1 : 2 : 4
    assert temperature_targets(sizes, 0.5, 21) == pytest.approx({"a": 3.0, "b": 6.0, "c": 12.0})
    assert temperature_targets(sizes, 1.0, 21) == pytest.approx(sizes)
    assert weight_targets(sizes, {"a": 1, "c": 3}, 8) == pytest.approx({"a": 2.0, "c": 6.0})
    assert clamp_targets({"a": 2.0, "c": 6.0}, {"a": 3.0}, {"c": 5.0}) == {"a": 3.0, "c": 5.0}


def test_hash_sampler_meets_rates_and_is_stateless():
    ids = [f"doc-{i}" for i in range(20000)]
    import numpy as np

    for rate in (0.25, 1.0, 2.6):
        copies = copies_for(ids, np.full(len(ids), rate), seed=3)
        assert abs(copies.sum() / len(ids) - rate) < 0.02
        assert set(np.unique(copies)) <= {int(rate), int(rate) + 1}
    shuffled = ids[::-1]
    a = dict(zip(ids, copies_for(ids, np.full(len(ids), 0.4), 9), strict=True))
    b = dict(zip(shuffled, copies_for(shuffled, np.full(len(ids), 0.4), 9), strict=True))
    assert a == b  # order (and so block layout) does not matter


def test_copies_of_a_batch_hash_ids_only_for_fractional_rates():
    import numpy as np
    import pyarrow as pa

    from stages.balance.stage import copies_of

    ids = [f"doc-{i}" for i in range(3000)]
    langs = ["en", "de", "fr"] * 1000
    batch = pa.table({"id": ids, "lang": langs})
    for rates in ({"en": 1.0, "de": 2.0}, {"en": 0.4, "de": 1.0, "fr": 2.7}):
        expected = copies_for(ids, np.array([rates.get(x, 0.0) for x in langs]), 5, "bal")
        assert copies_of(batch, rates, 5, "bal").tolist() == expected.tolist()


def make_corpus(tmp_path) -> dict[str, int]:
    rng = random.Random(1)
    sizes = {"en": 3000, "de": 900, "fr": 200, "ga": 40}
    rows = []
    for lang, n in sizes.items():
        for i in range(n):
            rows.append({"id": f"{lang}-{i}", "lang": lang, "text": f"{lang} text {i} " + "x" * rng.randint(50, 150)})
    rng.shuffle(rows)
    (tmp_path / "docs.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return sizes


#: the specs' head: the input ingested in small parts, then a balance stage (its settings follow)
HEAD = """
name: bal
seed: 11
output: out
inputs:
  docs: {{paths: [docs.jsonl]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.05}}
  - name: balance
    type: balance
    inputs: [ingest]
"""
SPEC = HEAD + """    langid: {{mode: "off"}}
    strategy: {strategy}
    unit: documents
    budget: 2000
    max_epochs: 4
    alpha: 0.3
"""


@pytest.mark.parametrize("strategy", ["unimax", "temperature"])
def test_sampled_shares_match_targets(run_spec, tmp_path, strategy):
    make_corpus(tmp_path)
    _, out = run_spec(SPEC.format(strategy=strategy))
    table = read_table(sorted((out / "balance" / "data").glob("*.parquet")))
    got = Counter(table.column("lang").to_pylist())
    m = json.loads((out / "balance" / "manifest.json").read_text())
    langs = m["stats"]["languages"]
    for lang, v in langs.items():
        assert abs(got[lang] / table.num_rows - v["share_target"]) < 0.02, (lang, got[lang], v)
    if strategy == "unimax":  # ga has 40 documents: capped at 4 epochs = 160
        assert langs["ga"]["target"] == 160 and 130 < got["ga"] < 190
        assert max(table.filter(pc.equal(table.column("lang"), "ga")).column("copy").to_pylist()) == 3
    assert m["rows_in"] + sum(m["added"].values()) == m["rows_out"] + sum(m["dropped"].values())


def test_sample_is_identical_across_runs_and_shard_layouts(run_spec, tmp_path):
    outs = []
    for sub, shard_mb in (("a", 0.05), ("b", 0.05), ("c", 1.0)):
        d = tmp_path / sub
        d.mkdir()
        make_corpus(d)
        _, out = run_spec(SPEC.format(strategy="unimax").replace("shard_mb: 0.05", f"shard_mb: {shard_mb}"),
                          directory=d)
        t = read_table(sorted((out / "balance" / "data").glob("*.parquet")))
        outs.append(sorted(zip(t.column("id").to_pylist(), t.column("copy").to_pylist(), strict=True)))
    assert outs[0] == outs[1] == outs[2]


def test_language_id_on_udhr():
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((DATA_DIR / "udhr_articles_1-3.jsonl.zst")
                                                                .read_bytes())).read()
    rows = [orjson.loads(x) for x in raw.splitlines()]
    iso3 = {"eng": "en", "deu": "de", "fra": "fr", "spa": "es", "rus": "ru", "jpn": "ja", "arb": "ar",
            "ita": "it", "pol": "pl", "ces": "cs", "tur": "tr", "nld": "nl", "ukr": "uk", "ell": "el"}
    texts = {r["lang"]: r["text"] for r in rows if r["lang"] in iso3 and r["article"] == 1}
    found, _ = detect(list(texts.values()), 2000)
    correct = sum(iso3[lang] == f for lang, f in zip(texts, found, strict=True))
    assert len(texts) >= 12 and correct / len(texts) >= 0.9


def test_sample_is_identical_with_one_and_two_workers(run_spec, tmp_path, monkeypatch):
    outs = []
    for workers in ("1", "2"):
        monkeypatch.setenv("TOKENMILL_MAX_WORKERS", workers)
        d = tmp_path / f"w{workers}"
        d.mkdir()
        make_corpus(d)
        _, out = run_spec(SPEC.format(strategy="temperature"), directory=d)
        outs.append({p.name: p.read_bytes() for p in sorted((out / "balance" / "data").glob("*.parquet"))})
    assert outs[0] == outs[1] and len(outs[0]) > 1


def test_calibrated_rate_inverts_the_size_histogram():
    import numpy as np

    from stages.balance.stage import HASH_BINS, calibrated_rate

    hist = np.zeros(HASH_BINS)
    hist[0], hist[HASH_BINS // 2], hist[-1] = 100.0, 50.0, 10.0  # three documents
    assert calibrated_rate(100.0, hist) == pytest.approx(1 / HASH_BINS)  # just the first document
    assert calibrated_rate(150.0, hist) == pytest.approx((HASH_BINS // 2 + 1) / HASH_BINS)
    assert calibrated_rate(160.0, hist) == pytest.approx(1.0)
    assert 2.0 < calibrated_rate(420.0, hist) < 2.6  # two full epochs (320) plus the first document


def test_an_empty_input_part_is_balanced_to_an_empty_part(run_spec, tmp_path):
    rows = [{"id": f"d{i}", "lang": "en", "text": "same text every time"} for i in range(600)]
    (tmp_path / "docs.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    spec = SPEC.format(strategy="natural").replace("shard_mb: 0.05", "shard_mb: 0.005").replace(
        "  - name: balance\n    type: balance\n    inputs: [ingest]",
        "  - {name: dedup, type: dedup, inputs: [ingest]}\n  - name: balance\n    type: balance\n    inputs: [dedup]")
    _, out = run_spec(spec)
    m = json.loads((out / "balance" / "manifest.json").read_text())
    assert len(list((out / "dedup" / "data").glob("*.parquet"))) > 1  # all but one part are empty
    assert m["rows_in"] == 1 and m["rows_out"] >= 1


ONE_PASS_SPEC = HEAD + """    langid: {{mode: missing, mark_mismatch: true}}
    strategy: natural
    drop_langs: [ga]
{bound}
"""

#: manifest fields that are timings, memory or the run's own identity, not outputs
_RUN_FIELDS = {"started_at", "wall_time_s", "fingerprint", "shards", "config"}
_RUN_STATS = {"passes", "peak_task_rss_mb"}


def test_natural_in_one_pass_writes_what_two_passes_write(run_spec, tmp_path):
    """``natural`` without bounds runs one pass (RelabelJob); a bound nothing reaches (zu is not in
    the input) sends the same spec through label, calibrate and sample: the same parts, byte for
    byte, and the same manifest apart from timings."""
    rng = random.Random(2)
    rows = []
    for lang, n in {"en": 700, "de": 300, "fr": 80, "ga": 20}.items():
        for i in range(n):
            # the first parts' labels are all codes already; then some to normalise, detect, or mismatch
            label = lang if i < n // 2 else rng.choice([lang, lang.upper() + "_XX", None, "../etc", "fr"])
            rows.append({"id": f"{lang}-{i}", "lang": label,
                         "text": f"{lang} {i} " + " ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(5, 60)))})
    rows.sort(key=lambda r: (r["lang"] != r["id"].split("-")[0], rng.random()))
    runs = []
    for sub, bound in (("one", ""), ("two", "    max_size: {zu: 1}")):
        d = tmp_path / sub
        d.mkdir()
        (d / "docs.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        _, out = run_spec(ONE_PASS_SPEC.format(bound=bound), directory=d)
        m = json.loads((out / "balance" / "manifest.json").read_text())
        parts = {p.name: p.read_bytes() for p in sorted((out / "balance" / "data").glob("*.parquet"))}
        runs.append((m, parts))
    (one, one_parts), (two, two_parts) = runs
    assert set(one["stats"]["passes"]) == {"relabel"} and set(two["stats"]["passes"]) == {"label", "sample"}
    assert len(one_parts) > 1 and one_parts == two_parts
    assert {k: v for k, v in one.items() if k not in _RUN_FIELDS | {"stats"}} == {
        k: v for k, v in two.items() if k not in _RUN_FIELDS | {"stats"}}
    assert {k: v for k, v in one["stats"].items() if k not in _RUN_STATS} == {
        k: v for k, v in two["stats"].items() if k not in _RUN_STATS}
    langs = one["stats"]["languages"]
    assert langs["ga"]["rate"] == 0 and langs["ga"]["documents_after"] == 0 and one["dropped"]["downsampled"] > 0
    assert {v["rate"] for k, v in langs.items() if k != "ga"} == {1.0}
    assert one["stats"]["labels"]["not_a_language_code"] > 0 and sum(v["mismatched"] for v in langs.values()) > 0


WORDS = {lang: words.split() for lang, words in {
    "en": "the house is small and the garden is green with many old trees",
    "de": "das Haus ist klein und der Garten ist grün mit vielen alten Bäumen",
    "fr": "la maison est petite et le jardin est vert avec beaucoup de vieux arbres",
    "ga": "tá an teach beag agus tá an gairdín glas le go leor crann sean"}.items()}


def test_mismatch_column_is_the_per_row_rule():
    """mismatched (distinct labels, Arrow compute) gives what the rule per row gives: a label that is
    a language (not und/zxx, not blank) whose base differs from its source's, for every pair of
    awkward labels (missing, blank, regions, macrolanguage members)."""
    import itertools

    import pyarrow as pa

    from stages.balance.stage import NO_LANGUAGE, _base, mismatched

    vals = ["en", "EN_us", "de", "de-AT", "und", "zxx", None, "", "no", "nb", "cmn", "zh", "fr", "x-y"]
    pairs = list(itertools.product(vals, vals))
    labels, sources = pa.array([a for a, _ in pairs], pa.string()), pa.array([s for _, s in pairs], pa.string())
    expected = [bool(a) and a not in NO_LANGUAGE and s is not None and _base(a) != _base(s) for a, s in pairs]
    got = mismatched(labels, sources)
    assert got.to_pylist() == expected and got.null_count == 0 and any(expected)
    assert mismatched(pa.array([], pa.string()), pa.array([], pa.string())).to_pylist() == []
