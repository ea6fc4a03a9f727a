"""OLMo-core / dolma token memmaps: the writer and the reader side by side.

Headerless ``np.memmap`` token files ``part-N.npy`` (EOS after each document), the parallel
one-byte-per-token loss masks in ``olmo_masks/part-N.npy`` (a sibling folder: OLMo-core's documented
``olmo/*.npy`` glob, and the recursive ``olmo/**/*.npy`` one, must select token files only), and a
``part-N.csv.gz`` of ``start,end,id,src,loc`` per document. The reader cuts fixed-length samples
(concatenate and chunk, like OLMo-core's ``NumpyFSLDataset``) with their loss masks.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

OLMO_MASK_DIR = "olmo_masks"  # <pack>/olmo_masks/part-N.npy: outside olmo/*.npy and olmo/**/*.npy


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
