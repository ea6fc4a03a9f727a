"""Filter: drop documents by length, language or source, each drop counted under its reason.

A small heuristic-filter step in the spirit of datatrove's filters (one rule, one reason); rules are
vectorised with pyarrow.compute so the stage streams at Parquet speed.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.stage_api import BatchResult, MapStage, StageConfig, register_stage


class FilterConfig(StageConfig):
    type: Literal["filter"]
    min_chars: int | None = Field(default=None, ge=0, description="Drop documents with fewer characters.")
    max_chars: int | None = Field(default=None, ge=1, description="Drop documents with more characters.")
    keep_langs: list[str] | None = Field(default=None, description="Keep only these language labels.")
    drop_langs: list[str] = Field(default_factory=list, description="Drop these language labels.")
    keep_sources: list[str] | None = Field(default=None, description="Keep only these sources.")


def filter_mask(batch: pa.Table, cfg: FilterConfig) -> tuple[pa.Array, Counter[str]]:
    """Boolean keep-mask and per-reason drop counts; the first failing rule names the reason."""
    n = batch.num_rows
    keep = pa.array([True] * n)
    dropped: Counter[str] = Counter()
    length = pc.utf8_length(batch["text"])
    lang = pc.fill_null(batch["lang"], "")
    rules: list[tuple[str, pa.Array]] = []
    if cfg.min_chars is not None:
        rules.append(("too_short", pc.greater_equal(length, cfg.min_chars)))
    if cfg.max_chars is not None:
        rules.append(("too_long", pc.less_equal(length, cfg.max_chars)))
    if cfg.keep_langs is not None:
        rules.append(("lang_not_kept", pc.is_in(lang, value_set=pa.array(cfg.keep_langs, pa.string()))))
    if cfg.drop_langs:
        rules.append(("lang_dropped", pc.invert(pc.is_in(lang, value_set=pa.array(cfg.drop_langs, pa.string())))))
    if cfg.keep_sources is not None:
        src = pc.fill_null(batch["source"], "")
        rules.append(("source_not_kept", pc.is_in(src, value_set=pa.array(cfg.keep_sources, pa.string()))))
    for reason, ok in rules:
        ok = pc.fill_null(ok, False)
        failing = pc.and_(keep, pc.invert(ok))
        count = pc.sum(failing).as_py() or 0
        if count:
            dropped[reason] += count
        keep = pc.and_(keep, ok)
    return keep, dropped


@register_stage
class FilterStage(MapStage[FilterConfig]):
    config_model = FilterConfig

    def process(self, batch: pa.Table) -> BatchResult:
        keep, dropped = filter_mask(batch, self.config)
        return BatchResult(batch.filter(keep), dropped=dropped)
