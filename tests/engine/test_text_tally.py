"""The text figures workers tally as they write equal what the report would read back from the parts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import text_tally
from pipeline.parquet_io import PartWriter
from pipeline.report import tallied_text_figures, text_figures


def _write_parts(tmp_path, texts_per_part):
    tally = None
    parts = []
    for i, texts in enumerate(texts_per_part):
        w = PartWriter(tmp_path, f"part-{i}", tally=True)
        for start in range(0, len(texts), 3):  # several tables per part
            w.write(pa.table({"id": [str(k) for k in range(start, start + len(texts[start:start + 3]))],
                              "text": texts[start:start + 3]}))
        w.commit()
        parts.append(w.final)
        tally = text_tally.merge(tally, w.tally.to_stats())
    return parts, tally


def test_the_tally_equals_reading_the_parts_back(tmp_path):
    rng = np.random.default_rng(0)
    texts = [["é" * int(n) for n in rng.integers(0, 5000, size=m)] for m in (7, 1, 12)]
    parts, tally = _write_parts(tmp_path, texts)
    hist, nbytes = tallied_text_figures({"stats": {"text": tally}}, parts)
    read_hist, read_bytes = text_figures(parts)
    assert nbytes == read_bytes == sum(len(t.encode()) for p in texts for t in p if t)
    assert hist["counts"] == read_hist["counts"] and hist["documents"] == 20
    assert hist["parts_read"] == 0 and hist["median_bytes"] > 0


def test_a_tally_that_does_not_cover_the_parts_is_not_used(tmp_path):
    parts, tally = _write_parts(tmp_path, [["a" * 50, "b" * 500], ["c" * 5]])
    short = {"stats": {"text": {**tally, "length_counts": [0] * len(tally["length_counts"])}}}
    assert tallied_text_figures(short, parts) == (None, None)
    assert tallied_text_figures({"stats": {}}, parts) == (None, None)
    assert tallied_text_figures({"stats": {"text": tally}}, parts)[1] == 555


def test_a_null_text_is_a_document_of_zero_bytes(tmp_path):
    """Counted in the lowest bin, so the histogram's documents are the part's rows."""
    parts, tally = _write_parts(tmp_path, [["x" * 300, None]])
    hist, nbytes = tallied_text_figures({"stats": {"text": tally}}, parts)
    assert nbytes == 300 and hist["documents"] == 2 and hist["counts"][0] == 1
