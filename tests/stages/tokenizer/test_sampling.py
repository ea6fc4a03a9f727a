"""Samplers are independent (each hash salted with its stage and role), the tokenizer sample keeps the
balanced mix and its text-byte budget, and "held out" means not trained on."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.locations import Location
from pipeline.parquet_io import read_table
from pipeline.sampling import salted_hashes, salted_uniform
from stages.tokenizer.quality import quality_report, summary_rows
from stages.tokenizer.sample import HashSample, HeldoutPool, calibrate, heldout_docs, iter_sample

WORDS = [f"w{i}" for i in range(400)]


def test_salted_hashes_differ_by_stage_and_role_and_are_uncorrelated():
    ids = [f"doc-{i}" for i in range(20000)]
    a = salted_uniform(ids, 3, "balance", "copies")
    b = salted_uniform(ids, 3, "tokenizer", "sample")
    assert not np.array_equal(salted_hashes(ids, 3, "balance", "copies"), salted_hashes(ids, 3, "balance", "x"))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    # the nesting bug: of balance's 25 % sample, a 10 % tokenizer sample must be ~10 %, not all of it
    assert abs((b[a < 0.25] < 0.1).mean() - 0.1) < 0.02


def write_parts(tmp_path, rows: list[dict], per_part: int = 700) -> list[Location]:
    files = []
    for k in range(0, len(rows), per_part):
        p = tmp_path / f"part-{k:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k:k + per_part]), p)
        files.append(Location.parse(str(p), tmp_path))
    return files


def corpus(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 200)))
        for c in range(rng.choice([1, 1, 1, 3])):  # some documents up-sampled: copies share the id
            rows.append({"id": f"d{i}", "text": text, "lang": "xx", "copy": c})
    return rows


def test_sample_meets_the_text_byte_budget_within_one_document(tmp_path):
    rows = corpus(3000)
    files = write_parts(tmp_path, rows)
    budget, max_chars = 150_000, 400
    sample, fig = calibrate(files, HashSample("tok", "sample", 7), budget, max_chars)
    got = list(iter_sample(files, sample, max_chars))
    size = sum(len(r["text"].encode()) for r in got)
    assert size == fig["sample_bytes"] <= budget
    # brute force: rows by hash of their key (the id; id and k for copy k > 0); the next row would cross
    keys = [r["id"] if not r["copy"] else f"{r['id']}\x1f{r['copy']}" for r in rows]
    h = salted_hashes(keys, 7, "tok", "sample").tolist()
    order = sorted(range(len(rows)), key=lambda i: h[i])
    limit = dict(sample.per_lang)["xx"]
    inside = [i for i in order if h[i] < limit]
    assert sum(len(rows[i]["text"][:max_chars].encode()) for i in inside) == size
    assert size + len(rows[order[len(inside)]]["text"][:max_chars].encode()) > budget
    # copies are sampled one by one: some documents have only some of their copies in the sample
    per_id = Counter(r["id"] for r in got)
    copies = Counter(r["id"] for r in rows)
    assert any(0 < per_id[i] < copies[i] for i in per_id)
    # the budget counts text bytes, not all columns: the whole table is far larger than the sample
    assert fig["eligible_bytes"] == sum(len(r["text"][:max_chars].encode()) for r in rows)
    # a budget below the first document still trains on one document; a huge one on everything
    one, _ = calibrate(files, HashSample("tok", "sample", 7), 1, max_chars)
    assert len({r["id"] for r in iter_sample(files, one, max_chars)}) == 1
    every, fig = calibrate(files, HashSample("tok", "sample", 7), 1e12, max_chars)
    assert len(list(iter_sample(files, every, max_chars))) == len(rows)


def test_heldout_is_never_trained_on_and_one_row_per_document(tmp_path):
    rows = corpus(1500)
    files = write_parts(tmp_path, rows)
    sample, _ = calibrate(files, HashSample("tok", "sample", 7), 100_000, 400)
    trained = {r["id"] for r in iter_sample(files, sample, 400)}  # ids with any row (copy) trained on
    held = heldout_docs(files, sample, 200, 400)
    ids = [r["id"] for r in held]
    assert len(ids) == 200 == len(set(ids)) and not set(ids) & trained
    # everything sampled: no held-out text, and the report says so instead of a figure
    every, _ = calibrate(files, HashSample("tok", "sample", 7), 1e12, 400)
    assert heldout_docs(files, every, 200, 400) == []


def test_report_without_heldout_says_so():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))},
                               merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rep = quality_report(tok, [], no_heldout="every document of the input is in the training sample")
    assert rep["summary"]["bytes_per_token"] is None and rep["summary"]["never_produced_share"] is None
    assert "every document" in rep["heldout"]["none"]
    assert dict(summary_rows(rep["summary"]))["held out"].startswith("no held-out text")


SPEC = """
name: mix
seed: 11
output: out
inputs:
  docs: {paths: [docs.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 0.2}
  - name: balance
    type: balance
    inputs: [ingest]
    langid: {mode: "off"}
    strategy: unimax
    unit: bytes
    budget: 1000000
    max_epochs: 4
  - name: tok
    type: train_tokenizer
    inputs: [balance]
    vocab_size: 300
    sample_mb: 0.3
    report: {heldout_docs: 400}
"""


def test_tokenizer_sample_keeps_the_balanced_mix_and_budget(run_spec, tmp_path):
    """UniMax down-samples the large languages and up-samples the small one 4x; the tokenizer's
    smaller sample has the balanced shares (not the nested low-hash tail), fits sample_mb, and holds
    out text of every language, none of it trained on."""
    rng = random.Random(2)
    sizes = {"en": 2400, "de": 900, "fr": 300, "eo": 60}
    docs = [{"id": f"{lang}-{i}", "lang": lang, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90)))}
            for lang, n in sizes.items() for i in range(n)]
    (tmp_path / "docs.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    _, out = run_spec(SPEC)
    bal = json.loads((out / "balance" / "manifest.json").read_text())["stats"]["languages"]
    assert bal["eo"]["epochs_after"] > 3 and bal["en"]["epochs_after"] < 0.6  # both directions exercised
    tok = json.loads((out / "tok" / "manifest.json").read_text())["stats"]
    per = tok["training_bytes_per_language"]
    assert sum(per.values()) == tok["training_bytes"] <= 300_000
    assert tok["training_bytes"] > 300_000 - 4 * 1000  # within one document (of ~500 bytes) per language
    for lang, v in bal.items():
        share = per.get(lang, 0) / tok["training_bytes"]
        assert abs(share - v["byte_share_after"]) < 0.005, (lang, share, v["byte_share_after"])
    report = json.loads((out / "tok" / "report.json").read_text())
    assert set(report["per_language"]) == set(sizes)  # down-sampled languages get held-out text too
    # held out by id: no held-out document (nor a copy of one) was trained on
    table = read_table(sorted((out / "balance" / "data").glob("*.parquet")))
    ids = table.column("id").to_pylist()
    files = [Location.parse(str(p), tmp_path) for p in sorted((out / "balance" / "data").glob("*.parquet"))]
    sample, _ = calibrate(files, HashSample("tok", "sample", 11), 300_000, 100_000)
    trained = {r["id"] for r in iter_sample(files, sample, 100_000)}
    assert len(trained) < len(set(ids))
    held = heldout_docs(files, sample, 400, 100_000)
    assert not {r["id"] for r in held} & trained and report["heldout"]["documents"] == len(held)


def _batches(files):
    """(keys, languages, texts) of every row as Python lists, null and empty languages "und"."""
    from stages.tokenizer.sample import read, row_keys

    for f in files:
        for batch in read(f, ["id", "text", "lang"]):
            langs = [x or "und" for x in batch.column("lang").to_pylist()]
            yield row_keys(batch).to_pylist(), langs, batch.column("text")


def _reference_calibrate(files, sampler, budget_bytes, max_chars):
    """The two-pass calibration this module had before the one-pass pool (language totals, then every
    row's hash and bytes per language): the sample must stay the same."""
    from stages.tokenizer.sample import ALL, _Candidates, text_bytes

    sizes: dict[str, int] = {}
    for ids, langs, text in _batches(files):
        nb = text_bytes(text, max_chars)
        sel = sampler.within.mask(ids, langs) if sampler.within is not None else np.ones(len(ids), bool)
        for lang, n in zip(np.array(langs, dtype=object)[sel].tolist(), nb[sel].tolist(), strict=True):
            sizes[lang] = sizes.get(lang, 0) + n
    total = sum(sizes.values())
    if total <= budget_bytes:
        return sampler
    cands = {lang: _Candidates(budget_bytes * n / total) for lang, n in sizes.items()}
    for ids, langs, text in _batches(files):
        h, nb = sampler.hashes(ids), text_bytes(text, max_chars)
        sel = sampler.within.mask(ids, langs) if sampler.within is not None else np.ones(len(ids), bool)
        lang_arr = np.array(langs, dtype=object)
        for lang in set(lang_arr[sel].tolist()):
            m = sel & (lang_arr == lang)
            cands[lang].add(h[m], nb[m])
    limits, got = {}, {}
    for lang in sorted(cands):
        c = cands[lang]
        c.prune()
        limits[lang] = ALL if c.cutoff is None else c.cutoff[0]
        got[lang] = int(c.b.sum())
    left = budget_bytes - sum(got.values())
    for _, lang in sorted((got[lang] - c.budget, lang) for lang, c in cands.items() if c.cutoff is not None):
        h_next, b_next = cands[lang].cutoff
        if b_next <= left and b_next < 2 * (cands[lang].budget - got[lang]):
            limits[lang], got[lang], left = h_next + 1, got[lang] + b_next, left - b_next
    if sum(got.values()) == 0:
        lang = min((c.cutoff[0], lang) for lang, c in cands.items() if c.cutoff is not None)[1]
        limits[lang] = cands[lang].cutoff[0] + 1
    return HashSample(sampler.stage, sampler.role, sampler.seed, 0, tuple(sorted(limits.items())), sampler.within)


def _reference_heldout(files, sample, n, max_chars):
    """Held-out documents as before: every row's text read, the lowest held-out hashes kept."""
    import heapq

    from stages.tokenizer.sample import read, row_keys

    trained: set[str] = set()
    for f in files:
        for batch in read(f, ["id", "lang"]):
            m = sample.mask(row_keys(batch).to_pylist(), batch.column("lang").to_pylist())
            trained.update(np.array(batch.column("id").to_pylist(), dtype=object)[m].tolist())
    held = HashSample(sample.stage, "heldout", sample.seed)
    heap, rows = [], {}
    for f in files:
        for r in read_table([f]).to_pylist():
            hv = int(held.hashes([r["id"]])[0])
            if r["id"] in trained or r["id"] in rows or (len(heap) >= n and hv >= -heap[0][0]):
                continue
            rows[r["id"]] = (hv, {"id": r["id"], "text": (r["text"] or "")[:max_chars], "lang": r["lang"]})
            heapq.heappush(heap, (-hv, r["id"]))
            if len(heap) > n:
                del rows[heapq.heappop(heap)[1]]
    return [r for _, r in sorted(rows.values(), key=lambda x: x[0])]


def mixed_corpus(seed: int = 3) -> list[dict]:
    """Languages of very different sizes, a few documents longer than max_chars (multi-byte text cut by
    code points), copies, a null language and a language of a few large documents."""
    rng = random.Random(seed)
    rows = []
    for lang, n, words in (("en", 2500, (5, 120)), ("de", 700, (5, 200)), ("ja", 150, (50, 400)),
                           ("big", 6, (3000, 6000)), (None, 80, (5, 50))):
        for i in range(n):
            text = " ".join(rng.choice(WORDS) + ("日本" if lang == "ja" else "") for _ in range(rng.randint(*words)))
            for c in range(rng.choice([1, 1, 1, 2])):
                rows.append({"id": f"{lang}-{i}", "text": text, "lang": lang, "copy": c})
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("pool_factor", [4.0, 1.0, 0.3, 0.01])
@pytest.mark.parametrize("budget", [60_000, 400_000, 3_000])
def test_one_pass_calibration_equals_the_two_pass_one(tmp_path, monkeypatch, pool_factor, budget):
    """The pool of low-hash rows gives the same thresholds as the full second pass, also when it falls
    short for some languages (a small pool factor forces the per-language pass) and for a nested sample;
    the streamed sample and the held-out documents are the same as reading every row's text."""
    import stages.tokenizer.sample as sample_mod

    monkeypatch.setattr(sample_mod, "POOL_FACTOR", pool_factor)
    monkeypatch.setattr(sample_mod, "_PRUNE_AT", 64)  # prune often: the pool's limit falls mid-stream
    rows = mixed_corpus()
    files = write_parts(tmp_path, rows, per_part=900)
    max_chars = 2_000
    sampler = HashSample("tok", "sample", 5)
    got, fig = calibrate(files, sampler, budget, max_chars)
    assert got == _reference_calibrate(files, sampler, budget, max_chars)
    streamed = list(iter_sample(files, got, max_chars))
    assert sum(len(r["text"].encode()) for r in streamed) == fig["sample_bytes"] <= budget
    expected = [{**r, "text": r["text"][:max_chars]} for r in read_table(files).to_pylist()
                if got.mask([r["id"] if not r["copy"] else f"{r['id']}\x1f{r['copy']}"], [r["lang"]])[0]]
    assert streamed == expected
    assert heldout_docs(files, got, 150, max_chars) == _reference_heldout(files, got, 150, max_chars)
    trained = {r["id"] for r in streamed}
    assert heldout_docs(files, got, 150, max_chars, trained) == _reference_heldout(files, got, 150, max_chars)
    pool = HeldoutPool("tok", 5, 150, max_chars)
    assert calibrate(files, sampler, budget, max_chars, heldout=pool) == (got, fig)
    assert pool.chosen(got, 150) == _reference_heldout(files, got, 150, max_chars)  # settled by the pool
    nested = HashSample("tok", "stage2", 5, within=got)
    assert calibrate(files, nested, budget / 3, max_chars)[0] == _reference_calibrate(files, nested, budget / 3,
                                                                                       max_chars)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 3000])
def test_vectorised_salted_hashes_are_the_per_id_ones(n):
    """Ids as Arrow arrays (sliced, large strings, chunked) or lists, non-ASCII, empty or long, hash to
    exactly ``xxh64(f"{stage}:{role}:{id}", seed)``."""
    from pipeline.sampling import salted_hash

    rng = random.Random(n)
    alphabet = "ab/#:é€😀\x1f0"
    ids = ["", "x" * 600, "é" * 140] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
                                       for _ in range(n)]
    for seed in (0, 11, 2**63 + 5):
        want = np.array([salted_hash(i, seed, "tök", "sample") for i in ids], np.uint64)
        assert np.array_equal(salted_hashes(ids, seed, "tök", "sample"), want)
        arr = pa.array(["pad", *ids])
        assert np.array_equal(salted_hashes(arr.slice(1), seed, "tök", "sample"), want)
        assert np.array_equal(salted_hashes(pa.array(ids, pa.large_string()), seed, "tök", "sample"), want)
        chunked = pa.chunked_array([ids[:2], ids[2:]], pa.string())
        assert np.array_equal(salted_hashes(chunked, seed, "tök", "sample"), want)
        assert np.array_equal(salted_uniform(arr.slice(1), seed, "tök", "sample"), want.astype(np.float64) / 2**64)


@pytest.mark.parametrize("first_part", [900, 40])
@pytest.mark.parametrize(("n", "budget"), [(150, 60_000), (5000, 60_000), (150, 1e12), (3000, 1e12), (1, 3_000)])
def test_heldout_pool_gives_the_documents_of_the_full_pass(tmp_path, n, budget, first_part):
    """The candidates calibrate collects give the held-out documents of a pass over the whole input:
    directly, when enough of them were not trained on or they are every id of the input (a held-out set
    larger than the input, or nothing held out); through that pass otherwise (a sample of everything).
    A first part smaller than the candidate set leaves it to fill in a batch of more ids than it holds."""
    rows = mixed_corpus()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = write_parts(tmp_path / "a", rows[:first_part], first_part) + write_parts(tmp_path / "b", rows[first_part:],
                                                                                    900)
    pool = HeldoutPool("tok", 5, n, 2_000)
    sample, _ = calibrate(files, HashSample("tok", "sample", 5), budget, 2_000, heldout=pool)
    want = _reference_heldout(files, sample, n, 2_000)
    assert heldout_docs(files, sample, n, 2_000, pool=pool) == want
    settled = pool.chosen(sample, n)
    assert settled == want if (budget < 1e12 or n >= 3000) else settled is None
    assert pool.chosen(sample, n + 1) is None  # a larger set than collected for: read again
    with pytest.raises(ValueError):
        calibrate(files, HashSample("tok", "x", 5, within=sample), budget, 2_000, heldout=pool)
