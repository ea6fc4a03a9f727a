"""Token writers without Ray: Megatron .bin/.idx bytes, OLMo memmaps and sidecars, packed numpy.

The Megatron index is parsed here with ``struct`` from the format description
(``megatron/core/datasets/indexed_dataset.py``), independently of ``stages.pack.formats``.
"""

from __future__ import annotations

import csv
import gzip
import struct

import numpy as np
import pyarrow as pa

from stages.pack.formats import MegatronWriter, OlmoWriter, PackedNumpyPart, PackedNumpyWriter, megatron_dtype
from stages.pack.stage import flat_lists

RNG = np.random.default_rng(3)
DOCS = [RNG.integers(0, 60000, size=int(n)).astype(np.uint32) for n in RNG.integers(1, 300, size=57)]


def _batches() -> list[pa.Array]:
    arr = pa.array([d.tolist() for d in DOCS], pa.list_(pa.uint32()))
    return [arr.slice(0, 20), arr.slice(20, 1), arr.slice(21)]  # sliced arrays: offsets not from 0


def test_megatron_dtype_follows_megatron():
    assert megatron_dtype(65499) is np.uint16
    assert megatron_dtype(65500) is np.int32
    assert megatron_dtype(128256) is np.int32


def test_megatron_bytes_match_the_format(tmp_path):
    w = MegatronWriter(tmp_path / "tokens", np.uint16)
    for b in _batches():
        w.add_documents(*flat_lists(b))
    info = w.close()
    assert info == {"sequences": len(DOCS), "tokens": int(sum(len(d) for d in DOCS))}
    idx = (tmp_path / "tokens.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", idx, 9)
    assert (version, code, n_seq, n_doc) == (1, 8, len(DOCS), len(DOCS) + 1)
    lengths = struct.unpack_from(f"<{n_seq}i", idx, 34)
    pointers = struct.unpack_from(f"<{n_seq}q", idx, 34 + 4 * n_seq)
    doc_idx = struct.unpack_from(f"<{n_doc}q", idx, 34 + 12 * n_seq)
    assert len(idx) == 34 + 12 * n_seq + 8 * n_doc
    assert list(doc_idx) == list(range(len(DOCS) + 1))
    data = (tmp_path / "tokens.bin").read_bytes()
    assert len(data) == 2 * sum(len(d) for d in DOCS)
    for doc, n, p in zip(DOCS, lengths, pointers, strict=True):
        assert np.frombuffer(data, "<u2", count=n, offset=p).tolist() == doc.tolist()


def test_megatron_int32_for_large_vocabularies(tmp_path):
    w = MegatronWriter(tmp_path / "t", megatron_dtype(100_000))
    w.add_document(np.array([99_999, 5], np.uint32))
    w.close()
    idx = (tmp_path / "t.idx").read_bytes()
    assert idx[17] == 4
    assert np.fromfile(tmp_path / "t.bin", "<i4").tolist() == [99_999, 5]


def test_olmo_batches_split_files_on_document_boundaries(tmp_path):
    masks = [(d % 2).astype(np.uint8) for d in DOCS]
    mask_arr = pa.array([m.tolist() for m in masks], pa.list_(pa.uint8()))
    w = OlmoWriter(tmp_path / "olmo", np.uint16, max_tokens_per_file=1000)
    loc = 0
    for b in _batches():
        start = loc
        values, offsets = flat_lists(b)
        mvalues = flat_lists(mask_arr.slice(b.offset, len(b)))[0]
        ids = [f"doc{i}" for i in range(start, start + len(b))]
        w.add_documents(values, offsets, mvalues, ids, ["src"] * len(b), start)
        loc += len(b)
    info = w.close()
    assert len(info["files"]) > 2
    seen = []
    for stem in info["files"]:
        toks = np.fromfile(tmp_path / "olmo" / f"{stem}.npy", "<u2")
        mask = np.fromfile(tmp_path / "olmo_masks" / f"{stem}.npy", np.uint8)
        assert len(toks) == len(mask)
        with gzip.open(tmp_path / "olmo" / f"{stem}.csv.gz", "rt", newline="") as f:
            rows = list(csv.reader(f))
        assert len(toks) <= 1000 or len(rows) == 1  # only a single over-long document may exceed the size
        for start, end, doc_id, src, loc_s in rows:
            i = int(loc_s)
            assert doc_id == f"doc{i}" and src == "src"
            assert toks[int(start):int(end)].tolist() == DOCS[i].tolist()
            assert mask[int(start):int(end)].tolist() == masks[i].tolist()
            seen.append(i)
    assert seen == list(range(len(DOCS)))


def test_packed_numpy_layout_loads_with_mmap(tmp_path):
    w = PackedNumpyWriter(tmp_path, 3, 8, np.uint16)
    toks = np.arange(24, dtype=np.uint16).reshape(3, 8)
    w.add(toks[:2], np.ones((2, 8), np.uint8), [np.array([5, 3], np.int32), np.array([8], np.int32)])
    w.add(toks[2:], np.zeros((1, 8), np.uint8), [np.array([2, 2, 1], np.int32)])
    assert w.close() == {"sequences": 3}
    t = np.load(tmp_path / "tokens.npy", mmap_mode="r")
    assert isinstance(t, np.memmap) and t.shape == (3, 8) and t.dtype == np.uint16
    assert (t == toks).all()
    assert np.load(tmp_path / "doc_lens.npy").tolist() == [5, 3, 8, 2, 2, 1]
    assert np.load(tmp_path / "doc_lens_offsets.npy").tolist() == [0, 2, 3, 6]


def test_packed_numpy_parts_give_the_same_bytes_as_one_writer(tmp_path):
    """Workers write their shard's rows as parts; the driver appends them: the same files, byte for byte."""
    rng = np.random.default_rng(3)
    toks = rng.integers(0, 60000, size=(5, 8)).astype(np.uint16)
    mask = rng.integers(0, 2, size=(5, 8)).astype(np.uint8)
    lens = [np.array(x, np.int32) for x in ([5, 3], [8], [2, 2, 1], [4], [1, 1, 1, 1])]
    one = PackedNumpyWriter(tmp_path / "one", 5, 8, np.uint16)
    one.add(toks[:2], mask[:2], lens[:2])
    one.add(toks[2:], mask[2:], lens[2:])
    one.close()
    parts = []
    for k, (a, b) in enumerate(((0, 3), (3, 3), (3, 5))):  # an empty part too
        files = [tmp_path / f"p{k}.{kind}" for kind in ("tokens", "mask", "lens.npz")]
        with PackedNumpyPart(*files) as part:
            if b > a:
                part.add(toks[a:b], mask[a:b], np.concatenate(lens[a:b]), np.array([len(x) for x in lens[a:b]]))
        parts.append(files)
    two = PackedNumpyWriter(tmp_path / "two", 5, 8, np.uint16)
    for files in parts:
        with open(files[0], "rb") as t, open(files[1], "rb") as m, open(files[2], "rb") as n:
            two.add_part(t, m, n)
    assert two.close() == {"sequences": 5}
    for name in ("tokens.npy", "loss_mask.npy", "doc_lens.npy", "doc_lens_offsets.npy"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
