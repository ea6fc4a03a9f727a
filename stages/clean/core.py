"""Token-cleaning cores, pure numpy: n-gram language models over token ids and the mask rules.

* :class:`NGramLM` -- interpolated Witten-Bell n-gram model (Witten & Bell 1991; Chen & Goodman 1998):
  ``P(w|h) = (c(h,w) + N1+(h·) P(w|h')) / (c(h) + N1+(h·))`` down to a unigram interpolated with the
  uniform distribution over the vocabulary, so probabilities sum to 1 over the vocabulary for any
  context. N-grams are packed into uint64 keys (21 bits per id, orders up to 3) and looked up with
  ``searchsorted``: counting and scoring are vectorised.
* :func:`repetition_mask` -- periodic token runs (period 1..13, as OLMo-core's instance filter
  finds them), masking only the repeats beyond the k-th.
* :func:`line_spans` -- lines of a token sequence, for boilerplate lines.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ID_BITS = 21
MAX_ORDER = 3
_MASK = np.uint64((1 << ID_BITS) - 1)


def ngram_keys(ids: np.ndarray, order: int) -> np.ndarray:
    """Keys of every n-gram of length ``order`` in one document (oldest id in the high bits)."""
    ids = ids.astype(np.uint64)
    if len(ids) < order:
        return np.zeros(0, np.uint64)
    key = np.zeros(len(ids) - order + 1, np.uint64)
    for k in range(order):
        key = (key << np.uint64(ID_BITS)) | ids[k:len(ids) - order + 1 + k]
    return key


class NGramCounts:
    """Mergeable n-gram counts (order 1..n) as sorted unique keys with counts."""

    def __init__(self, order: int):
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be 1..{MAX_ORDER}")
        self.order = order
        self.keys = [np.zeros(0, np.uint64) for _ in range(order)]
        self.counts = [np.zeros(0, np.int64) for _ in range(order)]
        self._pending: list[np.ndarray] = []  # documents given to add_buffered, not merged yet
        self._pending_tokens = 0

    def add_documents(self, docs: Iterable[np.ndarray]) -> NGramCounts:
        parts: list[list[np.ndarray]] = [[] for _ in range(self.order)]
        for ids in docs:
            for k in range(self.order):
                parts[k].append(ngram_keys(ids, k + 1))
        for k in range(self.order):
            if parts[k]:
                self._merge(k, *np.unique(np.concatenate(parts[k]), return_counts=True))
        return self

    def add_buffered(self, docs: list[np.ndarray], buffer_keys: int = 4_000_000) -> None:
        """Count a batch of documents; call :meth:`flush` after the last one. Documents are buffered
        and merged into the table once per ``buffer_keys`` tokens rather than once per batch: merging
        re-sorts the whole table, so merging per batch would make counting quadratic in the shard's
        size, while the buffer keeps memory bounded whatever the shard's size."""
        self._pending.extend(docs)
        self._pending_tokens += sum(len(d) for d in docs)
        if self._pending_tokens >= buffer_keys:
            self.flush()

    def flush(self) -> NGramCounts:
        """Merge the buffered documents into the table."""
        if self._pending:
            self.add_documents(self._pending)
            self._pending, self._pending_tokens = [], 0
        return self

    def total_tokens(self) -> int:
        return int(self.counts[0].sum())

    def merge(self, other: NGramCounts) -> NGramCounts:
        for k in range(self.order):
            self._merge(k, other.keys[k], other.counts[k])
        return self

    def _merge(self, k: int, keys: np.ndarray, counts: np.ndarray) -> None:
        allk = np.concatenate([self.keys[k], keys])
        allc = np.concatenate([self.counts[k], counts])
        uniq, inv = np.unique(allk, return_inverse=True)
        self.keys[k] = uniq
        self.counts[k] = np.bincount(inv, weights=allc, minlength=len(uniq)).astype(np.int64)


class NGramLM:
    """Interpolated Witten-Bell model built from :class:`NGramCounts`."""

    def __init__(self, counts: NGramCounts, vocab_size: int):
        self.order, self.vocab = counts.order, vocab_size
        self.keys, self.counts = counts.keys, counts.counts
        self.total = int(self.counts[0].sum())
        self.types = len(self.keys[0])
        # per context h of order k (k >= 2): c(h) and N1+(h·), keyed by the context's packed key
        self.ctx_keys, self.ctx_count, self.ctx_types = [None], [None], [None]
        for k in range(1, self.order):
            ctx = self.keys[k] >> np.uint64(ID_BITS)
            uniq, inv = np.unique(ctx, return_inverse=True)
            self.ctx_keys.append(uniq)
            self.ctx_count.append(np.bincount(inv, weights=self.counts[k]))
            self.ctx_types.append(np.bincount(inv).astype(np.float64))

    @staticmethod
    def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``sorted_keys``, found) for every key. The queries are sorted first: a binary
        search over a table of millions of keys costs a cache miss per step when the queries come in
        random order, and walks the table forwards when they are sorted (measured ~5x faster here
        than plain ``searchsorted`` or a pandas hash index for 2M queries into 8M keys)."""
        if len(sorted_keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        order = np.argsort(keys, kind="stable")
        idx = np.empty(len(keys), np.int64)
        idx[order] = np.searchsorted(sorted_keys, keys[order])
        np.minimum(idx, len(sorted_keys) - 1, out=idx)
        return idx, sorted_keys[idx] == keys

    @classmethod
    def _lookup(cls, sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
        idx, hit = cls._find(sorted_keys, keys)
        return np.where(hit, values[idx], 0.0) if len(sorted_keys) else np.zeros(len(keys))

    def prob(self, ids: np.ndarray) -> np.ndarray:
        """P(x_j | up to order-1 previous ids of the same document), for every position j."""
        return self.prob_docs([ids])[0]

    def prob_docs(self, docs: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`prob` for a batch of documents at once: one lookup per order for the whole batch
        (positions whose context would cross a document start keep the lower order)."""
        lengths = np.array([len(d) for d in docs], np.int64)
        if not len(docs) or not lengths.sum():
            return [np.zeros(0) for _ in docs]
        ids = np.concatenate(docs).astype(np.uint64)
        n = len(ids)
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        pos = np.arange(n) - np.repeat(starts, lengths)  # position inside its document
        c1 = self._lookup(self.keys[0], self.counts[0], ids).astype(np.float64)
        p = (c1 + self.types / self.vocab) / (self.total + self.types) if self.total else np.full(n, 1 / self.vocab)
        for k in range(1, self.order):
            at = np.flatnonzero(pos >= k)  # positions with k previous ids in the same document
            if not len(at):
                break
            full = np.zeros(len(at), np.uint64)
            for j in range(k, -1, -1):  # key = ids[t-k..t], oldest id in the high bits
                full = (full << np.uint64(ID_BITS)) | ids[at - j]
            ctx = full >> np.uint64(ID_BITS)
            c_hw = self._lookup(self.keys[k], self.counts[k], full).astype(np.float64)
            idx, seen = self._find(self.ctx_keys[k], ctx)
            c_h = np.where(seen, self.ctx_count[k][idx], 0.0)
            t_h = np.where(seen, self.ctx_types[k][idx], 0.0)
            lower = p[at]
            denom = np.where(seen, c_h + t_h, 1.0)
            p[at] = np.where(seen, (c_hw + t_h * lower) / denom, lower)
        return np.split(p, np.cumsum(lengths)[:-1])

    def save(self, directory: Path) -> None:
        """Write the model's tables as .npy files: workers memory-map them instead of each receiving a
        pickled copy (a full-corpus trigram model is hundreds of MB; the page cache is shared)."""
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "meta.npy", np.array([self.order, self.vocab, self.total, self.types], np.int64))
        for k in range(self.order):
            np.save(directory / f"keys{k}.npy", self.keys[k])
            np.save(directory / f"counts{k}.npy", self.counts[k])
            if k:
                np.save(directory / f"ctx_keys{k}.npy", self.ctx_keys[k])
                np.save(directory / f"ctx_count{k}.npy", self.ctx_count[k])
                np.save(directory / f"ctx_types{k}.npy", self.ctx_types[k])

    @classmethod
    def load(cls, directory: Path) -> NGramLM:
        """A model written by :meth:`save`, its tables memory-mapped read-only."""

        def arr(name: str) -> np.ndarray:
            return np.load(directory / f"{name}.npy", mmap_mode="r")

        self = cls.__new__(cls)
        self.order, self.vocab, self.total, self.types = (int(x) for x in np.load(directory / "meta.npy"))
        self.keys = [arr(f"keys{k}") for k in range(self.order)]
        self.counts = [arr(f"counts{k}") for k in range(self.order)]
        self.ctx_keys = [None, *(arr(f"ctx_keys{k}") for k in range(1, self.order))]
        self.ctx_count = [None, *(arr(f"ctx_count{k}") for k in range(1, self.order))]
        self.ctx_types = [None, *(arr(f"ctx_types{k}") for k in range(1, self.order))]
        return self

    def prob_all(self, context: np.ndarray) -> np.ndarray:
        """P(w | context) for every w in the vocabulary (for tests: it sums to 1)."""
        context = np.asarray(context, dtype=np.uint64)[-(self.order - 1):] if self.order > 1 else np.zeros(0)
        seqs = [np.concatenate([context, [w]]).astype(np.uint64) for w in range(self.vocab)]
        return np.array([p[-1] for p in self.prob_docs(seqs)])


def repetition_mask(ids: np.ndarray, min_period: int = 1, max_period: int = 13, keep_repeats: int = 3) -> np.ndarray:
    """1 where a token may be trained on, 0 inside periodic repeats beyond the ``keep_repeats``-th.

    A periodic run of period p is a maximal stretch where ``x[j] == x[j-p]``; the stretch plus its
    first unit holds ``(length + p) / p`` repeats. The first ``keep_repeats`` repeats stay; the
    excess is masked. Periods are tried shortest first; overlapping runs combine.
    """
    n = len(ids)
    mask = np.ones(n, np.uint8)
    for p in range(min_period, min(max_period, n - 1) + 1):
        eq = np.zeros(n, bool)
        eq[p:] = ids[p:] == ids[:-p]
        if not eq.any():
            continue
        edges = np.diff(np.r_[0, eq.astype(np.int8), 0])
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for s, e in zip(starts, ends, strict=True):
            cut = s + (keep_repeats - 1) * p  # the run [s - p, e) holds the unit plus (e - s) / p repeats
            if cut < e:
                mask[cut:e] = 0
    return mask


def line_spans(ids: np.ndarray, is_newline: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each line: a line ends with a token whose text contains a newline."""
    ends = np.flatnonzero(is_newline[ids]) + 1
    bounds = np.r_[0, ends, len(ids)] if (len(ends) == 0 or ends[-1] != len(ids)) else np.r_[0, ends]
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
