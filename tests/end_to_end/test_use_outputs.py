"""The README's "Use the outputs" snippets, run against a real small pipeline output.

One module-scoped run (ingest -> dedup -> tokenizer -> encode -> clean -> pack with every writer) on
real quickstart documents; then each reader of the README is pointed at it exactly as documented:
HF ``datasets`` (folder mode and the parquet builder), DuckDB, polars, Ray Data, ``transformers``,
Megatron-core's ``IndexedDataset`` and ``GPTDataset`` (with the loss-mask companion) and OLMo-core's
documented glob.
"""

from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path

import numpy as np
import orjson
import pytest
import zstandard
from conftest import REPO_ROOT, write_spec

from pipeline.parquet_io import read_table
from pipeline.progress import QuietReporter
from pipeline.runner import run_pipeline
from pipeline.spec import load_spec

SPEC = """
name: outputs
seed: 3
output: out
inputs:
  docs: {paths: [docs.jsonl.zst]}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 0.3}
  - {name: dedup, type: dedup, inputs: [ingest], near: {threshold: 0.8}}
  - name: tokenizer
    type: train_tokenizer
    inputs: [dedup]
    vocab_size: 1200
    special_tokens: ["<|endoftext|>", "<|padding|>"]
    report: {heldout_docs: 50}
  - {name: encode, type: encode, inputs: [dedup], tokenizer: tokenizer}
  - name: clean
    type: clean
    inputs: [encode]
    tokenizer: tokenizer
    repetition: {keep_repeats: 2}
    boilerplate: {min_docs: 3}
  - {name: pack, type: pack, inputs: [clean], seq_len: 256, writers: [numpy, megatron, olmo]}
"""


def _docs() -> list[dict]:
    raw = (REPO_ROOT / "yaml_specs" / "data" / "debian-sample.jsonl.zst").read_bytes()
    rows = [orjson.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().splitlines()]
    rows = [r for r in rows if len(r["text"]) < 6000][:300]
    return rows + [dict(r, id=r["id"] + "-copy") for r in rows[:20]]  # exact duplicates for dedup's clusters


@pytest.fixture(scope="module")
def out(ray_local, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("outputs")
    (d / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        b"".join(orjson.dumps(r) + b"\n" for r in _docs())))
    run_pipeline(load_spec(write_spec(d, SPEC)), reporter=QuietReporter())
    return d / "out"


def _manifest(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "manifest.json").read_text())


def test_stage_folders_hold_the_dataset_in_data_and_side_tables_apart(out):
    dedup = out / "dedup"
    assert (dedup / "__clusters").is_dir() and not (dedup / "clusters").exists()
    assert (out / "ingest" / "data").is_dir() and not (out / "ingest" / "rejects").exists()
    assert _manifest(out, "dedup")["rows_out"] < _manifest(out, "dedup")["rows_in"]


def test_inspect_lists_the_side_tables(out):
    from rich.console import Console

    from pipeline.inspect_output import inspect_path

    buf = io.StringIO()
    facts = inspect_path(out / "dedup", Console(file=buf, width=200))
    assert facts["side_tables"]["__clusters"] > 0 and facts["rows"] == _manifest(out, "dedup")["rows_out"]
    assert set(inspect_path(out, Console(file=io.StringIO()))["stages"]) >= {"ingest", "dedup", "pack"}
    tok = inspect_path(out / "tokenizer" / "tokenizer.json", Console(file=io.StringIO()))["tokenizer"]
    assert tok["vocab_size"] == 1200 and tok["model"] == "BPE" and "<|endoftext|> (0)" in tok["special_tokens"]


def test_hf_datasets_reads_a_stage_folder(out, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    n = _manifest(out, "dedup")["rows_out"]
    cache = str(out.parent / "hf-cache")
    # README: load_dataset("out/quickstart/dedup")  (folder mode)
    ds = datasets.load_dataset(str(out / "dedup"), split="train", cache_dir=cache)
    assert ds.num_rows == n and "text" in ds.column_names
    # the pack folder holds token files too: its dataset card points folder mode at data/
    packed = datasets.load_dataset(str(out / "pack"), split="train", cache_dir=cache)
    assert packed.num_rows == _manifest(out, "pack")["stats"]["sequences"] and "input_ids" in packed.column_names
    # README: load_dataset("parquet", data_dir="out/quickstart/dedup/data")
    ds2 = datasets.load_dataset("parquet", data_dir=str(out / "dedup" / "data"), split="train", cache_dir=cache)
    assert ds2.num_rows == n


def test_duckdb_and_polars_read_a_stage(out):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    n = _manifest(out, "dedup")["rows_out"]
    d = out / "dedup"
    # README: duckdb.sql("SELECT lang, count(*) FROM 'out/quickstart/dedup/data/*.parquet' GROUP BY lang")
    by_lang = duckdb.sql(f"SELECT lang, count(*) AS n FROM '{d}/data/*.parquet' GROUP BY lang").fetchall()
    assert sum(c for _, c in by_lang) == n
    # README: pl.scan_parquet("out/quickstart/dedup/data/*.parquet")
    assert pl.scan_parquet(f"{d}/data/*.parquet").select(pl.len()).collect().item() == n
    assert pl.read_parquet(d / "data").height == n
    clusters = duckdb.sql(f"SELECT count(*) FROM '{d}/__clusters/*.parquet'").fetchall()[0][0]
    assert clusters > 0


def test_ray_data_reads_the_stage_folder_rows_only(out, ray_local):
    import ray

    n = _manifest(out, "dedup")["rows_out"]
    # README: ray.data.read_parquet("out/quickstart/dedup")
    assert ray.data.read_parquet(str(out / "dedup")).count() == n
    assert ray.data.read_parquet(str(out / "pack")).count() == _manifest(out, "pack")["stats"]["sequences"]


def test_auto_tokenizer_loads_the_tokenizer_folders(out):
    transformers = pytest.importorskip("transformers")
    for folder, max_len in ((out / "tokenizer", None), (out / "pack" / "tokenizer", 256)):
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|padding|>"
        batch = tok(["Debian", "Debian GNU/Linux is a free operating system"], padding=True)
        assert len(batch["input_ids"][0]) == len(batch["input_ids"][1])
        if max_len:
            assert tok.model_max_length == max_len


def test_olmo_core_glob_and_mask_paths(out):
    pack = out / "pack"
    writers = _manifest(out, "pack")["stats"]["writers"]
    assert writers["olmo"]["glob"] == "olmo/*.npy" and writers["masks"]["megatron"].startswith("megatron_masks/")
    # README: NumpyFSLDatasetConfig.glob("out/quickstart/pack/olmo/*.npy", label_mask_paths=[...olmo_masks/*.npy])
    tokens = sorted(glob.glob(str(pack / "olmo" / "*.npy")))
    masks = sorted(glob.glob(str(pack / "olmo_masks" / "*.npy")))
    assert [Path(t).name for t in tokens] == [Path(m).name for m in masks] and tokens
    stream = np.concatenate([np.fromfile(t, "<u2") for t in tokens])
    assert len(stream) == _manifest(out, "encode")["stats"].get("tokens", len(stream))
    seq_len = 256
    instances = sum(os.path.getsize(t) // (2 * seq_len) for t in tokens)
    cleaned = read_table(sorted((out / "clean" / "data").glob("*.parquet")))
    assert instances == sum(cleaned.column("n_tokens").to_pylist()) // seq_len or instances == len(stream) // seq_len
    mask_stream = np.concatenate([np.fromfile(m, np.bool_) for m in masks])
    expected = np.concatenate([np.asarray(x, np.uint8) for x in cleaned.column("loss_mask").to_pylist()])
    assert np.array_equal(mask_stream.astype(np.uint8), expected) and (expected == 0).any()


def _megatron_config(prefix: Path, cache: Path):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    class Tok:  # what GPTDataset asks of a tokenizer: eod and pad ids
        eod, pad, vocab_size, unique_identifiers = 0, 1, None, {"class": "tokenmill-test"}

    return GPTDatasetConfig(random_seed=1234, sequence_length=256, blend=([str(prefix)], None), split="1,0,0",
                            tokenizer=Tok(), reset_position_ids=False, reset_attention_mask=False,
                            eod_mask_loss=False, path_to_cache=str(cache), mid_level_dataset_surplus=0.005)


def test_megatron_gpt_dataset_and_the_mask_companion(out):
    pytest.importorskip("megatron.core.datasets.gpt_dataset", reason="megatron-core not installed")
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    mega = out / "pack" / "megatron"
    tokens = IndexedDataset(str(mega / "tokens"))
    masks = IndexedDataset(str(out / "pack" / "megatron_masks" / "tokens"))
    cleaned = read_table(sorted((out / "clean" / "data").glob("*.parquet")))
    assert len(tokens) == len(masks) == cleaned.num_rows
    for i in (0, cleaned.num_rows // 2, cleaned.num_rows - 1):
        assert tokens[i].tolist() == cleaned.column("input_ids")[i].as_py()
        assert masks[i].tolist() == cleaned.column("loss_mask")[i].as_py()
    cache = out.parent / "megatron-cache"
    build = BlendedMegatronDatasetBuilder
    (train,) = build(GPTDataset, [20, None, None], lambda: True, _megatron_config(mega / "tokens", cache)).build()[:1]
    (mtrain,) = build(GPTDataset, [20, None, None], lambda: True,
                      _megatron_config(out / "pack" / "megatron_masks" / "tokens", cache)).build()[:1]
    assert len(train) == len(mtrain) >= 20
    for i in range(5):
        t, m = train[i], mtrain[i]
        assert t["labels"].shape == m["labels"].shape
        assert set(np.unique(m["labels"].numpy()).tolist()) <= {0, 1}
    # the same sample layout: mtrain[i]["labels"] is the cleaning mask of train[i]["labels"]
    for name in ("shuffle_index", "sample_index", "document_index"):
        assert np.array_equal(getattr(train, name), getattr(mtrain, name))
    loss_mask = train[0]["loss_mask"] * mtrain[0]["labels"]  # README
    assert loss_mask.shape == train[0]["labels"].shape and loss_mask.sum() <= train[0]["loss_mask"].sum()
    zeros = sum(int((mtrain[i]["labels"] == 0).sum()) for i in range(len(mtrain)))
    assert zeros > 0  # the cleaning masked tokens, and they reach the trainer's samples


def test_report_draws_the_dag_and_one_mb_definition(out):
    import re

    import pyarrow.compute as pc

    page = (out / "report.html").read_text()
    svg = page[page.index("<svg"):page.index("</svg>")]
    nodes = dict((n, (float(x), float(y))) for n, x, y in
                 re.findall(r'data-stage="([^"]+)"><rect x="([\d.]+)" y="([\d.]+)"', svg))
    assert set(nodes) == {"docs", "ingest", "dedup", "tokenizer", "encode", "clean", "pack"}
    found = set(re.findall(r'data-from="([^"]+)" data-to="([^"]+)"', svg))
    assert {("dedup", "tokenizer"), ("dedup", "encode"), ("tokenizer", "encode"), ("tokenizer", "clean")} <= found
    # the tokenizer is a parallel branch: its own row, not a link of the chain
    assert nodes["tokenizer"][1] != nodes["encode"][1] == nodes["dedup"][1]
    assert "&rarr;" not in page[page.index("<h2>DAG</h2>"):page.index("<h2>Stages")]
    assert "<th>text MB in (UTF-8)</th>" in page and "<th>text MB out (UTF-8)</th>" in page
    caps = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert "clean: share of tokens masked from the loss, by scorer and by language" in caps
    assert not any(re.fullmatch(r"\w+:\w+", c) for c in caps)
    fun = {r["stage"]: r for r in json.loads((out / "report.json").read_text())["funnel"]}
    text = sum(pc.sum(pc.binary_length(pq_text(p))).as_py() for p in sorted((out / "dedup" / "data").glob("*.parquet")))
    assert fun["dedup"]["text_mb_out"] == round(text / 1e6, 6)
    assert fun["dedup"]["text_mb_in"] == fun["ingest"]["text_mb_out"] > fun["dedup"]["text_mb_out"]  # 20 copies gone
    assert fun["encode"]["text_mb_in"] == fun["dedup"]["text_mb_out"]
    assert fun["clean"]["tokens_in"] == fun["encode"]["tokens_out"] == fun["pack"]["tokens_out"]
    assert fun["pack"]["text_mb_out"] is None and fun["ingest"]["text_mb_in"] is None


def pq_text(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["text"]).column("text")
