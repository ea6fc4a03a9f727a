"""The tokenizer's training sample, SuperBPE's stage-2 subset of it, and the held-out documents.

Each is a hash sample with its own salt (:mod:`pipeline.sampling`), so none is nested in balance's
sample or in another one: the training sample keeps the input's (balanced) language mix.

The training sample is stratified by language: the budget is split over languages in proportion to
their UTF-8 text bytes (cut to ``max_doc_chars``, as trained), and in each language the sample is the
rows with the lowest ``xxh64(f"{stage}:sample:{key}", seed)`` that fit its share. The key is the id,
and for balance's up-sampled copies (``copy`` k > 0) the id and k: each copy is a unit, so an up-sampled
language is not sampled in lumps of all its copies. A plain hash sample keeps the mix only in
expectation; on the quickstart a language of a few large, 4x-copied documents landed 3.5 points off its
share. Two streaming passes: language totals, then per language the lowest-hash candidates, dropping
every one past its share, so the sample never exceeds the budget and misses each share by less than
one row (the budget the shares leave unspent then goes to the next row of the languages furthest under
theirs, where it fits). The candidates held are bounded by the sample, not by the corpus. The sample is never empty:
when every share is below its first row, the lowest-hash row is the sample.

Held out means not in the sample by document id before copies: no row with that id (no copy of the
document) was trained on. The held-out set is the ``n`` such documents with the lowest held-out hash
(own salt), one per id.
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
from pipeline.parquet_io import iter_batches, read_schema
from pipeline.sampling import salted_hashes

ALL = 1 << 64  # a threshold above every hash: the whole input
_PRUNE_AT = 65536


@dataclass(frozen=True)
class HashSample:
    """The documents whose salted hash is below their language's threshold (``threshold`` for a language
    not in ``per_lang``), and that are in ``within``, if given."""

    stage: str
    role: str
    seed: int
    threshold: int = ALL
    per_lang: tuple[tuple[str, int], ...] = ()
    within: HashSample | None = None

    def hashes(self, keys: list[str]) -> np.ndarray:
        return salted_hashes(keys, self.seed, self.stage, self.role)

    def mask(self, keys: list[str], langs: list[str | None]) -> np.ndarray:
        """Membership of rows given their sample keys (:func:`row_keys`) and languages."""
        if self.per_lang:
            limits = dict(self.per_lang)
            t = [limits.get(lang or "und", self.threshold) for lang in langs]
            m = np.array([x >= ALL for x in t], bool)
            if not m.all():
                m |= self.hashes(keys) < np.array([min(x, ALL - 1) for x in t], np.uint64)
        elif self.threshold >= ALL:
            m = np.ones(len(keys), bool)
        else:
            m = self.hashes(keys) < np.uint64(self.threshold)
        return m & self.within.mask(keys, langs) if self.within is not None else m


def read(f: Location, columns: list[str], batch_rows: int = 8192) -> Iterator[pa.Table]:
    """Batches of ``columns`` plus ``copy`` where the part has it (balance's copy index)."""
    has_copy = "copy" in read_schema(f).names
    yield from iter_batches(f, batch_rows, columns=[*columns, "copy"] if has_copy else columns)


def row_keys(batch: pa.Table) -> list[str]:
    """The sampling key of each row: its id; for copy k > 0 of a document, the id and k."""
    ids = batch.column("id").to_pylist()
    if "copy" not in batch.column_names:
        return ids
    return [i if not c else f"{i}\x1f{c}" for i, c in zip(ids, batch.column("copy").to_pylist(), strict=True)]


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


class _Candidates:
    """One language's lowest-hash documents that may still fit its share of the budget."""

    def __init__(self, budget: float):
        self.budget = budget
        self.h, self.b = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        self.cutoff: tuple[int, int] | None = None  # (hash, bytes) of the lowest group known not to fit
        self.last = 0

    def add(self, h: np.ndarray, b: np.ndarray) -> None:
        if self.cutoff is not None:
            keep = h < np.uint64(self.cutoff[0])
            h, b = h[keep], b[keep]
        self.h, self.b = np.concatenate([self.h, h]), np.concatenate([self.b, b])
        if len(self.h) > max(2 * self.last, _PRUNE_AT):
            self.prune()

    def prune(self) -> None:
        self.h, self.b, c = _prune(self.h, self.b, self.budget)
        self.cutoff = c if c is not None else self.cutoff
        self.last = len(self.h)


def _batches(files: list[Location]) -> Iterator[tuple[list[str], list[str], pa.Array]]:
    for f in files:
        for batch in read(f, ["id", "text", "lang"]):
            langs = [x or "und" for x in batch.column("lang").to_pylist()]
            yield row_keys(batch), langs, batch.column("text")


def calibrate(files: list[Location], sampler: HashSample, budget_bytes: float, max_chars: int,
              ) -> tuple[HashSample, dict[str, Any]]:
    """The sample (``sampler`` with its per-language thresholds set) whose text bytes fit
    ``budget_bytes``, each language its share; and figures: eligible rows and text bytes, sample bytes."""
    sizes: dict[str, int] = {}
    rows = 0
    for ids, langs, text in _batches(files):  # pass 1: text bytes per language
        nb = text_bytes(text, max_chars)
        sel = sampler.within.mask(ids, langs) if sampler.within is not None else np.ones(len(ids), bool)
        rows += int(sel.sum())
        for lang, n in zip(np.array(langs, dtype=object)[sel].tolist(), nb[sel].tolist(), strict=True):
            sizes[lang] = sizes.get(lang, 0) + n
    total = sum(sizes.values())
    figures: dict[str, Any] = {"eligible_rows": rows, "eligible_bytes": total}
    if total <= budget_bytes:
        return sampler, {**figures, "sample_bytes": total}
    cands = {lang: _Candidates(budget_bytes * n / total) for lang, n in sizes.items()}
    for ids, langs, text in _batches(files):  # pass 2: per language, the lowest hashes within its share
        h, nb = sampler.hashes(ids), text_bytes(text, max_chars)
        sel = sampler.within.mask(ids, langs) if sampler.within is not None else np.ones(len(ids), bool)
        lang_arr = np.array(langs, dtype=object)
        for lang in set(lang_arr[sel].tolist()):
            m = sel & (lang_arr == lang)
            cands[lang].add(h[m], nb[m])
    limits: dict[str, int] = {}
    got: dict[str, int] = {}
    for lang in sorted(cands):
        c = cands[lang]
        c.prune()
        limits[lang] = ALL if c.cutoff is None else c.cutoff[0]
        got[lang] = int(c.b.sum())
    # what the shares left unspent goes to the next row of the languages furthest under their share,
    # where it fits and brings the language closer to its share (large rows would leave a language far
    # under it otherwise)
    left = budget_bytes - sum(got.values())
    for _, lang in sorted((got[lang] - c.budget, lang) for lang, c in cands.items() if c.cutoff is not None):
        h_next, b_next = cands[lang].cutoff  # type: ignore[misc]
        if b_next <= left and b_next < 2 * (cands[lang].budget - got[lang]):
            limits[lang], got[lang], left = h_next + 1, got[lang] + b_next, left - b_next
    size = sum(got.values())
    if size == 0:  # every share is below its first row: the lowest-hash row is the sample
        lang = min((c.cutoff[0], lang) for lang, c in cands.items() if c.cutoff is not None)[1]
        limits[lang] = cands[lang].cutoff[0] + 1  # type: ignore[index]
        size = cands[lang].cutoff[1]  # type: ignore[index]
    out = HashSample(sampler.stage, sampler.role, sampler.seed, 0, tuple(sorted(limits.items())), sampler.within)
    return out, {**figures, "sample_bytes": size}


def iter_sample_tables(files: list[Location], sample: HashSample, max_chars: int, heldout: bool = False,
                       ) -> Iterator[pa.Table]:
    """Stream the rows in (or, with ``heldout``, outside) the sample as Arrow tables, in part order,
    text cut to ``max_chars``."""
    for f in files:
        for batch in read(f, ["id", "text", "lang"], 2048):
            m = sample.mask(row_keys(batch), batch.column("lang").to_pylist())
            if heldout:
                m = ~m
            if not m.any():
                continue
            t = batch.filter(pa.array(m))
            yield t.set_column(t.schema.get_field_index("text"), "text",
                               pc.utf8_slice_codeunits(t.column("text"), 0, max_chars))


def iter_sample(files: list[Location], sample: HashSample, max_chars: int, heldout: bool = False,
                ) -> Iterator[dict[str, Any]]:
    """:func:`iter_sample_tables` as rows; rows are filtered in Arrow before they become Python objects."""
    for t in iter_sample_tables(files, sample, max_chars, heldout):
        yield from t.to_pylist()


def heldout_docs(files: list[Location], sample: HashSample, n: int, max_chars: int) -> list[dict[str, Any]]:
    """The ``n`` documents no row of which is in ``sample`` with the lowest held-out hash (own salt),
    one per id, in hash order. Fewer (or none) when fewer documents are outside the sample."""
    if n <= 0:
        return []
    trained: set[str] = set()  # ids with a row in the sample: bounded by the sample
    for f in files:
        for batch in read(f, ["id", "lang"]):
            m = sample.mask(row_keys(batch), batch.column("lang").to_pylist())
            trained.update(np.array(batch.column("id").to_pylist(), dtype=object)[m].tolist())
    heldout = HashSample(sample.stage, "heldout", sample.seed)
    heap: list[tuple[int, str]] = []  # (-hash, id): the largest kept hash on top
    rows: dict[str, tuple[int, dict[str, Any]]] = {}
    for f in files:
        for batch in iter_batches(f, 2048, columns=["id", "text", "lang"]):
            ids = batch.column("id").to_pylist()
            h = heldout.hashes(ids)
            m = np.array([i not in trained for i in ids], bool)
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
