"""Read what the pack stage wrote, without PyTorch; a ``torch.utils.data.Dataset`` adaptor if torch is there.

* :class:`MegatronDataset` -- ``.bin``/``.idx`` (Megatron-LM ``IndexedDataset`` layout), documents;
  the loss-mask companion ``megatron_masks/tokens`` is the same layout in uint8, read with the same class.
* :class:`TokenStreamDataset` -- OLMo-core style headerless memmaps, as fixed-length samples
  (concatenate and chunk, like OLMo-core's ``NumpyFSLDataset``), with the loss mask.
* :class:`PackedDataset` -- the packed numpy layout: ``tokens[N, L]``, ``loss_mask[N, L]``, ragged
  ``doc_lens``, all memory-mapped.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
           8: np.uint16}


class MegatronDataset:
    """Documents of a Megatron ``.bin``/``.idx`` pair (``prefix`` without the extension)."""

    def __init__(self, prefix: str | Path):
        idx = Path(f"{prefix}.idx").read_bytes()
        if idx[:9] != b"MMIDIDX\x00\x00":
            raise ValueError(f"{prefix}.idx: not a Megatron index (bad magic)")
        (version,) = struct.unpack_from("<Q", idx, 9)
        if version != 1:
            raise ValueError(f"{prefix}.idx: unsupported version {version}")
        self.dtype = np.dtype(_DTYPES[idx[17]]).newbyteorder("<")
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


class TokenStreamDataset:
    """Fixed-length samples cut from OLMo-style token memmaps (with their one-byte loss masks)."""

    def __init__(self, directory: str | Path, seq_len: int, dtype: str | np.dtype = "uint16"):
        d = Path(directory)
        files = sorted(d.glob("part-*.npy"))  # token files only: the masks live in the sibling olmo_masks/
        self.tokens = [np.memmap(f, dtype=np.dtype(dtype), mode="r") for f in files]
        masks = d.parent / f"{d.name}_masks"
        self.masks = [np.memmap(masks / f.name, dtype=np.uint8, mode="r") for f in files]
        self.seq_len = seq_len
        self.counts = [len(t) // seq_len for t in self.tokens]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        f = int(np.searchsorted(self.starts, i, side="right") - 1)
        j = (i - int(self.starts[f])) * self.seq_len
        return {"input_ids": np.asarray(self.tokens[f][j:j + self.seq_len]),
                "loss_mask": np.asarray(self.masks[f][j:j + self.seq_len])}


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


def as_torch_dataset(dataset: Any) -> Any:
    """Wrap any dataset above as a ``torch.utils.data.Dataset`` yielding tensors (needs torch)."""
    try:
        import torch
        from torch.utils.data import Dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("as_torch_dataset needs PyTorch: pip install torch") from exc

    class _TorchDataset(Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int) -> Any:
            item = dataset[i]
            if isinstance(item, dict):
                return {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in item.items()}
            return torch.from_numpy(np.asarray(item).astype(np.int64))

    return _TorchDataset()
