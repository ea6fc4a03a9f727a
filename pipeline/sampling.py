"""The one hash every sampler uses: ``xxh64(f"{stage}:{role}:{id}", seed)``.

A sampler keeps a document when a hash of its id falls under a threshold, which makes samples
deterministic and independent of workers and block layout. Two samplers that hash the id the same way
are *nested*: the one with the lower threshold keeps a subset of the other. That silently broke the
tokenizer sample, which was the low-hash tail of the language-balancing sample (its language mix lost, its budget
exceeded). Salting the hash with the stage and the sampler's role makes samples of different purposes
independent, while each stays reproducible from (spec, seed).

``stage`` is the stage's *name* in the spec (unique in a pipeline), so even two stages of one type
chained one after the other (a sampler of a sampler) draw independent samples; two tokenizer
stages on one input train on different samples, and each report measures on text its own
tokenizer never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

TWO_64 = 2.0**64


def salted_hashes(ids: Sequence[str], seed: int, stage: str, role: str) -> np.ndarray:
    """uint64 hash per id, salted with the sampler's purpose (``stage`` name and ``role``)."""
    salt = f"{stage}:{role}:".encode()
    return np.fromiter((xxhash.xxh64_intdigest(salt + i.encode(), seed=seed) for i in ids),
                       dtype=np.uint64, count=len(ids))


def salted_hash(doc_id: str, seed: int, stage: str, role: str) -> int:
    """The same hash for one id (a Python int)."""
    return xxhash.xxh64_intdigest(f"{stage}:{role}:{doc_id}".encode(), seed=seed)


def salted_uniform(ids: Sequence[str], seed: int, stage: str, role: str) -> np.ndarray:
    """The salted hash as a uniform draw in [0, 1) per id."""
    return salted_hashes(ids, seed, stage, role).astype(np.float64) / TWO_64
