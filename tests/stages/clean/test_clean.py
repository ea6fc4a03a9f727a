"""Token cleaning: n-gram models, the influence score, the repetition rule, and masks reaching packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.parquet_io import read_table
from stages.clean.core import NGramCounts, NGramLM, repetition_mask
from stages.clean.stage import threshold_for


def lm(docs: list[list[int]], order: int, vocab: int) -> NGramLM:
    return NGramLM(NGramCounts(order).add_documents([np.array(d) for d in docs]), vocab)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_probabilities_sum_to_one_over_the_vocabulary(order):
    model = lm([[1, 2, 3, 1, 2, 4, 0], [2, 3, 3, 1], [5, 5, 5]], order, vocab=8)
    for context in ([], [1], [1, 2], [7, 7], [3, 3]):
        p = model.prob_all(np.array(context))
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert (p > 0).all()


def test_counts_merge_like_one_pass():
    docs = [[1, 2, 3, 1, 2], [2, 2, 2, 9]]
    one = NGramCounts(3).add_documents([np.array(d) for d in docs])
    two = NGramCounts(3).add_documents([np.array(docs[0])]).merge(NGramCounts(3).add_documents([np.array(docs[1])]))
    for k in range(3):
        assert np.array_equal(one.keys[k], two.keys[k]) and np.array_equal(one.counts[k], two.counts[k])


def test_influence_score_is_positive_where_the_reference_predicts_better():
    base = lm([[1, 2, 3]] * 5 + [[1, 2, 4]] * 20, 3, vocab=6)  # the corpus mostly continues 1 2 -> 4
    ref = lm([[1, 2, 3]] * 20, 3, vocab=6)  # the trusted set continues 1 2 -> 3
    seq = np.array([1, 2, 3])
    score = np.log(ref.prob(seq)) - np.log(base.prob(seq))  # loss_base - loss_ref
    assert score[2] > 1.0
    hist = np.histogram(np.r_[score, [-5.0] * 10], bins=6000, range=(-30, 30))[0]
    assert threshold_for(hist, 0.1) <= score[2]  # the top tokens are kept


def test_repetition_masks_exactly_the_excess_repeats():
    unit = [7, 8, 9]
    ids = np.array([1, 2] + unit * 6 + [4, 5, 5, 5, 5, 5, 6])
    m = repetition_mask(ids, 1, 13, keep_repeats=3)
    expected = np.ones(len(ids), np.uint8)
    expected[2 + 9: 2 + 18] = 0  # repeats 4-6 of the period-3 unit
    run5 = 2 + 18 + 1  # five 5s: keep three
    expected[run5 + 3: run5 + 5] = 0
    assert m.tolist() == expected.tolist()
    assert repetition_mask(np.arange(50), 1, 13, 3).all()


SPEC = """
name: clean
seed: 3
output: out
inputs:
  docs: {paths: [docs.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [docs]}
  - {name: tok, type: train_tokenizer, inputs: [ingest], vocab_size: 600, report: {heldout_docs: 10}}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok}
  - name: clean
    type: clean
    inputs: [encode]
    tokenizer: tok
    boilerplate: {min_docs: 5, min_tokens: 3}
    influence: {enabled: true, order: 2, reference: {sources: [trusted]}, keep_ratio: 0.7}
  - {name: pack, type: pack, inputs: [clean], method: best_fit, seq_len: 256, writers: [olmo]}
"""


def _write_docs(path: Path) -> None:
    import orjson

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    rows = []
    for i in range(60):
        body = " ".join(rng.choice(words, 30))
        text = f"Copyright notice of the example project\n{body}\n" + "ha " * 12 + "\nend <|endoftext|> tail"
        rows.append({"id": f"d{i:03d}", "text": text, "source": "trusted" if i < 20 else "web"})
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_stage_masks_and_the_masks_reach_packing(run_spec, tmp_path):
    _write_docs(tmp_path / "docs.jsonl")
    _, out = run_spec(SPEC)
    m = json.loads((out / "clean" / "manifest.json").read_text())["stats"]
    by = m["masked_share_by_scorer"]
    assert by["boilerplate"] > 0 and by["repetition"] > 0 and by["special"] > 0
    assert abs(by["influence"] - 0.3) <= 0.01  # keep_ratio 0.7 of ALL tokens, though EOS is never masked
    assert m["masked_samples"] and m["boilerplate_lines"] >= 1
    cleaned = read_table(sorted((out / "clean" / "data").glob("*.parquet")))
    for ids, mask in zip(cleaned.column("input_ids").to_pylist()[:5], cleaned.column("loss_mask").to_pylist()[:5],
                         strict=True):
        assert len(ids) == len(mask) and mask[-1] == 1  # EOS stays trainable
    # OLMo mask memmap = the cleaning masks, document after document
    stream = np.concatenate([np.asarray(x, np.uint8) for x in cleaned.column("loss_mask").to_pylist()])
    olmo = np.memmap(out / "pack" / "olmo_masks" / "part-00000.npy", dtype=np.uint8, mode="r")
    assert np.array_equal(olmo, stream)
    # packed Parquet: mask = cleaning mask on document tokens, 0 on padding
    packed = read_table(sorted((out / "pack" / "data").glob("*.parquet")))
    by_id = dict(zip(cleaned.column("id").to_pylist(), cleaned.column("loss_mask").to_pylist(), strict=True))
    row = packed.slice(0, 1).to_pylist()[0]
    pos = 0
    for doc_id, n in zip(row["doc_ids"], row["doc_lens"], strict=True):
        if n == len(by_id[doc_id]):
            assert row["loss_mask"][pos:pos + n] == by_id[doc_id]
        pos += n
    assert not any(row["loss_mask"][pos:])


@pytest.mark.parametrize("selection", ["granularity: document", "min_score: 0.0"])
def test_per_document_and_fixed_threshold_selection(run_spec, tmp_path, selection):
    _write_docs(tmp_path / "docs.jsonl")
    spec = SPEC.replace("keep_ratio: 0.7}", f"keep_ratio: 0.7, {selection}}}").replace(
        "boilerplate: {min_docs: 5, min_tokens: 3}", "boilerplate: {enabled: false}\n    repetition: {enabled: false}\n"
        "    special: false\n    keep_scores: true")
    _, out = run_spec(spec)
    table = read_table(sorted((out / "clean" / "data").glob("*.parquet")))
    ids_col, masks, scores = (table.column(c).to_pylist() for c in ("input_ids", "loss_mask", "token_scores"))
    for ids, mask, score in zip(ids_col, masks, scores, strict=True):
        mask, score = np.array(mask), np.array(score)
        assert mask[-1] == 1  # EOS
        if selection.startswith("granularity"):  # exactly round(0.7 n) kept per document, EOS among them
            assert mask.sum() == max(1, round(0.7 * len(ids)))
            assert score[:-1][mask[:-1] == 1].min() >= score[:-1][mask[:-1] == 0].max()
        else:
            assert np.array_equal(mask[:-1], (score[:-1] >= 0.0).astype(np.uint8))
