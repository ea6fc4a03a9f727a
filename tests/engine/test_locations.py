"""Inputs by URI: globs on pyarrow filesystems match local globs, and ingest reads from a real S3 endpoint.

The S3 test runs moto's S3 server in this process (a real HTTP endpoint speaking the S3 protocol);
pyarrow's own S3 client reaches it from the driver and from the Ray workers, exactly as it would
reach AWS, so every remote read path (listing, size/mtime, ranged reads, Parquet footers) is real.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import DATA_DIR, s3_filesystem

from pipeline.errors import SpecError
from pipeline.locations import Location, expand
from pipeline.parquet_io import read_table
from pipeline.spec import parse_spec

PATTERNS = ["*.jsonl", "**/*.jsonl", "sub/*.txt", "[ab]*.jsonl", "**/deep/*", "a.jsonl", "missing/*.txt"]


def _tree(root: Path) -> None:
    for rel in ["a.jsonl", "b.jsonl", "c.txt", "sub/d.jsonl", "sub/e.txt", "sub/deep/f.jsonl", "sub/deep/g.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_uri_globs_match_local_globs(tmp_path, pattern):
    _tree(tmp_path)
    local = sorted(f.path for f in expand(pattern, tmp_path))
    remote = expand(f"file://{tmp_path}/{pattern}", Path("/unused"))
    assert sorted(f.path for f in remote) == local
    assert all(f.fs is not None and f.uri.startswith("file://") for f in remote)
    if pattern != "missing/*.txt":
        assert local, pattern


def test_input_file_reads_the_same_through_a_filesystem(tmp_path):
    _tree(tmp_path)
    (remote,) = expand(f"file://{tmp_path}/sub/deep/f.jsonl", tmp_path)
    local = Location(str(tmp_path / "sub/deep/f.jsonl"))
    assert remote.read_bytes() == local.read_bytes() == b"sub/deep/f.jsonl"
    assert remote.info() == local.info()
    assert remote.relative_to(tmp_path) == f"file://{tmp_path}/sub/deep/f.jsonl"
    assert local.relative_to(tmp_path) == "sub/deep/f.jsonl"


def _spec(output: str, inputs: str = "docs: {paths: [x.jsonl]}") -> str:
    return f"""
name: t
output: {output}
inputs: {{{inputs}}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs]}}
"""


def test_output_locations(tmp_path, monkeypatch):
    """Local paths resolve against the spec, --output against the working directory; URIs keep their scheme."""
    spec = parse_spec(_spec("out"), base_dir=tmp_path / "specs")
    assert spec.output_dir() == Location(str(tmp_path / "specs" / "out"))
    monkeypatch.chdir(tmp_path)
    assert spec.output_dir("elsewhere") == Location(str(tmp_path / "elsewhere"))
    assert parse_spec(_spec(f"file://{tmp_path}/o"), base_dir=tmp_path).output_dir().local == tmp_path / "o"
    remote = parse_spec(_spec("file:///unused"), base_dir=tmp_path).output_dir(f"s3://bucket/out/{_QUERY_S3}")
    assert (remote.scheme, remote.path, remote.uri) == ("s3", "bucket/out", "s3://bucket/out")
    with pytest.raises(SpecError, match=r"--output: nosuchfs://b/o: no filesystem"):
        spec.output_dir("nosuchfs://b/o")


_QUERY_S3 = "?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"


def test_unknown_scheme_names_the_input(tmp_path):
    from pipeline.runner import make_plan

    spec = parse_spec(_spec("out", "docs: {paths: ['nosuchfs://bucket/*.jsonl']}"), base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"inputs\.docs\.paths: cannot list 'nosuchfs://bucket/\*\.jsonl'"):
        make_plan(spec, tmp_path / "out")


# ------------------------------------------------------------------------------------------ S3


def _s3(endpoint: str) -> pafs.S3FileSystem:
    return s3_filesystem(endpoint)


def test_ingest_reads_s3_uris_like_local_files(run_spec, tmp_path, s3_endpoint):
    """Same rows, same rejects (named by URI, no credentials), and a re-run skips the stage."""
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    shutil.copy(DATA_DIR / "udhr_articles_1-3.jsonl.zst", local_dir)
    shutil.copy(DATA_DIR / "bad_rows.jsonl", local_dir)
    table = pa.table({"id": [f"p{i}" for i in range(500)], "text": [f"parquet row {i}" for i in range(500)]})
    pq.write_table(table, local_dir / "rows.parquet", row_group_size=100)
    fs = _s3(s3_endpoint)
    fs.create_dir("corpus")
    for f in sorted(local_dir.iterdir()):
        with fs.open_output_stream(f"corpus/in/{f.name}", compression=None) as dst:
            dst.write(f.read_bytes())

    def spec(paths: list[str], out: str) -> str:
        return f"""
name: t
output: {out}
inputs:
  docs: {{paths: {json.dumps(paths)}}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.05}}
"""

    query = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    remote = [f"s3://testing:testing@corpus/in/*.jsonl*{query}", f"s3://testing:testing@corpus/in/rows.parquet{query}"]
    _, out_remote = run_spec(spec(remote, "remote"))
    _, out_local = run_spec(spec(["local/*.jsonl*", "local/rows.parquet"], "local_out"))

    def rows(out: Path) -> pa.Table:
        """Rows sorted by id; rows without an id are named ``<file>:<line>``, the file relative to the
        input's folder: the same ids whether the corpus is local or on S3."""
        t = read_table(sorted((out / "ingest" / "data").glob("part-*.parquet")))
        return t.select(["text", "lang", "id"]).sort_by("id")

    got, want = rows(out_remote), rows(out_local)
    assert got.num_rows == want.num_rows > 500
    assert got.equals(want)
    rej = read_table(sorted((out_remote / "ingest" / "__rejects").glob("part-*.parquet")))
    rej_local = read_table(sorted((out_local / "ingest" / "__rejects").glob("part-*.parquet")))
    assert sorted(zip(rej["line"].to_pylist(), rej["reason"].to_pylist(), strict=True)) == sorted(
        zip(rej_local["line"].to_pylist(), rej_local["reason"].to_pylist(), strict=True))
    assert set(rej["file"].to_pylist()) == {"s3://corpus/in/bad_rows.jsonl"}
    manifest_text = (out_remote / "ingest" / "manifest.json").read_text()
    assert "s3://corpus/in/rows.parquet" in manifest_text and "testing:testing" not in manifest_text
    assert json.loads(manifest_text)["stats"]["files"] == 3

    again, _ = run_spec(spec(remote, "remote"))
    assert [s.action for s in again.stages] == ["skip"]
    # a changed object re-runs the stage (compression=None: pyarrow would otherwise compress by extension)
    with fs.open_output_stream("corpus/in/bad_rows.jsonl", compression=None) as dst:
        dst.write((local_dir / "bad_rows.jsonl").read_bytes() + b'{"id": "new", "text": "one more row"}\n')
    changed, out_changed = run_spec(spec(remote, "remote"))
    assert [s.action for s in changed.stages] == ["run"]
    assert "new" in read_table(sorted((out_changed / "ingest" / "data").glob("part-*.parquet")))["id"].to_pylist()


CHAIN = """
  - {name: dedup, type: dedup, inputs: [ingest], near: {threshold: 0.8}}
  - {name: balance, type: balance, inputs: [dedup], strategy: temperature, alpha: 0.5}
  - {name: tokenizer, type: train_tokenizer, inputs: [balance], vocab_size: 600, report: {heldout_docs: 20},
     parallel_text: udhr}
  - {name: encode, type: encode, inputs: [balance], tokenizer: tokenizer}
  - name: clean
    type: clean
    inputs: [encode]
    tokenizer: tokenizer
    boilerplate: {min_docs: 3}
    influence: {enabled: true, order: 2, reference: {langs: [en]}, keep_ratio: 0.8}
  - {name: pack, type: pack, inputs: [clean], method: best_fit, seq_len: 256, writers: [numpy, olmo, megatron]}
"""
STAGES = ("ingest", "dedup", "balance", "tokenizer", "encode", "clean", "pack")
DATA_SUFFIXES = (".parquet", ".npy", ".bin", ".idx", ".json", ".gz")


def _digest(files: dict[str, bytes]) -> dict[str, str]:
    """sha256 per stage data file (manifests hold timings and the output's own name: left out)."""
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()
            if rel.split("/")[0] in STAGES and rel.endswith(DATA_SUFFIXES) and not rel.endswith("manifest.json")}


def test_whole_pipeline_writes_to_s3_exactly_as_locally(run_spec, tmp_path, s3_endpoint):
    """Every stage reads and writes only through the object store (inputs and output on S3): the
    objects are byte-identical to a local run's files, a re-run skips every stage, no temp prefix is
    left behind, and ``inspect`` and the report read the output by URI."""
    from test_cluster import make_corpus

    corpus = tmp_path / "docs.jsonl"
    make_corpus(corpus, 1500, seed=3)
    fs = _s3(s3_endpoint)
    fs.create_dir("pipes")
    with fs.open_output_stream("pipes/in/docs.jsonl", compression=None) as dst:
        dst.write(corpus.read_bytes())
    udhr = DATA_DIR / "udhr_articles_1-3.jsonl.zst"  # an artifact input (parallel text), on S3 as well
    with fs.open_output_stream("pipes/in/udhr.jsonl.zst", compression=None) as dst:
        dst.write(udhr.read_bytes())
    query = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"

    def spec(docs: str, out: str, parallel: str = f"s3://testing:testing@pipes/in/udhr.jsonl.zst{query}") -> str:
        return f"""
name: s3-chain
seed: 5
output: {out}
inputs:
  docs: {{paths: ["{docs}"], fields: {{id: id, text: text, lang: lang, source: source}}}}
  udhr: {{kind: artifact, path: "{parallel}"}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 0.25}}
""" + CHAIN

    remote_out = f"s3://testing:testing@pipes/out{query}"
    plan, _ = run_spec(spec(f"s3://testing:testing@pipes/in/docs.jsonl{query}", remote_out))
    assert [s.action for s in plan.stages] == ["run"] * len(STAGES)
    _, local_out = run_spec(spec(str(corpus), "local_out", str(udhr)))

    listing = fs.get_file_info(pafs.FileSelector("pipes/out", recursive=True))
    remote_files = {i.path.removeprefix("pipes/out/"): fs.open_input_file(i.path).read()
                    for i in listing if i.type == pafs.FileType.File}
    local_files = {p.relative_to(local_out).as_posix(): p.read_bytes() for p in local_out.rglob("*") if p.is_file()}
    got, want = _digest(remote_files), _digest(local_files)
    assert len(want) > 20 and {k.split("/")[0] for k in want} == set(STAGES)
    assert got == want
    assert not [k for k in remote_files if k.startswith(".tmp/")], "work prefixes left behind"
    manifest = json.loads(remote_files["ingest/manifest.json"])
    assert manifest["status"] == "complete" and manifest["shards"]["run"] > 1
    assert "testing:testing" not in remote_files["encode/manifest.json"].decode()
    assert {"report.html", "report.json", "run.json"} <= set(remote_files)
    assert json.loads(remote_files["tokenizer/report.json"])["token_premium"]["languages"] > 100

    again, _ = run_spec(spec(f"s3://testing:testing@pipes/in/docs.jsonl{query}", remote_out))
    assert [s.action for s in again.stages] == ["skip"] * len(STAGES)

    from rich.console import Console

    from pipeline.inspect_output import inspect_path

    facts = inspect_path(f"s3://testing:testing@pipes/out/pack{query}", Console(file=io.StringIO()))
    assert facts["manifest"]["type"] == "pack" and facts["rows"] == manifest_rows(remote_files, "pack")


def manifest_rows(files: dict[str, bytes], stage: str) -> int:
    return json.loads(files[f"{stage}/manifest.json"])["rows_out"]


def test_unreachable_output_is_a_spec_error_naming_it(tmp_path):
    from conftest import free_port

    from pipeline.runner import make_plan

    (tmp_path / "x.jsonl").write_text('{"id": "a", "text": "t"}\n')
    spec = parse_spec(_spec("out"), base_dir=tmp_path)
    dead = f"s3://testing:testing@b/out?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
    with pytest.raises(SpecError, match=r"output: cannot reach s3://b/out: .*NETWORK_CONNECTION"):
        make_plan(spec, spec.output_dir(dead))
