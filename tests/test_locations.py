"""Inputs by URI: globs on pyarrow filesystems match local globs, and ingest reads from a real S3 endpoint.

The S3 test runs moto's S3 server in this process (a real HTTP endpoint speaking the S3 protocol);
pyarrow's own S3 client reaches it from the driver and from the Ray workers, exactly as it would
reach AWS, so every remote read path (listing, size/mtime, ranged reads, Parquet footers) is real.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import DATA_DIR

from pipeline.errors import SpecError
from pipeline.locations import InputFile, expand
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
    local = InputFile(str(tmp_path / "sub/deep/f.jsonl"))
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


def test_object_store_output_is_refused_with_the_reason(tmp_path):
    spec = parse_spec(_spec("s3://bucket/out"), base_dir=tmp_path)
    with pytest.raises(SpecError) as err:
        spec.output_dir()
    assert "output: 's3://bucket/out'" in str(err.value) and "shared-filesystem path" in str(err.value)
    with pytest.raises(SpecError, match="--output: 'gs://b/o'"):
        spec.output_dir("gs://b/o")
    ok = parse_spec(_spec(f"file://{tmp_path}/out"), base_dir=tmp_path)
    assert ok.output_dir() == tmp_path / "out"


def test_unknown_scheme_names_the_input(tmp_path):
    from pipeline.runner import make_plan

    spec = parse_spec(_spec("out", "docs: {paths: ['nosuchfs://bucket/*.jsonl']}"), base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"inputs\.docs\.paths: cannot list 'nosuchfs://bucket/\*\.jsonl'"):
        make_plan(spec, tmp_path / "out")


# ------------------------------------------------------------------------------------------ S3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer  # the `test` extra installs moto[server]

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def _s3(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                             endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)


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
        """Rows sorted by id; rows without an id are named ``<file>:<line>``, the file by its URI."""
        t = read_table(sorted((out / "ingest" / "data").glob("part-*.parquet")))
        ids = pa.array([i.replace("s3://corpus/in/", "local/") for i in t["id"].to_pylist()])
        return t.select(["text", "lang"]).append_column("id", ids).sort_by("id")

    got, want = rows(out_remote), rows(out_local)
    assert got.num_rows == want.num_rows > 500
    assert got.equals(want)
    rej = read_table(sorted((out_remote / "ingest" / "rejects").glob("part-*.parquet")))
    rej_local = read_table(sorted((out_local / "ingest" / "rejects").glob("part-*.parquet")))
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
