"""Token-array writers in the byte layouts trainers read without conversion.

* Megatron-LM / NeMo indexed dataset (``megatron/core/datasets/indexed_dataset.py``): ``.bin`` raw
  little-endian tokens; ``.idx`` = magic ``MMIDIDX\\x00\\x00``, u64 version 1, u8 dtype code,
  u64 sequence count S, u64 document count D, int32[S] lengths, int64[S] byte pointers,
  int64[D] document indices (``[0, 1, ..., S]``: one document per sequence). The loss mask, when
  the input has one, is a *companion* indexed dataset ``megatron_masks/tokens.bin/.idx`` (uint8, dtype
  code 1, the same lengths and document index), beside ``megatron/`` so that no glob of it finds masks.
* OLMo-core / dolma: headerless ``np.memmap`` token files ``part-N.npy`` (EOS after each document),
  the parallel one-byte-per-token loss masks in ``olmo_masks/part-N.npy`` (a sibling folder: OLMo-core's
  documented ``olmo/*.npy`` glob, and the recursive ``olmo/**/*.npy`` one, must select token files
  only), and a ``part-N.csv.gz`` of ``start,end,id,src,loc`` per document.
* Packed numpy: ``tokens.npy [N, L]``, ``loss_mask.npy [N, L]`` and ragged ``doc_lens``
  (``doc_lens.npy`` + ``doc_lens_offsets.npy``), all loadable with ``np.load(..., mmap_mode="r")``.
"""

from __future__ import annotations

import csv
import gzip
import io
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

OLMO_MASK_DIR = "olmo_masks"  # <pack>/olmo_masks/part-N.npy: outside olmo/*.npy and olmo/**/*.npy
MEGATRON_MASK_DIR = "megatron_masks"  # <pack>/megatron_masks/tokens.bin/.idx: outside any megatron/ glob
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
                        np.float32: 7, np.uint16: 8}


def megatron_dtype(vocab_size: int) -> type[np.generic]:
    """Megatron's ``DType.optimal_dtype``: uint16 below 65,500 ids, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def write_megatron_index(path: str | Path, lengths: np.ndarray, dtype: type[np.generic]) -> None:
    """The ``.idx`` of an indexed dataset whose ``.bin`` holds ``lengths`` items of ``dtype`` each."""
    lengths = np.asarray(lengths, dtype="<i4")
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype("<i8") * itemsize, out=pointers[1:])
    doc_idx = np.arange(len(lengths) + 1, dtype="<i8")
    with open(path, "wb") as f:
        f.write(MEGATRON_MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_DTYPE_CODES[np.dtype(dtype).type]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())


class MegatronWriter:
    """One ``.bin``/``.idx`` pair; documents are written as they come (bounded memory but lengths).

    With ``mask_prefix`` the loss mask goes to a companion uint8 indexed dataset with the same
    document layout, so ``IndexedDataset(mask_prefix)[i]`` is document ``i``'s mask: Megatron's
    ``GPTDataset`` itself reads tokens only, and the mask must not vanish silently.
    """

    def __init__(self, prefix: Path, dtype: type[np.generic], mask_prefix: Path | None = None):
        self.prefix, self.dtype, self.mask_prefix = prefix, np.dtype(dtype).type, mask_prefix
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self.bin: BinaryIO = open(f"{prefix}.bin", "wb")  # noqa: SIM115 - closed in close()
        self.mask_bin: BinaryIO | None = None
        if mask_prefix is not None:
            mask_prefix.parent.mkdir(parents=True, exist_ok=True)
            self.mask_bin = open(f"{mask_prefix}.bin", "wb")  # noqa: SIM115 - closed in close()
        self.lengths: list[int] = []

    def add_document(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        arr = np.asarray(tokens).astype(np.dtype(self.dtype).newbyteorder("<"), copy=False)
        self.bin.write(arr.tobytes(order="C"))
        self._write_mask(len(arr), mask)
        self.lengths.append(len(arr))

    def add_documents(self, values: np.ndarray, offsets: np.ndarray, masks: np.ndarray | None = None) -> None:
        """A whole batch at once: ``values`` flat tokens, ``offsets`` [n + 1] document boundaries.

        One ``write`` per batch instead of one per document (the Python loop dominated otherwise);
        ``masks`` are the flat loss masks aligned with ``values`` (all ones when absent).
        """
        self.bin.write(np.asarray(values).astype(np.dtype(self.dtype).newbyteorder("<"), copy=False).tobytes())
        self._write_mask(len(values), masks)
        self.lengths.extend(np.diff(offsets).tolist())

    def _write_mask(self, n: int, mask: np.ndarray | None) -> None:
        if self.mask_bin is not None:
            m = np.ones(n, np.uint8) if mask is None else np.asarray(mask, dtype=np.uint8)
            if len(m) != n:
                raise ValueError(f"loss mask of {len(m)} values for {n} tokens")
            self.mask_bin.write(m.tobytes())

    def close(self) -> dict[str, int]:
        self.bin.close()
        write_megatron_index(f"{self.prefix}.idx", np.array(self.lengths, dtype="<i4"), self.dtype)
        if self.mask_bin is not None:
            self.mask_bin.close()
            write_megatron_index(f"{self.mask_prefix}.idx", np.array(self.lengths, dtype="<i4"), np.uint8)
        return {"sequences": len(self.lengths), "tokens": int(sum(self.lengths))}


class OlmoWriter:
    """Headerless token memmaps + one-byte loss masks + per-document offsets, split by token count."""

    def __init__(self, directory: Path, dtype: type[np.generic], max_tokens_per_file: int,
                 mask_directory: Path | None = None):
        self.dir, self.dtype, self.max_tokens = directory, np.dtype(dtype).newbyteorder("<"), max_tokens_per_file
        self.mask_dir = mask_directory or directory.parent / f"{directory.name}_masks"  # olmo -> olmo_masks
        directory.mkdir(parents=True, exist_ok=True)
        self.mask_dir.mkdir(parents=True, exist_ok=True)
        self.file_index = -1
        self.files: list[str] = []
        self._open_next()

    def _open_next(self) -> None:
        if self.file_index >= 0:
            self._close_current()
        self.file_index += 1
        stem = f"part-{self.file_index:05d}"
        self.tokens = open(self.dir / f"{stem}.npy", "wb")  # noqa: SIM115 - closed in _close_current()
        self.mask = open(self.mask_dir / f"{stem}.npy", "wb")  # noqa: SIM115
        # mtime=0: the gzip header would otherwise carry the time, and the bytes would differ per run
        raw = gzip.GzipFile(self.dir / f"{stem}.csv.gz", mode="wb", compresslevel=6, mtime=0)
        self.csv_file = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        self.csv = csv.writer(self.csv_file)
        self.pos = 0
        self.files.append(stem)

    def _close_current(self) -> None:
        self.tokens.close()
        self.mask.close()
        self.csv_file.close()

    def add_document(self, tokens: np.ndarray, mask: np.ndarray, doc_id: str, src: str, loc: int) -> None:
        if self.pos and self.pos + len(tokens) > self.max_tokens:
            self._open_next()
        self.tokens.write(np.asarray(tokens).astype(self.dtype, copy=False).tobytes())
        self.mask.write(np.asarray(mask, dtype=np.uint8).tobytes())
        self.csv.writerow([self.pos, self.pos + len(tokens), doc_id, src, loc])
        self.pos += len(tokens)

    def add_documents(self, values: np.ndarray, offsets: np.ndarray, masks: np.ndarray | None,
                      doc_ids: list[str], srcs: list[str], loc: int) -> None:
        """A batch of documents (flat ``values`` cut by ``offsets``), written in runs that fit the file."""
        n = len(offsets) - 1
        i = 0
        while i < n:
            if self.pos and self.pos + int(offsets[i + 1] - offsets[i]) > self.max_tokens:
                self._open_next()
            # the longest run of documents from i that still fits (at least one document)
            room = self.max_tokens - self.pos
            j = int(np.searchsorted(offsets, offsets[i] + room, side="right")) - 1
            j = min(max(j, i + 1), n)
            a, b = int(offsets[i]), int(offsets[j])
            self.tokens.write(np.asarray(values[a:b]).astype(self.dtype, copy=False).tobytes())
            self.mask.write((np.ones(b - a, np.uint8) if masks is None else
                             np.asarray(masks[a:b], dtype=np.uint8)).tobytes())
            starts = (offsets[i:j] - a + self.pos).tolist()
            ends = (offsets[i + 1:j + 1] - a + self.pos).tolist()
            self.csv.writerows(zip(starts, ends, doc_ids[i:j], srcs[i:j], range(loc + i, loc + j), strict=True))
            self.pos += b - a
            i = j

    def close(self) -> dict[str, object]:
        self._close_current()
        return {"files": self.files, "dtype": str(np.dtype(self.dtype).name)}


class PackedNumpyWriter:
    """``tokens.npy``/``loss_mask.npy`` of shape [N, L] and ragged ``doc_lens``, written in one pass."""

    def __init__(self, directory: Path, n_sequences: int, seq_len: int, dtype: type[np.generic]):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.tokens = np.lib.format.open_memmap(directory / "tokens.npy", mode="w+", dtype=dtype,
                                                shape=(n_sequences, seq_len))
        self.mask = np.lib.format.open_memmap(directory / "loss_mask.npy", mode="w+", dtype=np.uint8,
                                              shape=(n_sequences, seq_len))
        self.row = 0
        self.doc_lens: list[np.ndarray] = []

    def add(self, tokens: np.ndarray, mask: np.ndarray, doc_lens: list[np.ndarray]) -> None:
        n = len(tokens)
        self.tokens[self.row:self.row + n] = tokens
        self.mask[self.row:self.row + n] = mask
        self.doc_lens.extend(doc_lens)
        self.row += n

    def close(self) -> dict[str, int]:
        self.tokens.flush()
        self.mask.flush()
        del self.tokens, self.mask
        lens = np.concatenate(self.doc_lens).astype(np.int32) if self.doc_lens else np.zeros(0, np.int32)
        offsets = np.zeros(len(self.doc_lens) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in self.doc_lens], out=offsets[1:])
        np.save(self.dir / "doc_lens.npy", lens)
        np.save(self.dir / "doc_lens_offsets.npy", offsets)
        return {"sequences": self.row}
