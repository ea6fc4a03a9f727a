"""Influence scores from Hugging Face causal LMs: tiny random models saved to a temp dir, never downloaded."""

from __future__ import annotations

import json

import numpy as np
import torch  # the hf extra is part of the test install (README, .ci/run): a missing torch is a failure
import transformers

from stages.clean.hf import HFScorer


def tiny_model(path, vocab: int, seed: int) -> str:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return str(path)


def nll(model_dir: str, ids: np.ndarray) -> np.ndarray:
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.from_numpy(np.asarray(ids, np.int64))[None]).logits[0, :-1].float(), -1)
    return np.r_[0.0, -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()]


def test_hf_scores_are_base_minus_reference_loss_and_batching_does_not_change_them(tmp_path):
    base, ref = tiny_model(tmp_path / "base", 64, 0), tiny_model(tmp_path / "ref", 64, 1)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 64, n) for n in (5, 17, 9, 30)]
    one = HFScorer(base, ref, device="cpu", batch_size=1).score_batch(docs)
    many = HFScorer(base, ref, device="cpu", batch_size=4).score_batch(docs)
    for d, a, b in zip(docs, one, many, strict=True):
        assert len(a) == len(d)
        np.testing.assert_allclose(a, b, atol=1e-4)  # padding does not leak into scores
        np.testing.assert_allclose(a, nll(base, d) - nll(ref, d), atol=1e-4)
    assert np.abs(one[3]).max() > 1e-3  # two different random models disagree
    long = rng.integers(0, 64, 70)  # longer than n_positions=32: scored in windows
    s = HFScorer(base, ref, device="cpu").score_batch([long])[0]
    assert len(s) == 70 and s[0] == 0 and s[32] == 0 and s[64] == 0
    np.testing.assert_allclose(s[:32], nll(base, long[:32]) - nll(ref, long[:32]), atol=1e-4)


SPEC = """
name: clean_hf
seed: 1
output: out
inputs:
  docs: {paths: [docs.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [docs]}
  - {name: tok, type: train_tokenizer, inputs: [ingest], vocab_size: 300, report: {heldout_docs: 5}}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok}
  - name: clean
    type: clean
    inputs: [encode]
    tokenizer: tok
    keep_scores: true
    influence: {enabled: true, model: hf, base_model: BASE, reference_model: REF, keep_ratio: 0.5, device: cpu}
"""


def test_stage_with_hf_models_keeps_the_requested_share(run_spec, tmp_path):
    import orjson


    base, ref = tiny_model(tmp_path / "base", 320, 0), tiny_model(tmp_path / "ref", 320, 1)
    words = ["one", "two", "three", "four", "five", "six"]
    rng = np.random.default_rng(1)
    rows = [{"id": f"d{i}", "text": " ".join(rng.choice(words, 12)), "source": "web"} for i in range(30)]
    (tmp_path / "docs.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    _, out = run_spec(SPEC.replace("BASE", base).replace("REF", ref))
    stats = json.loads((out / "clean" / "manifest.json").read_text())["stats"]
    assert 0.4 <= stats["masked_share_by_scorer"]["influence"] <= 0.6
    from pipeline.parquet_io import read_table

    t = read_table(sorted((out / "clean" / "data").glob("*.parquet")))
    for ids, mask, score in zip(*(t.column(c).to_pylist() for c in ("input_ids", "loss_mask", "token_scores")),
                                strict=True):
        assert len(ids) == len(mask) == len(score)
