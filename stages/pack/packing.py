"""Sequence packing cores, pure and unit-testable: concat-and-chunk and Best-fit Packing.

Best-fit Packing: Ding et al., "Fewer Truncations Improve Language Modeling", ICML 2024
(arXiv 2404.10830). Documents longer than the context are split into chunks of at most ``L``
tokens (the only truncation); chunks are packed whole by Best-Fit Decreasing, with a segment tree
over remaining capacities 1..L so each placement is O(log L). Here it runs over a bounded buffer of
documents so it streams.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    """A piece of one document inside a packed sequence."""

    doc: int  # index of the document in the stream
    start: int  # first token of the piece within the document
    length: int


class CapacityTree:
    """Segment tree over capacities 1..L: leaf c is non-zero while some open bin has c tokens free.

    ``find(l)`` returns the smallest capacity ≥ l that an open bin has (the best fit), or 0.
    """

    def __init__(self, capacity: int):
        self.L = capacity
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.tree = [0] * (2 * self.size)
        self.bins: dict[int, list[int]] = {}

    def _set(self, c: int, value: int) -> None:
        i = c + self.size
        self.tree[i] = value
        i //= 2
        while i:
            self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])
            i //= 2

    def add(self, c: int, bin_id: int) -> None:
        if c <= 0:
            return
        stack = self.bins.setdefault(c, [])
        stack.append(bin_id)
        if len(stack) == 1:
            self._set(c, c)

    def take(self, c: int) -> int:
        """Remove and return the oldest bin with exactly ``c`` free (deterministic: FIFO)."""
        stack = self.bins[c]
        bin_id = stack.pop(0)
        if not stack:
            del self.bins[c]
            self._set(c, 0)
        return bin_id

    def find(self, need: int) -> int:
        """Smallest c >= need with an open bin, descending the tree; 0 when none."""
        if self.tree[1] < need:
            return 0
        return self._find(1, 0, self.size - 1, need)

    def _find(self, node: int, lo: int, hi: int, need: int) -> int:
        if hi < need or self.tree[node] < need:
            return 0
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        left = self._find(2 * node, lo, mid, need)
        return left if left else self._find(2 * node + 1, mid + 1, hi, need)


def split_long(lengths: Sequence[int], seq_len: int) -> list[Segment]:
    """Chunks of at most ``seq_len`` tokens for every document (documents in stream order)."""
    out: list[Segment] = []
    for d, n in enumerate(lengths):
        for start in range(0, n, seq_len):
            out.append(Segment(d, start, min(seq_len, n - start)))
    return out


def best_fit_decreasing(chunks: Sequence[Segment], seq_len: int) -> list[list[Segment]]:
    """Pack chunks (each ≤ seq_len) into bins of ``seq_len`` by best-fit decreasing.

    Chunks are taken longest first (ties in stream order); each goes to the open bin with the least
    room that still fits it, else opens a new bin. Bins are returned in creation order.
    """
    order = sorted(range(len(chunks)), key=lambda i: (-chunks[i].length, i))
    tree = CapacityTree(seq_len)
    bins: list[list[Segment]] = []
    free: list[int] = []
    for i in order:
        ch = chunks[i]
        c = tree.find(ch.length)
        if c:
            b = tree.take(c)
        else:
            b = len(bins)
            bins.append([])
            free.append(seq_len)
        bins[b].append(ch)
        free[b] -= ch.length
        tree.add(free[b], b)
    for b in bins:  # documents inside a sequence in stream order (readable; attention is per segment)
        b.sort(key=lambda s: (s.doc, s.start))
    return bins


def concat_chunk(lengths: Sequence[int], window: int, stride: int) -> Iterator[list[Segment]]:
    """Concatenate documents and cut windows of ``window`` tokens every ``stride`` tokens.

    ``window = stride + 1`` gives the overlapping windows of trainers that shift labels inside the
    sample. The last, partial window is yielded too (the caller pads it).
    """
    total = int(sum(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pos = 0
    d = 0
    while pos < total:
        end = min(pos + window, total)
        segs: list[Segment] = []
        while d < len(lengths) and starts[d + 1] <= pos:
            d += 1
        k = d
        while k < len(lengths) and starts[k] < end:
            s = max(pos, starts[k])
            e = min(end, starts[k + 1])
            if e > s:
                segs.append(Segment(k, int(s - starts[k]), int(e - s)))
            k += 1
        yield segs
        if end == total:
            break
        pos += stride
