"""Packing cores without Ray: best-fit decreasing against a brute-force best fit, concat windows."""

from __future__ import annotations

import random

import pytest

from stages.pack.packing import CapacityTree, Segment, best_fit_decreasing, concat_chunk, split_long


def brute_force_bfd(chunks: list[Segment], seq_len: int) -> list[list[tuple[int, int]]]:
    """Best-fit decreasing by scanning every bin (O(N * bins)): the reference."""
    order = sorted(range(len(chunks)), key=lambda i: (-chunks[i].length, i))
    bins: list[list[int]] = []
    free: list[int] = []
    opened: list[int] = []  # bin ids in the order they last reached their current free capacity
    when: list[int] = []
    for stamp, i in enumerate(order, start=1):
        n = chunks[i].length
        fits = [b for b in range(len(bins)) if free[b] >= n]
        if fits:
            b = min(fits, key=lambda b: (free[b], when[b]))
        else:
            b = len(bins)
            bins.append([])
            free.append(seq_len)
            when.append(0)
            opened.append(b)
        bins[b].append(i)
        free[b] -= n
        when[b] = stamp
    return [sorted((chunks[i].doc, chunks[i].start) for i in b) for b in bins]


@pytest.mark.parametrize("seed", range(5))
def test_segment_tree_best_fit_matches_brute_force(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 50), rng.randint(100, 600), rng.randint(900, 1500)]) for _ in range(400)]
    chunks = split_long(lengths, 512)
    bins = best_fit_decreasing(chunks, 512)
    ours = [[(s.doc, s.start) for s in b] for b in bins]
    assert ours == brute_force_bfd(chunks, 512)
    assert all(sum(s.length for s in b) <= 512 for b in bins)
    placed = sorted((s.doc, s.start) for b in bins for s in b)
    assert placed == sorted((c.doc, c.start) for c in chunks)
    # only documents longer than the context are split
    pieces = {}
    for c in chunks:
        pieces[c.doc] = pieces.get(c.doc, 0) + 1
    assert all((n > 1) == (lengths[d] > 512) for d, n in pieces.items())


def test_capacity_tree_finds_smallest_fitting_capacity():
    t = CapacityTree(100)
    t.add(30, 0)
    t.add(70, 1)
    t.add(50, 2)
    assert t.find(40) == 50 and t.find(51) == 70 and t.find(71) == 0 and t.find(1) == 30
    assert t.take(50) == 2 and t.find(40) == 70


def test_concat_windows_cover_the_stream():
    lengths = [5, 3, 10, 1]
    seqs = list(concat_chunk(lengths, window=4, stride=4))
    assert [sum(s.length for s in segs) for segs in seqs] == [4, 4, 4, 4, 3]
    assert [(s.doc, s.start, s.length) for s in seqs[1]] == [(0, 4, 1), (1, 0, 3)]
    shifted = list(concat_chunk(lengths, window=5, stride=4))  # one token of overlap for shifted labels
    assert [sum(s.length for s in segs) for segs in shifted] == [5, 5, 5, 5, 3]
    assert shifted[1][0] == Segment(0, 4, 1)
