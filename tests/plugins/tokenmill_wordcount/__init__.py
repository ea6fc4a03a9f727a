"""A stage that lives outside ``stages/``: words per document, with its own chart in the run report.

It is found through the ``tokenmill.stages`` entry point of the distribution beside it
(``tokenmill_wordcount-0.1.dist-info``), imports nothing but :mod:`pipeline.sdk`, and proves that a
new stage type is one package and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.sdk import (
    BatchResult,
    Location,
    MapStage,
    ReportChart,
    ReportPart,
    StageConfig,
    register_stage,
    svg_charts,
)


class WordCountConfig(StageConfig):
    type: Literal["wordcount"]
    min_words: int = Field(default=0, ge=0, description="Drop documents with fewer words.")


def count_words(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Whitespace-separated words per document (the pure core, testable without Ray)."""
    return pc.list_value_length(pc.utf8_split_whitespace(text)).cast(pa.int32())


@register_stage
class WordCountStage(MapStage[WordCountConfig]):
    config_model = WordCountConfig

    def process(self, batch: pa.Table) -> BatchResult:
        words = count_words(batch["text"])
        keep = pc.greater_equal(words, self.config.min_words)
        kept = batch.append_column("words", words).filter(keep)
        histogram: dict[str, int] = {}
        for n in kept["words"].to_pylist():
            bucket = "0-9" if n < 10 else "10-99" if n < 100 else "100+"
            histogram[bucket] = histogram.get(bucket, 0) + 1
        return BatchResult(kept, dropped={"too_few_words": batch.num_rows - kept.num_rows},
                           stats={"words": int(pc.sum(kept["words"]).as_py() or 0), "histogram": histogram})

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        hist = manifest.get("stats", {}).get("histogram") or {}

        def draw() -> str:
            order = [b for b in ("0-9", "10-99", "100+") if b in hist]
            return svg_charts.bars(order, [hist[b] for b in order], f"{manifest['stage']}: words per document",
                                   ylabel="documents", xlabel="words per document", rotate=0)

        charts = [ReportChart("words", f"{manifest['stage']}: words per document", draw)] if hist else []
        return ReportPart(charts=charts, notes={"words counted": manifest.get("stats", {}).get("words", 0)})
