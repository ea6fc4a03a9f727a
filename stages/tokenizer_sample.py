"""The tokenizer's training sample, SuperBPE's stage-2 subset of it, and the held-out documents.

Each is a hash sample with its own salt (:mod:`pipeline.sampling`), so none is nested in balance's
sample or in another one: the training sample keeps the input's (balanced) language mix.

The training sample is the documents with the lowest ``xxh64(f"{stage}:sample:{id}", seed)`` whose
UTF-8 text (cut to ``max_doc_chars``, as trained) fits the byte budget: one streaming pass keeps the
lowest-hash candidates and drops every one past the budget, so the sample never exceeds the budget and
misses it by less than one document (all copies of a document share its id, hence its hash, and are
in or out together). The candidates held are bounded by the sample, not by the corpus. The sample is
never empty: when the first document alone is over the budget, it is the sample.

Held out means not in the sample, by id (so never a copy of a trained document): the ``n`` documents
outside the sample with the lowest held-out hash, one per id.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.locations import Location
from pipeline.parquet_io import iter_batches
from pipeline.sampling import salted_hashes

ALL = 1 << 64  # a threshold above every hash: the whole input
_PRUNE_AT = 65536


@dataclass(frozen=True)
class HashSample:
    """The documents whose salted hash is below ``threshold`` (and that are in ``within``, if given)."""

    stage: str
    role: str
    seed: int
    threshold: int = ALL
    within: HashSample | None = None

    def hashes(self, ids: list[str]) -> np.ndarray:
        return salted_hashes(ids, self.seed, self.stage, self.role)

    def mask(self, ids: list[str]) -> np.ndarray:
        m = np.ones(len(ids), bool) if self.threshold >= ALL else self.hashes(ids) < np.uint64(self.threshold)
        return m & self.within.mask(ids) if self.within is not None else m


def text_bytes(text: pa.ChunkedArray | pa.Array, max_chars: int) -> np.ndarray:
    """UTF-8 bytes of each text cut to ``max_chars`` code points (what the trainer sees); null counts 0."""
    cut = pc.utf8_slice_codeunits(text, 0, max_chars)  # slices by code points, like str[:max_chars]
    return pc.fill_null(pc.binary_length(cut), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _prune(h: np.ndarray, b: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Keep the lowest-hash groups (one per hash) whose cumulative bytes fit; return the first hash that
    does not fit (no later document at or above it can be in the sample) with its bytes, or None if all fit."""
    order = np.argsort(h, kind="stable")
    hs, bs = h[order], b[order]
    uh, start = np.unique(hs, return_index=True)
    sums = np.add.reduceat(bs, start) if len(bs) else bs
    k = int(np.searchsorted(np.cumsum(sums), budget, side="right"))
    if k >= len(uh):
        return uh, sums, None
    return uh[:k], sums[:k], (int(uh[k]), int(sums[k]))


def calibrate(files: list[Location], sampler: HashSample, budget_bytes: float, max_chars: int,
              ) -> tuple[HashSample, dict[str, int]]:
    """The sample (``sampler`` with its threshold set) whose text bytes fit ``budget_bytes``, and
    figures: eligible documents and text bytes, sample documents (rows) and bytes."""
    keep_h, keep_b = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    cutoff: tuple[int, int] | None = None  # (hash, bytes) of the lowest group known not to fit
    docs = total = 0
    last = 0
    for f in files:
        for batch in iter_batches(f, 8192, columns=["id", "text"]):
            ids = batch.column("id").to_pylist()
            h = sampler.hashes(ids)
            nb = text_bytes(batch.column("text"), max_chars)
            sel = sampler.within.mask(ids) if sampler.within is not None else np.ones(len(ids), bool)
            docs += int(sel.sum())
            total += int(nb[sel].sum())
            if cutoff is not None:
                sel &= h < np.uint64(cutoff[0])
            keep_h, keep_b = np.concatenate([keep_h, h[sel]]), np.concatenate([keep_b, nb[sel]])
            if len(keep_h) > max(2 * last, _PRUNE_AT):
                keep_h, keep_b, c = _prune(keep_h, keep_b, budget_bytes)
                cutoff = c if c is not None else cutoff
                last = len(keep_h)
    keep_h, keep_b, c = _prune(keep_h, keep_b, budget_bytes)
    cutoff = c if c is not None else cutoff
    if cutoff is None:
        threshold, size = ALL, total
    elif len(keep_h):
        threshold, size = cutoff[0], int(keep_b.sum())
    else:  # the lowest-hash document alone is over the budget: it is the sample
        threshold, size = cutoff[0] + 1, cutoff[1]
    out = HashSample(sampler.stage, sampler.role, sampler.seed, threshold, sampler.within)
    return out, {"eligible_rows": docs, "eligible_bytes": total, "sample_bytes": size}


def iter_sample(files: list[Location], sample: HashSample, max_chars: int, heldout: bool = False,
                ) -> Iterator[dict[str, Any]]:
    """Stream the rows in (or, with ``heldout``, outside) the sample, in part order, text cut to
    ``max_chars``. Rows are filtered in Arrow before they become Python objects."""
    for f in files:
        for batch in iter_batches(f, 2048, columns=["id", "text", "lang"]):
            m = sample.mask(batch.column("id").to_pylist())
            if heldout:
                m = ~m
            if not m.any():
                continue
            t = batch.filter(pa.array(m))
            t = t.set_column(t.schema.get_field_index("text"), "text",
                             pc.utf8_slice_codeunits(t.column("text"), 0, max_chars))
            yield from t.to_pylist()


def heldout_docs(files: list[Location], sample: HashSample, n: int, max_chars: int) -> list[dict[str, Any]]:
    """The ``n`` documents outside ``sample`` with the lowest held-out hash (own salt), one per id, in
    hash order. Fewer (or none) when fewer documents are outside the sample."""
    if n <= 0:
        return []
    heldout = HashSample(sample.stage, "heldout", sample.seed)
    heap: list[tuple[int, str]] = []  # (-hash, id): the largest kept hash on top
    rows: dict[str, tuple[int, dict[str, Any]]] = {}
    for f in files:
        for batch in iter_batches(f, 2048, columns=["id", "text", "lang"]):
            ids = batch.column("id").to_pylist()
            h = heldout.hashes(ids)
            m = ~sample.mask(ids)
            if len(heap) >= n:
                m &= h < np.uint64(-heap[0][0])
            for i in np.flatnonzero(m):
                doc_id, hv = ids[i], int(h[i])
                if doc_id in rows or (len(heap) >= n and hv >= -heap[0][0]):
                    continue  # a copy of a document already held (same id), or no longer low enough
                row = {"id": doc_id, "text": (batch.column("text")[i].as_py() or "")[:max_chars],
                       "lang": batch.column("lang")[i].as_py()}
                rows[doc_id] = (hv, row)
                heapq.heappush(heap, (-hv, doc_id))
                if len(heap) > n:
                    _, gone = heapq.heappop(heap)
                    del rows[gone]
    return [r for _, r in sorted(rows.values(), key=lambda x: x[0])]
