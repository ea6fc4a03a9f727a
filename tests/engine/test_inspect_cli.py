"""``pipeline inspect`` prints file content as text (no rich markup), summarises non-Parquet files,
and the CLI has ``--version`` and examples in every subcommand's help."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from pipeline import __version__
from pipeline.cli import main
from pipeline.inspect_output import inspect_path


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def _stage(tmp_path, stats: dict, text: str = "plain"):
    d = tmp_path / "encode"
    (d / "data").mkdir(parents=True)
    (d / "__rejects").mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": [text]}), d / "data" / "part-000000-0000.parquet")
    pq.write_table(pa.table({"file": ["in.jsonl"], "line": [3], "reason": ["malformed_json"],
                             "detail": ["[/code] bad"]}), d / "__rejects" / "part-000000-0000.parquet")
    manifest = {"stage": "encode", "type": "encode", "rows_in": 1, "rows_out": 1, "stats": stats,
                "dropped": {"[/code]": 1}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_inspect_escapes_markup_and_keeps_language_rows(tmp_path):
    d = _stage(tmp_path, {"tokens": 10, "tokens_per_lang": {"en": 7, "de": 3}, "tokenizer": {"path": "[b]x"}},
               text="see [/code] and [bold]this[/bold]")
    console, buf = _console()
    facts = inspect_path(d, console)
    out = buf.getvalue()
    assert "tokens [en]" in out and "tokens [de]" in out
    assert "[/code] and [bold]this[/bold]" in out and "dropped: [/code]" in out
    assert facts["side_tables"] == {"__rejects": 1} and "in.jsonl:3 malformed_json: [/code] bad" in out


def _tokenizer_file(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=280, special_tokens=["<|eos|>"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path, tok


def test_inspect_tokenizer_file_summary(tmp_path):
    path, tok = _tokenizer_file(tmp_path)
    console, buf = _console()
    facts = inspect_path(path, console)["tokenizer"]
    assert facts["model"] == "BPE" and facts["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    assert facts["pre_tokenizer"] == "ByteLevel" and facts["special_tokens"] == ["<|eos|> (0)"]
    assert "<|eos|> (0)" in buf.getvalue()


def test_cli_inspect_non_parquet_files_one_line_error(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    assert main(["inspect", str(bad)]) == 1
    assert main(["inspect", str(broken)]) == 1
    assert main(["inspect", str(tmp_path / "[/code]")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3 and "[/code]" in err
    path, _ = _tokenizer_file(tmp_path)
    assert main(["inspect", str(path)]) == 0


def test_version_and_examples_in_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"tokenmill {__version__}"
    for cmd in ("run", "validate", "plan", "inspect", "schema", "report"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:\n  pipeline " + cmd in capsys.readouterr().out
