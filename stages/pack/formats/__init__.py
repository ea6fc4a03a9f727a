"""Token-array formats that trainers read without conversion, each a module with its writer and reader.

* :mod:`.megatron` -- Megatron-LM / NeMo ``.bin``/``.idx`` (:class:`MegatronWriter`,
  :class:`MegatronDataset`), with the uint8 loss-mask companion dataset.
* :mod:`.olmo` -- OLMo-core headerless memmaps (:class:`OlmoWriter`, :class:`TokenStreamDataset`).
* :mod:`.packed_numpy` -- ``tokens[N, L]``/``loss_mask[N, L]``/ragged ``doc_lens``
  (:class:`PackedNumpyWriter`, :class:`PackedDataset`).

The readers need no PyTorch; :func:`as_torch_dataset` wraps any of them when torch is there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.pack.formats.megatron import (
    MEGATRON_DTYPE_CODES,
    MEGATRON_MASK_DIR,
    MegatronDataset,
    MegatronWriter,
    megatron_dtype,
    write_megatron_index,
)
from stages.pack.formats.olmo import OLMO_MASK_DIR, OlmoWriter, TokenStreamDataset
from stages.pack.formats.packed_numpy import PackedDataset, PackedNumpyPart, PackedNumpyWriter

__all__ = [
    "MEGATRON_DTYPE_CODES",
    "MEGATRON_MASK_DIR",
    "OLMO_MASK_DIR",
    "MegatronDataset",
    "MegatronWriter",
    "OlmoWriter",
    "PackedDataset",
    "PackedNumpyPart",
    "PackedNumpyWriter",
    "TokenStreamDataset",
    "as_torch_dataset",
    "megatron_dtype",
    "write_megatron_index",
]


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
