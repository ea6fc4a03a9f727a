"""stages.pack.formats readers over files made by the writers (no Ray, no torch needed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from stages.pack.formats import (
    MegatronDataset,
    MegatronWriter,
    OlmoWriter,
    PackedDataset,
    PackedNumpyWriter,
    TokenStreamDataset,
    as_torch_dataset,
)

DOCS = [np.arange(n, dtype=np.uint32) + 10 * n for n in (3, 7, 1, 12, 5)]


def test_megatron_reader_returns_documents(tmp_path):
    w = MegatronWriter(tmp_path / "tokens", np.uint16)
    for d in DOCS:
        w.add_document(d)
    w.close()
    ds = MegatronDataset(tmp_path / "tokens")
    assert len(ds) == len(DOCS)
    assert [ds[i].tolist() for i in range(len(ds))] == [d.tolist() for d in DOCS]
    assert ds.document_indices.tolist() == list(range(len(DOCS) + 1))
    (tmp_path / "bad.idx").write_bytes(b"NOTMEGA" + bytes(40))
    with pytest.raises(ValueError, match="bad magic"):
        MegatronDataset(tmp_path / "bad")


def test_token_stream_reader_cuts_fixed_length_samples_across_files(tmp_path):
    w = OlmoWriter(tmp_path, np.uint16, max_tokens_per_file=16)
    for i, d in enumerate(DOCS):
        w.add_document(d, np.full(len(d), i % 2, np.uint8), f"d{i}", "s", i)
    w.close()
    ds = TokenStreamDataset(tmp_path, seq_len=4, dtype="uint16")
    per_file = [np.fromfile(p, "<u2") for p in sorted(tmp_path.glob("part-*[0-9].npy"))]
    assert len(ds) == sum(len(t) // 4 for t in per_file)
    expected = [t[j:j + 4].tolist() for t in per_file for j in range(0, len(t) - 3, 4)]
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))] == expected
    assert all(ds[i]["loss_mask"].shape == (4,) for i in range(len(ds)))


def test_packed_reader_rebuilds_positions_and_cu_seqlens(tmp_path):
    w = PackedNumpyWriter(tmp_path, 2, 6, np.uint16)
    w.add(np.arange(12, dtype=np.uint16).reshape(2, 6), np.array([[1] * 5 + [0], [1] * 6], np.uint8),
          [np.array([2, 3], np.int32), np.array([6], np.int32)])
    w.close()
    ds = PackedDataset(tmp_path)
    assert len(ds) == 2
    s = ds[0]
    assert s["position_ids"].tolist() == [0, 1, 0, 1, 2, 0]
    assert s["cu_seqlens"].tolist() == [0, 2, 5]
    assert s["loss_mask"].tolist() == [1, 1, 1, 1, 1, 0]
    assert ds[1]["input_ids"].tolist() == list(range(6, 12))


def test_torch_adaptor_yields_tensors_or_says_torch_is_missing(tmp_path):
    w = MegatronWriter(tmp_path / "tokens", np.uint16)
    for d in DOCS:
        w.add_document(d)
    w.close()
    ds = MegatronDataset(tmp_path / "tokens")
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ImportError, match="needs PyTorch"):
            as_torch_dataset(ds)
    else:
        tds = as_torch_dataset(ds)
        assert len(tds) == len(DOCS)
        assert tds[3].tolist() == DOCS[3].tolist()
