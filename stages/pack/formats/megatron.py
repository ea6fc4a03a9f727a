"""Megatron-LM / NeMo indexed datasets: the writer and the reader side by side, one dtype table.

Layout (``megatron/core/datasets/indexed_dataset.py``): ``.bin`` raw little-endian tokens; ``.idx`` =
magic ``MMIDIDX\\x00\\x00``, u64 version 1, u8 dtype code, u64 sequence count S, u64 document count D,
int32[S] lengths, int64[S] byte pointers, int64[D] document indices (``[0, 1, ..., S]``: one
document per sequence). The loss mask, when the input has one, is a *companion* indexed dataset
``megatron_masks/tokens.bin/.idx`` (uint8, dtype code 1, the same lengths and document index),
beside ``megatron/`` so that no glob of it finds masks.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

MEGATRON_MASK_DIR = "megatron_masks"  # <pack>/megatron_masks/tokens.bin/.idx: outside any megatron/ glob
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
#: Megatron's ``DType`` codes: the one table both the writer and the reader use
MEGATRON_DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
                        np.float32: 7, np.uint16: 8}
DTYPE_OF_CODE = {code: dtype for dtype, code in MEGATRON_DTYPE_CODES.items()}


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


class MegatronDataset:
    """Documents of a Megatron ``.bin``/``.idx`` pair (``prefix`` without the extension)."""

    def __init__(self, prefix: str | Path):
        idx = Path(f"{prefix}.idx").read_bytes()
        if idx[:9] != MEGATRON_MAGIC:
            raise ValueError(f"{prefix}.idx: not a Megatron index (bad magic)")
        (version,) = struct.unpack_from("<Q", idx, 9)
        if version != 1:
            raise ValueError(f"{prefix}.idx: unsupported version {version}")
        self.dtype = np.dtype(DTYPE_OF_CODE[idx[17]]).newbyteorder("<")
        seq_count, doc_count = struct.unpack_from("<QQ", idx, 18)
        off = 34
        self.lengths = np.frombuffer(idx, dtype="<i4", count=seq_count, offset=off)
        off += 4 * seq_count
        self.pointers = np.frombuffer(idx, dtype="<i8", count=seq_count, offset=off)
        off += 8 * seq_count
        self.document_indices = np.frombuffer(idx, dtype="<i8", count=doc_count, offset=off)
        self.bin = np.memmap(f"{prefix}.bin", dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.bin[start:start + int(self.lengths[i])]
