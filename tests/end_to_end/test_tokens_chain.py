"""Tokenizer training -> encode -> pack on a real local Ray, and the token files read back.

The Megatron files are read with an independent reader written here from the format description
(notes: magic, version, dtype code, counts, int32 lengths, int64 pointers, int64 document indices).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import DATA_DIR, REPO_ROOT, write_spec
from tokenizers import Tokenizer

from pipeline.parquet_io import read_table
from pipeline.progress import QuietReporter
from pipeline.runner import run_pipeline
from pipeline.spec import load_spec
from stages.pack.formats import MegatronDataset, PackedDataset, TokenStreamDataset

SPEC = """
name: chain
seed: 7
output: out
inputs:
  docs: {paths: [docs.jsonl.zst]}
  udhr: {kind: artifact, path: udhr.jsonl.zst}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 0.5}
  - name: tok
    type: train_tokenizer
    inputs: [ingest]
    vocab_size: 2000
    sample_mb: 1                # leaves held-out documents for the report's per-language chart
    parallel_text: udhr
    report: {reference_lang: eng, heldout_docs: 300}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok}
  - name: pack
    type: pack
    inputs: [encode]
    method: best_fit
    seq_len: 512
    writers: [numpy, megatron, olmo]
  - {name: concat, type: pack, inputs: [encode], method: concat, seq_len: 512, writers: []}
"""


def docs() -> list[dict]:
    raw = (REPO_ROOT / "yaml_specs" / "data" / "debian-sample.jsonl.zst").read_bytes()
    rows = [orjson.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().splitlines()]
    return [r for r in rows if len(r["text"]) < 20000][:1200]


@pytest.fixture(scope="module")
def chain(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    (d / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        b"".join(orjson.dumps(r) + b"\n" for r in docs())))
    shutil.copy(DATA_DIR / "udhr_articles_1-3.jsonl.zst", d / "udhr.jsonl.zst")
    spec = load_spec(write_spec(d, SPEC))
    run_pipeline(spec, reporter=QuietReporter())
    return d / "out"


def read_megatron_independently(prefix: Path) -> list[list[int]]:
    idx = (prefix.parent / (prefix.name + ".idx")).read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    version, code, seqs, ndocs = struct.unpack_from("<QBQQ", idx, 9)
    assert version == 1
    dtype = {8: "<u2", 4: "<i4"}[code]
    lengths = struct.unpack_from(f"<{seqs}i", idx, 34)
    pointers = struct.unpack_from(f"<{seqs}q", idx, 34 + 4 * seqs)
    doc_idx = struct.unpack_from(f"<{ndocs}q", idx, 34 + 12 * seqs)
    assert list(doc_idx) == list(range(seqs + 1))
    data = (prefix.parent / (prefix.name + ".bin")).read_bytes()
    return [np.frombuffer(data, dtype=dtype, count=n, offset=p).tolist()
            for n, p in zip(lengths, pointers, strict=True)]


def test_tokenizer_round_trips_every_document_and_udhr(chain):
    tok = Tokenizer.from_file(str(chain / "tok" / "tokenizer.json"))
    texts = [r["text"] for r in docs()]
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((DATA_DIR / "udhr_articles_1-3.jsonl.zst")
                                                                .read_bytes())).read()
    texts += [orjson.loads(x)["text"] for x in raw.splitlines()]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    bad = [t for t, e in zip(texts, encs, strict=True) if tok.decode(e.ids, skip_special_tokens=False) != t]
    assert not bad
    report = json.loads((chain / "tok" / "report.json").read_text())
    assert report["token_premium"]["premiums"]["eng"] == 1.0
    assert report["token_premium"]["languages"] > 300
    assert report["summary"]["partial_utf8"] >= 128  # at least the 128 lone bytes 0x80-0xFF


def test_megatron_round_trip_equals_reencoding(chain):
    tok = Tokenizer.from_file(str(chain / "tok" / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    kept = read_table(sorted((chain / "ingest" / "data").glob("*.parquet")))
    expected = [[*e.ids, eos] for e in tok.encode_batch(kept.column("text").to_pylist(), add_special_tokens=False)]
    got = read_megatron_independently(chain / "pack" / "megatron" / "tokens")
    assert got == expected
    ours = MegatronDataset(chain / "pack" / "megatron" / "tokens")
    assert ours.dtype == np.dtype("<u2") and len(ours) == len(expected)
    assert ours[5].tolist() == expected[5]


def test_encode_dtype_counts_and_manifest(chain):
    enc = read_table(sorted((chain / "encode" / "data").glob("*.parquet")))
    assert str(enc.schema.field("input_ids").type) == "list<element: uint16>"
    assert enc.column("n_tokens").to_pylist() == [len(x) for x in enc.column("input_ids").to_pylist()]
    m = json.loads((chain / "encode" / "manifest.json").read_text())
    assert m["stats"]["tokens"] == sum(enc.column("n_tokens").to_pylist())
    assert sum(m["stats"]["tokens_per_lang"].values()) == m["stats"]["tokens"]
    # default llama3-pattern BPE: gigatoken ran on the Ray actors, parity-checked against HF
    assert m["stats"]["engine"]["engine"] == "fast", m["stats"]["engine"]
    n_parts = len(list((chain / "encode" / "data").glob("*.parquet")))
    assert m["stats"]["engine"]["shards"] == {"fast": n_parts}, m["stats"]["engine"]  # as the workers reported it
    assert "gigatoken supports" in m["stats"]["engine"]["reason"]
    assert m["stats"]["parity_checked"] >= min(16 * n_parts, enc.num_rows)
    assert m["stats"]["parity_mismatches"] == 0


def test_best_fit_packing_outputs_agree_and_beat_concat(chain):
    packed = read_table(sorted((chain / "pack" / "data").glob("*.parquet")))
    m = json.loads((chain / "pack" / "manifest.json").read_text())["stats"]
    enc = read_table(sorted((chain / "encode" / "data").glob("*.parquet")))
    n_tokens = enc.column("n_tokens").to_pylist()
    assert m["tokens"] == sum(n_tokens)
    assert m["documents_split"] == sum(1 for n in n_tokens if n > 512)  # only long documents are split
    concat = json.loads((chain / "concat" / "manifest.json").read_text())["stats"]
    assert concat["documents_split"] > m["documents_split"] + 100  # concat also cuts documents that fit
    for row in packed.slice(0, 50).to_pylist():
        lens = row["doc_lens"]
        assert row["cu_seqlens"] == list(np.concatenate([[0], np.cumsum(lens)]))
        assert sum(row["loss_mask"]) == sum(lens)  # padding is masked, document tokens are not
        assert row["position_ids"][: sum(lens)] == [p for n in lens for p in range(n)]
    ds = PackedDataset(chain / "pack" / "numpy")
    assert ds.tokens.shape == (m["sequences"], 512)
    first = packed.slice(0, 1).to_pylist()[0]
    assert ds[0]["input_ids"].tolist() == first["input_ids"]
    assert ds[0]["doc_lens"].tolist() == first["doc_lens"]


def test_olmo_memmap_is_the_document_stream(chain):
    enc = read_table(sorted((chain / "encode" / "data").glob("*.parquet")))
    stream = np.concatenate([np.asarray(x) for x in enc.column("input_ids").to_pylist()])
    tokens = np.memmap(chain / "pack" / "olmo" / "part-00000.npy", dtype=np.uint16, mode="r")
    assert np.array_equal(tokens, stream)
    ds = TokenStreamDataset(chain / "pack" / "olmo", seq_len=256)
    assert len(ds) == len(stream) // 256 and ds[3]["input_ids"].tolist() == stream[768:1024].tolist()
    import gzip

    rows = gzip.decompress((chain / "pack" / "olmo" / "part-00000.csv.gz").read_bytes()).decode().splitlines()
    assert len(rows) == enc.num_rows and rows[0].startswith("0,")


def test_rerun_of_encode_and_pack_gives_identical_bytes(chain):
    before = {p: p.read_bytes() for st in ("encode", "pack") for p in sorted((chain / st).rglob("*"))
              if p.is_file() and p.name != "manifest.json"}
    spec = load_spec(chain.parent / "spec.yaml")
    run_pipeline(spec, reporter=QuietReporter(), force=["encode"])
    after = {p: p.read_bytes() for st in ("encode", "pack") for p in sorted((chain / st).rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    assert before.keys() == after.keys() and before == after
    assert pq.read_metadata(chain / "pack" / "data" / "part-00000.parquet").num_rows > 0


def test_run_report_is_self_contained_with_every_chart(chain):
    page = (chain / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    for chart in ("funnel", "premiums:tok", "bytes_per_token:tok", "packing:pack", "packing:concat"):
        assert f'data-chart="{chart}" src="data:image/svg+xml;base64,' in page  # every chart: SVG
    summary = json.loads((chain / "report.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["ingest", "tok", "encode", "pack", "concat"]
