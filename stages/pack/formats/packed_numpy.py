"""Packed numpy arrays: the writer and the reader side by side.

``tokens.npy [N, L]``, ``loss_mask.npy [N, L]`` and ragged ``doc_lens`` (``doc_lens.npy`` +
``doc_lens_offsets.npy``), all loadable with ``np.load(..., mmap_mode="r")``; the reader adds
``position_ids`` and ``cu_seqlens`` per sequence for document-masked attention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


class PackedDataset:
    """The packed numpy layout, memory-mapped."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        self.tokens = np.load(d / "tokens.npy", mmap_mode="r")
        self.loss_mask = np.load(d / "loss_mask.npy", mmap_mode="r")
        self.doc_lens = np.load(d / "doc_lens.npy", mmap_mode="r")
        self.offsets = np.load(d / "doc_lens_offsets.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        lens = np.asarray(self.doc_lens[self.offsets[i]:self.offsets[i + 1]])
        pos = np.concatenate([np.arange(n, dtype=np.int32) for n in lens]) if len(lens) else np.zeros(0, np.int32)
        position_ids = np.zeros(self.tokens.shape[1], dtype=np.int32)
        position_ids[: len(pos)] = pos
        return {"input_ids": np.asarray(self.tokens[i]), "loss_mask": np.asarray(self.loss_mask[i]),
                "doc_lens": lens, "position_ids": position_ids,
                "cu_seqlens": np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)}
