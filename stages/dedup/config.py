"""Dedup's spec keys: exact and near settings, the keep rule, warnings (pydantic models)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.stage_api import StageConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalise(_Strict):
    """How text is normalised before exact hashing. Near dedup's shingles have their own fixed folding
    (lower case, whitespace words, punctuation trimmed from each word's ends; see
    :func:`batch_shingle_hashes`), so these switches change which documents are exact copies only."""

    nfkc: bool = True
    lower: bool = True
    whitespace: bool = True
    punctuation: bool = False
    digits: bool = False


class ExactConfig(_Strict):
    enabled: bool = True
    normalise: Normalise = Field(default_factory=Normalise)
    hash_bits: Literal[64, 128] = 64


class ShingleConfig(_Strict):
    kind: Literal["word", "char"] = "word"
    n: int = Field(default=5, ge=1, le=64)


class NearConfig(_Strict):
    enabled: bool = True
    threshold: float = Field(default=0.8, gt=0, le=1, description="Jaccard similarity that makes a duplicate.")
    num_perm: int = Field(default=128, ge=8, le=1024)
    bands: int | None = Field(default=None, ge=1, description="LSH bands; default: derived from threshold.")
    rows: int | None = Field(default=None, ge=1, description="Rows per band; default: derived from threshold.")
    shingle: ShingleConfig = Field(default_factory=ShingleConfig)
    false_positive_weight: float = Field(
        default=0.1, ge=0, le=1,
        description="Weight of false positives (false negatives get 1 - this) when deriving bands and rows, "
        "as datasketch's MinHashLSH(weights=...); low, because verification removes false positives.",
    )
    verify: bool = Field(default=True, description="Drop candidate pairs whose Jaccard is too low.")
    jaccard: bool = Field(
        default=True,
        description="Verify on the true Jaccard of the two shingle sets (kept beside the signatures until "
        "the pairs are verified: about 4 bytes per word of the corpus) instead of the signature estimate, "
        "whose noise (about ±0.04 at 128 permutations) let through pairs well below the threshold.",
    )
    verify_margin: float = Field(
        default=0.05, ge=0, le=0.5,
        description="Verification keeps pairs with Jaccard >= threshold - margin (estimates are noisy).",
    )
    seed: int = Field(default=1, ge=0, description="MinHash permutation seed (datasketch's `seed`).")
    bucket_window: int = Field(
        default=64, ge=1, le=4096,
        description="Each member of an LSH bucket is paired with the next `bucket_window` members in keep "
        "order and with the bucket's best member: every pair of a bucket of up to window + 1 documents, "
        "O(bucket size × window) pairs for larger buckets.",
    )
    copies_once: bool = Field(
        default=True,
        description="With exact dedup on, documents of byte-identical text go through signatures, near pairs "
        "and verification once (two passes find them first; each copy keeps its exact bucket row), so a "
        "repeated corpus costs about what its distinct texts cost. The output is that of every copy signed, "
        "except in a near bucket above bucket_window + 1 documents, whose window then runs over distinct "
        "texts instead of copies.",
    )
    twin_margin: float = Field(
        default=0.1, ge=0, le=0.5,
        description="Every removed document has estimated similarity >= threshold - twin_margin with the "
        "document kept for it; a component with no such kept twin for some member keeps more documents.",
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> NearConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they derive from threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands × rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


#: ``partitions: auto``'s floor. Every shuffle writes up to partitions × writers small files and every pass
#: of the stage (9 to 14 on small corpora) runs one task per partition, so below ``partition_rows``
#: the count is a fixed cost, not a memory bound: on the Debian corpus (111,010 documents, 2 cores)
#: 8 partitions cost about 0.17 s per star, join or representatives pass against 0.05 s with 2, for
#: the same output (tests: 1 vs 8 partitions give the same bytes). Two keep both cores of a small
#: machine busy in the pairs and verification passes.
MIN_AUTO_PARTITIONS = 2


class DedupConfig(StageConfig):
    type: Literal["dedup"]
    exact: ExactConfig = Field(default_factory=ExactConfig)
    near: NearConfig = Field(default_factory=NearConfig)
    keep: Literal["longest", "shortest", "first", "column"] = Field(
        default="longest", description="Which document of a cluster survives (ties: smallest id)."
    )
    keep_column: str | None = Field(default=None, description="Numeric column for keep: column (highest wins).")
    partitions: int | Literal["auto"] = Field(
        default="auto",
        description="Hash partitions of the bucket shuffle and of the components passes; `auto`: one per "
        f"`partition_rows` input rows, at least {MIN_AUTO_PARTITIONS}. A task's memory grows with its partition's "
        "size, so at a fixed partition size it stays flat however large the corpus.",
    )
    partition_rows: int = Field(default=100_000, ge=1_000, description="Input rows per partition for auto.")
    giant_component_docs: int = Field(
        default=200_000, ge=1,
        description="Components with more members are resolved by passes over node partitions (plus one "
        "sequential scan holding a bitmap of N/8 bytes) instead of in one task, whose memory grows with the "
        "component (tens of bytes per member and edge); the same output either way. The driver holds the "
        "labels of such components: at most N / giant_component_docs.",
    )
    warn_cluster_size: int = Field(default=10_000, ge=1, description="Warn when one cluster holds more documents.")
    warn_source_share: float = Field(
        default=0.5, ge=0, le=1, description="Warn when dedup removes more than this share of one source's documents."
    )

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 65536:
            raise ValueError(f"partitions must be between 1 and 65536 or auto, not {value}")
        return value

    def partition_count(self, rows: int) -> int:
        """The number of partitions for an input of ``rows`` rows."""
        if self.partitions == "auto":
            return max(MIN_AUTO_PARTITIONS, math.ceil(rows / self.partition_rows))
        return self.partitions

    @model_validator(mode="after")
    def _keep_column(self) -> DedupConfig:
        if self.keep == "column" and not self.keep_column:
            raise ValueError("keep: column needs keep_column")
        return self
