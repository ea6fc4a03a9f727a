"""Hostile language labels: normalised to one code each, or sent to 'und', and counted."""

from __future__ import annotations

import json

import orjson
import pyarrow as pa
import pytest

from pipeline.errors import SpecError
from stages.balance.langcodes import LabelNormaliser, normalise_lang

HOSTILE = ["EN_us", "en\n", "\U0001f600", "../../etc"]


def test_hostile_labels_normalise():
    assert [normalise_lang(x) for x in HOSTILE] == ["en", "en", "und", "und"]
    cases = {"pt-BR": "pt", "sr@latin": "sr", "de_DE.UTF-8": "de", "zh-Hant-TW": "zh", "eng": "en", "ger": "de",
             "ceb": "ceb", "und": "und", "zxx": "zxx", "iw": "he", "C": "und", "x-klingon": "und", "english": "und",
             "  ": None, "": None}
    assert {k: normalise_lang(k) for k in cases} == cases
    norm = LabelNormaliser()
    labels, invalid = norm([*HOSTILE, "en", None, "und", "\t"])
    assert labels == ["en", "en", "und", "und", "en", None, "und", None]
    assert invalid == [False, False, True, True, False, False, False, False]
    assert norm.counts == {"normalised": 2, "not_a_language_code": 2, "blank": 1}
    assert norm.examples == ["'\\U0001f600'", "'../../etc'"]


def test_a_label_column_normalises_as_the_labels_one_by_one():
    """The stage's per-distinct-label path: the same labels, flags, counts and examples as row by row."""
    rows = [*HOSTILE, "en", None, "und", "\t", "EN_us", *HOSTILE[::-1], None, "de_DE.UTF-8"] * 3
    one, column = LabelNormaliser(), LabelNormaliser()
    labels, invalid = one(rows)
    got, got_invalid = column.normalise_column(pa.chunked_array([pa.array(rows[:7]), pa.array(rows[7:])]))
    assert got.to_pylist() == labels and got_invalid.tolist() == invalid
    assert column.counts == one.counts and column.examples == one.examples


SPEC = """
name: labels
seed: 3
output: out
inputs:
  docs: {{paths: [docs.jsonl]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs]}}
  - name: balance
    type: balance
    inputs: [ingest]
    langid: {{mode: "{mode}"}}
    strategy: unimax
    max_epochs: 4
"""


@pytest.mark.parametrize("mode", ["off", "missing"])
def test_balance_gives_hostile_labels_no_share_of_their_own(run_spec, tmp_path, mode):
    text = "The quick brown fox jumps over the lazy dog and runs far away into the forest today. "
    docs = [{"id": f"d{i}", "text": text * 3, "lang": lab} for i, lab in enumerate(["en"] * 20 + HOSTILE * 5)]
    (tmp_path / "docs.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    _, out = run_spec(SPEC.format(mode=mode))
    stats = json.loads((out / "balance" / "manifest.json").read_text())["stats"]
    assert stats["labels"]["normalised"] == 10 and stats["labels"]["not_a_language_code"] == 10
    langs = stats["languages"]
    if mode == "off":  # no language ID: the not-a-code labels become und
        assert set(langs) == {"en", "und"} and langs["en"]["documents"] == 30 and langs["und"]["documents"] == 10
    else:  # a label that is no language code counts as missing: language ID labels the English text
        assert set(langs) == {"en"} and langs["en"]["documents"] == 40
    assert stats["labels"]["not_a_language_code_became"] == ("und" if mode == "off" else "language ID")


def test_balance_language_keys_are_normalised_or_rejected(tmp_path):
    from conftest import write_spec

    from pipeline.spec import load_spec

    base = SPEC.format(mode="off")
    spec = load_spec(write_spec(tmp_path, base + "    drop_langs: [EN_us]\n    min_size: {DE: 5}\n"))
    bal = next(s for s in spec.stages if s.name == "balance")
    assert bal.drop_langs == ["en"] and bal.min_size == {"de": 5}
    with pytest.raises(SpecError, match="not a language code"):
        load_spec(write_spec(tmp_path, base + "    drop_langs: ['../../etc']\n"))
