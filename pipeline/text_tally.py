"""Text figures of a dataset part, tallied by the worker that writes it.

Why: the run report shows each dataset's text bytes and a histogram of document lengths. It read
them back from every part's ``text`` column on the driver after the run: O(corpus) work in one
process at the end of every run (3.2 s of the report at 4x the Debian corpus, growing with the
corpus). The writer already holds each table in memory, so the worker counts as it writes (one
``binary_length`` and one ``np.histogram`` per table), the figures travel with the shard's stats
into the manifest (``stats.text``), and the report only adds them up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: document length bins (UTF-8 bytes): 10 B .. 10 MB, log-spaced; lengths outside are clipped
LENGTH_BINS = np.logspace(1, 7, 31)


class TextTally:
    """UTF-8 bytes and the length histogram of the ``text`` column of the tables written."""

    def __init__(self) -> None:
        self.seen = False  # a table with a text column was written
        self.bytes = 0
        self.counts = np.zeros(len(LENGTH_BINS) - 1, dtype=np.int64)

    def add(self, table: pa.Table) -> None:
        if "text" not in table.column_names:
            return
        col = table.column("text")
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return
        self.seen = True
        if not table.num_rows:
            return
        lengths = pc.binary_length(col).to_numpy(zero_copy_only=False)
        lengths = np.nan_to_num(lengths.astype(np.float64), nan=0.0)  # a null text counts as 0 bytes
        self.bytes += int(lengths.sum())
        self.counts += histogram(lengths)

    def to_stats(self) -> dict[str, Any] | None:
        return {"bytes": self.bytes, "length_counts": self.counts.tolist()} if self.seen else None


def histogram(lengths: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(lengths, LENGTH_BINS[0], LENGTH_BINS[-1]), bins=LENGTH_BINS)
    return counts.astype(np.int64)


def merge(total: dict[str, Any] | None, part: dict[str, Any] | None) -> dict[str, Any] | None:
    """The sum of two tallies' stats (None: no text seen)."""
    if part is None:
        return total
    if total is None:
        return {"bytes": part["bytes"], "length_counts": list(part["length_counts"]), "parts": part.get("parts", 1)}
    return {"bytes": total["bytes"] + part["bytes"],
            "length_counts": [a + b for a, b in zip(total["length_counts"], part["length_counts"], strict=True)],
            "parts": total.get("parts", 1) + part.get("parts", 1)}


def median_from_counts(counts: np.ndarray) -> float:
    """The median length read off the histogram: the geometric middle of the bin holding it."""
    total = int(counts.sum())
    if not total:
        return 0.0
    i = int(np.searchsorted(np.cumsum(counts), (total + 1) / 2))
    return round(float(np.sqrt(LENGTH_BINS[i] * LENGTH_BINS[i + 1])), 1)
