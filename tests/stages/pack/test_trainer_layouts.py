"""Trainer-facing layouts without Ray: OLMo-core's documented glob, the Megatron mask companion.

OLMo-core expands ``NumpyFSLDatasetConfig.glob("olmo/*.npy")`` with plain glob semantics (it is not
installable here); the Megatron companion is read with an ``.idx`` parser written in this file from
Megatron's documented format and, when ``megatron-core`` is installed, with its ``IndexedDataset``.
"""

from __future__ import annotations

import glob
import struct
from pathlib import Path

import numpy as np
import pytest

from stages.pack.formats import MegatronWriter, OlmoWriter

RNG = np.random.default_rng(11)
DOCS = [RNG.integers(0, 30000, size=int(n)).astype(np.uint16) for n in RNG.integers(1, 200, size=40)]
MASKS = [RNG.integers(0, 2, size=len(d)).astype(np.uint8) for d in DOCS]


def _flat(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
    return np.concatenate(arrays), offsets


def read_idx(prefix: Path) -> tuple[np.dtype, list[np.ndarray]]:
    """Documents of an indexed dataset, from the format: magic, u64 version, u8 dtype, u64 S, u64 D,
    int32[S] lengths, int64[S] byte pointers, int64[D] document index."""
    idx = Path(f"{prefix}.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", idx, 9)
    assert version == 1
    dtype = np.dtype({1: "u1", 4: "<i4", 8: "<u2"}[code])
    lengths = np.frombuffer(idx, "<i4", n_seq, 34)
    pointers = np.frombuffer(idx, "<i8", n_seq, 34 + 4 * n_seq)
    doc_idx = np.frombuffer(idx, "<i8", n_doc, 34 + 12 * n_seq)
    assert doc_idx.tolist() == list(range(n_seq + 1))
    data = Path(f"{prefix}.bin").read_bytes()
    return dtype, [np.frombuffer(data, dtype, int(n), int(p)) for n, p in zip(lengths, pointers, strict=True)]


def test_megatron_mask_companion_has_the_same_documents(tmp_path):
    w = MegatronWriter(tmp_path / "megatron" / "tokens", np.uint16, mask_prefix=tmp_path / "megatron_masks" / "tokens")
    values, offsets = _flat(DOCS)
    w.add_documents(values[: offsets[10]], offsets[:11], _flat(MASKS[:10])[0])
    rest_v, rest_o = _flat(DOCS[10:])
    w.add_documents(rest_v, rest_o, _flat(MASKS[10:])[0])
    w.close()
    # a megatron/*.bin glob finds the tokens only
    # a megatron/**/*.bin glob finds the tokens only
    assert glob.glob(str(tmp_path / "megatron" / "**" / "*.bin"), recursive=True) == [
        str(tmp_path / "megatron" / "tokens.bin")]
    tdtype, toks = read_idx(tmp_path / "megatron" / "tokens")
    mdtype, masks = read_idx(tmp_path / "megatron_masks" / "tokens")
    assert tdtype == np.dtype("<u2") and mdtype == np.dtype("u1")
    assert [t.tolist() for t in toks] == [d.tolist() for d in DOCS]
    assert [m.tolist() for m in masks] == [m.tolist() for m in MASKS]


def test_megatron_core_reads_tokens_and_mask_beside_each_other(tmp_path):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset", reason="megatron-core not installed")
    w = MegatronWriter(tmp_path / "tokens", np.uint16, mask_prefix=tmp_path / "megatron_masks" / "tokens")
    w.add_documents(*_flat(DOCS), _flat(MASKS)[0])
    w.close()
    tokens = indexed.IndexedDataset(str(tmp_path / "tokens"))
    masks = indexed.IndexedDataset(str(tmp_path / "megatron_masks" / "tokens"))
    assert len(tokens) == len(masks) == len(DOCS)
    assert (tokens.sequence_lengths == masks.sequence_lengths).all()
    for i in (0, 7, len(DOCS) - 1):
        assert tokens[i].tolist() == DOCS[i].tolist() and masks[i].tolist() == MASKS[i].tolist()
        # a span as GPTDataset reads it: get(doc, offset, length) on both datasets
        assert masks.get(i, offset=0, length=1).dtype == np.uint8


def test_olmo_documented_glob_selects_token_files_only(tmp_path):
    out = tmp_path / "olmo"
    w = OlmoWriter(out, np.uint16, max_tokens_per_file=1500)  # masks: the sibling olmo_masks/
    values, offsets = _flat(DOCS)
    w.add_documents(values, offsets, _flat(MASKS)[0], [f"d{i}" for i in range(len(DOCS))], ["s"] * len(DOCS), 0)
    files = w.close()["files"]
    assert len(files) > 2
    token_files = sorted(glob.glob(str(out / "*.npy")))  # NumpyFSLDatasetConfig.glob("olmo/*.npy")
    mask_files = sorted(glob.glob(str(tmp_path / "olmo_masks" / "*.npy")))  # label_mask_paths
    assert sorted(glob.glob(str(out / "**" / "*.npy"), recursive=True)) == token_files  # recursive glob too
    assert [Path(p).stem for p in token_files] == files == [Path(p).stem for p in mask_files]
    seq_len = 64
    instances = 0
    for t, m in zip(token_files, mask_files, strict=True):
        toks = np.memmap(t, dtype=np.uint16, mode="r")
        mask = np.memmap(m, dtype=np.bool_, mode="r")  # OLMo-core reads label masks as np.bool_
        assert len(toks) == len(mask)  # OLMo-core: "masking file should be the same size"
        instances += len(toks) // seq_len
    assert instances == sum(len(np.memmap(t, np.uint16, mode="r")) // seq_len for t in token_files)
    stream = np.concatenate([np.fromfile(t, "<u2") for t in token_files])
    assert stream.tolist() == values.tolist()
