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
(own salt), one per id, chosen among candidates the calibration pass collects (:class:`HeldoutPool`).

Keys, languages and hashes stay Arrow and numpy arrays (a language is a code into a batch's few
names), not one Python object per row.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.locations import Location
from pipeline.parquet_io import as_array, iter_batches, parquet_file, read_schema
from pipeline.sampling import Ids, salted_hashes

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

    def hashes(self, keys: Ids) -> np.ndarray:
        return salted_hashes(keys, self.seed, self.stage, self.role)

    def _limits(self, langs: Langs) -> tuple[np.ndarray, np.ndarray]:
        """Per row: whether its language's threshold is above every hash, and the threshold (below 2**64)."""
        codes, names = lang_codes(langs)
        limits = dict(self.per_lang)
        t = [limits.get(lang, self.threshold) for lang in names]
        return np.array([x >= ALL for x in t], bool)[codes], np.array([min(x, ALL - 1) for x in t], np.uint64)[codes]

    def admits(self, h: np.ndarray, langs: Langs) -> np.ndarray:
        """Whether rows with these hashes (:meth:`hashes` of their keys) are under their language's
        threshold; ``within`` is not applied."""
        always, limit = self._limits(langs)
        return always | (h < limit)

    def mask(self, keys: Ids, langs: Langs) -> np.ndarray:
        """Membership of rows given their sample keys (:func:`row_keys`) and languages."""
        always, limit = self._limits(langs)
        m = always if always.all() else always | (self.hashes(keys) < limit)
        return m & self.within.mask(keys, langs) if self.within is not None else m


def read(f: Location, columns: list[str], batch_rows: int = 8192) -> Iterator[pa.Table]:
    """Batches of ``columns`` plus ``copy`` where the part has it (balance's copy index)."""
    has_copy = "copy" in read_schema(f).names
    yield from iter_batches(f, batch_rows, columns=[*columns, "copy"] if has_copy else columns)


def row_keys(batch: pa.Table) -> pa.Array:
    """The sampling key of each row: its id; for copy k > 0 of a document, the id and k
    (``f"{id}\\x1f{k}"``), made in Arrow."""
    ids = as_array(batch.column("id"))
    if "copy" not in batch.column_names:
        return ids
    copy = as_array(batch.column("copy"))
    plain = pc.fill_null(pc.equal(copy, 0), True)
    sep = pa.scalar("\x1f", ids.type)
    return pc.if_else(plain, ids, pc.binary_join_element_wise(ids, pc.cast(copy, ids.type), sep))


#: rows' languages: an Arrow string column or a list (null or empty: "und")
Langs = pa.Array | pa.ChunkedArray | list[str | None]


def lang_codes(langs: Langs) -> tuple[np.ndarray, list[str]]:
    """Each row's language as an index into a few names (null and empty are "und"; a name may repeat):
    per-language figures and thresholds come from the names instead of one Python string per row.
    The names are normalised, not the rows (that cost 0.9 s of CPU over the 4x Debian benchmark)."""
    arr = as_array(langs) if isinstance(langs, pa.Array | pa.ChunkedArray) else pa.array(langs, pa.string())
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    names = [x or "und" for x in enc.dictionary.to_pylist()]
    codes = pc.fill_null(enc.indices, len(names)).to_numpy(zero_copy_only=False)
    return codes, [*names, "und"]


def text_bytes(text: pa.ChunkedArray | pa.Array, max_chars: int) -> np.ndarray:
    """UTF-8 bytes of each text cut to ``max_chars`` code points (what the trainer sees); null counts 0.

    Only a text of more than ``max_chars`` bytes can hold more than ``max_chars`` code points, so only
    those are cut (cutting every text copied the whole column: 0.4 s of CPU per pass at 400 MB)."""
    nb = pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    long = np.flatnonzero(nb > max_chars)
    if len(long):
        cut = pc.utf8_slice_codeunits(pc.take(text, pa.array(long)), 0, max_chars)
        nb[long] = pc.binary_length(cut).to_numpy(zero_copy_only=False)
    return nb


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


def _batches(files: list[Location]) -> Iterator[tuple[int, int, pa.Table]]:
    """Every row's id, text, language (and copy), in batches: (part index, first row in the part, batch)."""
    for fi, f in enumerate(files):
        start = 0
        for batch in read(f, ["id", "text", "lang"]):
            yield fi, start, batch
            start += batch.num_rows


#: the calibration pass keeps the rows whose hash is below this many times the sample's expected share
#: of the hash range (budget / eligible text bytes seen so far); a language whose cutoff is not below
#: that (a few large documents, or bad luck) is measured again in a pass of its own, exactly
POOL_FACTOR = 4.0


class _Pool:
    """Every eligible row whose hash is below ``limit``: (hash, text bytes, language). The limit only
    falls, as eligible text is seen, so the pool holds every row below its final limit, and about
    ``POOL_FACTOR`` samples' worth of rows: bounded by the sample, not by the corpus."""

    def __init__(self, budget: float):
        self.budget, self.limit = budget, ALL
        self.h: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.lang: list[np.ndarray] = []
        self.rows, self.last = 0, 0

    def add(self, h: np.ndarray, b: np.ndarray, lang: np.ndarray, seen_bytes: int) -> None:
        if seen_bytes > 0 and POOL_FACTOR * self.budget < seen_bytes:
            self.limit = min(self.limit, int(POOL_FACTOR * self.budget / seen_bytes * ALL))
        if self.limit < ALL:
            keep = h < np.uint64(self.limit)
            h, b, lang = h[keep], b[keep], lang[keep]
        self.h.append(h)
        self.b.append(b)
        self.lang.append(lang)
        self.rows += len(h)
        if self.rows > max(2 * self.last, _PRUNE_AT):
            self.h, self.b, self.lang = ([a] for a in self.arrays())
            self.rows = self.last = len(self.h[0])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows below the current limit (rows added under a higher one and above it are dropped:
        rows between the limits were not all kept, so a cutoff may never be taken among them)."""
        if not self.h:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, object)
        h, b, lang = np.concatenate(self.h), np.concatenate(self.b), np.concatenate(self.lang)
        if self.limit < ALL:
            keep = h < np.uint64(self.limit)
            h, b, lang = h[keep], b[keep], lang[keep]
        return h, b, lang


def _selected(sampler: HashSample, keys: Ids, langs: Langs) -> np.ndarray:
    return sampler.within.mask(keys, langs) if sampler.within is not None else np.ones(len(keys), bool)


def _subset(keys: pa.Array, sel: np.ndarray) -> pa.Array:
    return keys if sel.all() else keys.filter(pa.array(sel))


def _measure(files: list[Location], sampler: HashSample, budget_bytes: float, max_chars: int,
             heldout: HeldoutPool | None = None) -> tuple[dict[str, int], dict[str, int], _Pool]:
    """One pass over the text: eligible text bytes and rows per language, the pool of low-hash rows,
    and the held-out candidates (when ``heldout`` is given: every row is eligible then)."""
    sizes: dict[str, int] = {}
    rows: dict[str, int] = {}
    pool = _Pool(budget_bytes)
    seen = 0
    for fi, start, batch in _batches(files):
        keys, langs, text = row_keys(batch), batch.column("lang"), batch.column("text")
        sel = _selected(sampler, keys, langs)
        codes, names = lang_codes(langs)
        lang_arr = np.array(names, dtype=object)[codes]
        h, nb = sampler.hashes(_subset(keys, sel)), text_bytes(text, max_chars)[sel]
        for lang, n, k in _sums(codes[sel], names, nb):
            sizes[lang] = sizes.get(lang, 0) + n
            rows[lang] = rows.get(lang, 0) + k
        seen += int(nb.sum())
        if heldout is not None:
            heldout.add(fi, start, batch, h, lang_arr)
        pool.add(h, nb, lang_arr[sel], seen)
    return sizes, rows, pool


def _sums(codes: np.ndarray, names: list[str], nb: np.ndarray) -> Iterator[tuple[str, int, int]]:
    """(language, text bytes, rows) of a batch, per name present (``codes`` index ``names``; a language
    may come twice, as "und" does, and is added up)."""
    sums = np.zeros(len(names), np.int64)
    np.add.at(sums, codes, nb)
    counts = np.bincount(codes, minlength=len(names))
    for i in np.flatnonzero(counts).tolist():
        yield names[i], int(sums[i]), int(counts[i])


def _candidates(files: list[Location], sampler: HashSample, max_chars: int, sizes: dict[str, int],
                rows: dict[str, int], pool: _Pool, budget_bytes: float) -> dict[str, _Candidates]:
    """Per language, its lowest-hash rows that fit its share and the first that does not: from the
    pool, where the language's cutoff lies below the pool's limit (then every row at or below the
    cutoff is in the pool, so the result is the one over all rows); else from a pass of its own."""
    total = sum(sizes.values())
    h, b, lang_arr = pool.arrays()
    cands: dict[str, _Candidates] = {}
    short: list[str] = []
    for lang in sorted(sizes):
        c = cands[lang] = _Candidates(budget_bytes * sizes[lang] / total)
        m = lang_arr == lang
        c.add(h[m], b[m])
        c.prune()
        if c.cutoff is None and int(m.sum()) < rows[lang]:
            short.append(lang)
    if short:
        cands.update(_measure_again(files, sampler, max_chars, {lang: cands[lang].budget for lang in short}))
    return cands


def _measure_again(files: list[Location], sampler: HashSample, max_chars: int,
                   shares: dict[str, float]) -> dict[str, _Candidates]:
    """The languages the pool fell short for (their shares), from all of their rows (the original
    second pass)."""
    cands = {lang: _Candidates(share) for lang, share in shares.items()}
    for _, _, batch in _batches(files):
        keys, langs, text = row_keys(batch), batch.column("lang"), batch.column("text")
        codes, names = lang_codes(langs)
        lang_arr = np.array(names, dtype=object)[codes]
        sel = _selected(sampler, keys, langs) & np.isin(lang_arr, list(cands))
        if not sel.any():
            continue
        h, nb = sampler.hashes(keys), text_bytes(text, max_chars)
        for lang in set(lang_arr[sel].tolist()):
            m = sel & (lang_arr == lang)
            cands[lang].add(h[m], nb[m])
    for c in cands.values():
        c.prune()
    return cands


def calibrate(files: list[Location], sampler: HashSample, budget_bytes: float, max_chars: int,
              heldout: HeldoutPool | None = None) -> tuple[HashSample, dict[str, Any]]:
    """The sample (``sampler`` with its per-language thresholds set) whose text bytes fit
    ``budget_bytes``, each language its share; and figures: eligible rows and text bytes, sample bytes.

    One pass reads the text (it used to be two: totals, then candidates): the language totals and a
    pool of the low-hash rows (:class:`_Pool`) come from the same read; the thresholds are the same.
    ``heldout`` (only for a sampler without ``within``) collects the held-out candidates in that pass."""
    if heldout is not None and sampler.within is not None:
        raise ValueError("held-out candidates are collected for a sample of the whole input only")
    sizes, rows, pool = _measure(files, sampler, budget_bytes, max_chars, heldout)
    total = sum(sizes.values())
    figures: dict[str, Any] = {"eligible_rows": sum(rows.values()), "eligible_bytes": total}
    if total <= budget_bytes:
        return sampler, {**figures, "sample_bytes": total}
    cands = _candidates(files, sampler, max_chars, sizes, rows, pool, budget_bytes)
    limits: dict[str, int] = {}
    got: dict[str, int] = {}
    for lang in sorted(cands):
        c = cands[lang]
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


def _group_keys(pf: pq.ParquetFile, rg: int) -> tuple[pa.Table, pa.Array]:
    """One row group's id, lang (and copy) columns, and its rows' sampling keys."""
    columns = ["id", "lang", "copy"] if "copy" in pf.schema_arrow.names else ["id", "lang"]
    t = pf.read_row_group(rg, columns=columns, use_threads=False)
    return t, row_keys(t)


def _cut(text: pa.Array | pa.ChunkedArray, max_chars: int) -> pa.Array | pa.ChunkedArray:
    return pc.utf8_slice_codeunits(text, 0, max_chars)


def iter_sample_tables(files: list[Location], sample: HashSample, max_chars: int, heldout: bool = False,
                       ) -> Iterator[pa.Table]:
    """Stream the rows in (or, with ``heldout``, outside) the sample as Arrow tables (id, text, lang and
    copy where the part has it), in part order, text cut to ``max_chars``.

    Per row group, the keys and languages are read first; the text only of row groups that hold a
    sampled row, in bounded batches, and only the sampled rows' text is cut and kept."""
    for f in files:
        pf = parquet_file(f)
        for rg in range(pf.num_row_groups):
            keys_t, keys = _group_keys(pf, rg)
            m = sample.mask(keys, keys_t.column("lang"))
            if heldout:
                m = ~m
            if not m.any():
                continue
            start = 0
            for rb in pf.iter_batches(batch_size=2048, row_groups=[rg], columns=["text"], use_threads=False):
                part, start = m[start:start + rb.num_rows], start + rb.num_rows
                if not part.any():
                    continue
                sel = pa.array(part)
                meta = keys_t.slice(start - rb.num_rows, rb.num_rows).filter(sel)
                cols = {"id": meta.column("id"), "text": _cut(rb.column(0).filter(sel), max_chars),
                        "lang": meta.column("lang")}
                if "copy" in meta.column_names:
                    cols["copy"] = meta.column("copy")
                yield pa.table(cols)


def iter_sample(files: list[Location], sample: HashSample, max_chars: int, heldout: bool = False,
                ) -> Iterator[dict[str, Any]]:
    """:func:`iter_sample_tables` as rows; rows are filtered in Arrow before they become Python objects."""
    for t in iter_sample_tables(files, sample, max_chars, heldout):
        yield from t.to_pylist()


def _trained_ids(files: list[Location], sample: HashSample) -> set[str]:
    """Ids with a row in ``sample``: bounded by the sample."""
    trained: set[str] = set()
    for f in files:
        for batch in read(f, ["id", "lang"]):
            m = sample.mask(row_keys(batch), batch.column("lang"))
            trained.update(batch.column("id").filter(pa.array(m)).to_pylist())
    return trained


#: where a held-out document is: (part index, row in the part, its language)
_Where = tuple[int, int, "str | None"]


@dataclass
class _Held:
    """A held-out candidate: its first row's place, language and text (cut), and each of its rows'
    sample hash and language (whether it was trained on is known once the sample is)."""

    hash: int
    where: _Where
    text: str
    rows: list[tuple[int, str]]


class HeldoutPool:
    """The ``2 n + 16`` ids with the lowest held-out hash, trained on or not, collected in calibrate's
    pass (:func:`calibrate`), with their first row's text: the held-out documents are the ``n`` lowest
    of them no row of which is in the sample, unless fewer than ``n`` are (more than half of them
    trained on: the sample is most of the input), when :func:`heldout_docs` reads the input again.

    Reading the ids, hashing them and reading the chosen documents' text again, row groups all over
    the input, cost 1.3 s of CPU on the 4x Debian benchmark (200 documents). Memory: the candidates'
    text, about twice the held-out set's."""

    def __init__(self, stage: str, seed: int, n: int, max_chars: int):
        self.sampler = HashSample(stage, "heldout", seed)
        self.n, self.keep, self.max_chars = n, 2 * n + 16, max_chars
        self.heap: list[tuple[int, str]] = []  # (-hash, id): the largest kept hash on top
        self.docs: dict[str, _Held] = {}
        self.complete = True  # no id was left out (then the candidates are every id of the input)

    def add(self, part: int, start: int, batch: pa.Table, sample_h: np.ndarray, langs: np.ndarray) -> None:
        """A batch of part ``part`` from row ``start``: its rows' sample hashes and languages ("und" for none)."""
        h = self.sampler.hashes(batch.column("id"))
        if len(self.heap) >= self.keep:
            top = -self.heap[0][0]
        else:  # ids past the batch's ``keep`` lowest can not be kept (a held one is dropped by the batch's end)
            distinct = np.unique(h)
            top = int(distinct[min(self.keep, len(distinct)) - 1]) if len(h) else 0
        low = np.flatnonzero(h <= np.uint64(top))
        self.complete &= len(low) == len(h)
        ids = batch.column("id").take(pa.array(low)).to_pylist()
        for i, doc_id in zip(low.tolist(), ids, strict=True):
            hv, row = int(h[i]), (int(sample_h[i]), langs[i])
            if doc_id in self.docs:  # a copy of a document held
                self.docs[doc_id].rows.append(row)
            elif len(self.heap) >= self.keep and hv >= -self.heap[0][0]:
                self.complete = False
            else:
                text = batch.column("text")[i].as_py()
                self.docs[doc_id] = _Held(hv, (part, start + i, batch.column("lang")[i].as_py()),
                                          (text or "")[:self.max_chars], [row])
                heapq.heappush(self.heap, (-hv, doc_id))
                if len(self.heap) > self.keep:
                    del self.docs[heapq.heappop(self.heap)[1]]
                    self.complete = False

    def chosen(self, sample: HashSample, n: int) -> list[dict[str, Any]] | None:
        """The ``n`` held-out documents of ``sample`` (the calibrated one), or None when the candidates
        do not settle them."""
        if n > self.n:
            return None
        free = [(d.hash, doc_id, d) for doc_id, d in self.docs.items() if not self._trained(sample, d)]
        if len(free) < n and not self.complete:
            return None
        free.sort(key=lambda x: x[0])
        return [{"id": doc_id, "text": d.text, "lang": d.where[2]} for _, doc_id, d in free[:n]]

    @staticmethod
    def _trained(sample: HashSample, d: _Held) -> bool:
        h = np.array([r[0] for r in d.rows], np.uint64)
        return bool(sample.admits(h, [r[1] for r in d.rows]).any())


def _texts_at(files: list[Location], where: list[_Where], max_chars: int) -> dict[tuple[int, int], str]:
    """The text (cut to ``max_chars``) of each (part, row): only the row groups holding them are read."""
    wanted: dict[int, list[int]] = {}
    for fi, row, _ in where:
        wanted.setdefault(fi, []).append(row)
    out: dict[tuple[int, int], str] = {}
    for fi, rows in sorted(wanted.items()):
        pf = parquet_file(files[fi])
        starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        rows_arr = np.array(sorted(rows), np.int64)
        groups = np.searchsorted(starts, rows_arr, side="right") - 1
        for rg in np.unique(groups).tolist():
            in_rg = rows_arr[groups == rg]
            text = pf.read_row_group(rg, columns=["text"], use_threads=False).column(0)
            for row, t in zip(in_rg.tolist(), text.take(pa.array(in_rg - starts[rg])).to_pylist(), strict=True):
                out[(fi, row)] = (t or "")[:max_chars]
    return out


def heldout_docs(files: list[Location], sample: HashSample, n: int, max_chars: int,
                 trained: set[str] | None = None, pool: HeldoutPool | None = None) -> list[dict[str, Any]]:
    """The ``n`` documents no row of which is in ``sample`` with the lowest held-out hash (own salt),
    one per id, in hash order. Fewer (or none) when fewer documents are outside the sample.
    ``trained``: the ids of the sample's rows, when the caller has them (it streamed the sample).
    ``pool``: the candidates calibrate collected, which settle it without reading the input, mostly.

    Chosen from ids alone; then only the chosen rows' text is read (reading every text cost 1.6 s of CPU
    at 400 MB for 200 documents)."""
    if n <= 0:
        return []
    chosen = pool.chosen(sample, n) if pool is not None else None
    if chosen is not None:
        return chosen
    if trained is None:  # by id: never a trained document or a copy of one
        trained = _trained_ids(files, sample)
    heldout = HashSample(sample.stage, "heldout", sample.seed)
    heap: list[tuple[int, str]] = []  # (-hash, id): the largest kept hash on top
    rows: dict[str, tuple[int, _Where]] = {}
    for fi, f in enumerate(files):
        offset = 0
        for batch in iter_batches(f, 8192, columns=["id", "lang"]):
            h = heldout.hashes(batch.column("id"))
            low = np.flatnonzero(h < np.uint64(-heap[0][0])) if len(heap) >= n else np.arange(len(h))
            for i, doc_id in zip(low.tolist(), batch.column("id").take(pa.array(low)).to_pylist(), strict=True):
                hv = int(h[i])
                if doc_id in trained or doc_id in rows or (len(heap) >= n and hv >= -heap[0][0]):
                    continue  # trained on, a copy of a document already held (same id), or no longer low enough
                rows[doc_id] = (hv, (fi, offset + i, batch.column("lang")[i].as_py()))
                heapq.heappush(heap, (-hv, doc_id))
                if len(heap) > n:
                    _, gone = heapq.heappop(heap)
                    del rows[gone]
            offset += batch.num_rows
    chosen = sorted(rows.items(), key=lambda kv: kv[1][0])
    texts = _texts_at(files, [w for _, (_, w) in chosen], max_chars)
    return [{"id": doc_id, "text": texts[(w[0], w[1])], "lang": w[2]} for doc_id, (_, w) in chosen]
