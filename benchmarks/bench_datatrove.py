"""tokenmill against HF datatrove: MinHash dedup and tokenization of the same corpus, same parameters, same cores.

datatrove is an optional, benchmark-only extra (``pip install datatrove``; it is not a runtime
dependency of tokenmill). Both sides start from the same JSONL.zst file and end with files on disk:

* **MinHash dedup**: word 5-gram shingles, 128 permutations as 16 bands x 8 rows, on both sides.
  datatrove's English word tokenizer needs spaCy, so both sides split words on whitespace
  (:class:`WhitespaceWords`, given to datatrove as a custom ``WordTokenizer``). datatrove runs its
  four steps (signatures, buckets, clusters, filter+write) with ``LocalPipelineExecutor`` on 2
  workers; tokenmill runs ``ingest -> dedup`` on a local 2-CPU Ray. Text normalisation differs
  (datatrove's ``simplify_text`` vs ours), so the removed counts are reported side by side.
* **Tokenization**: the same ``tokenizer.json`` (a BPE trained here with ``train_from_iterator`` on a
  sample), EOS after every document. datatrove: ``JsonlReader -> DocumentTokenizer`` (2 tasks, 2
  workers, writes .ds token files); tokenmill: ``ingest -> encode`` (Parquet with ``input_ids``).

Wall time covers the whole command on each side (reading, work, writing); peak memory is the peak
PSS of the child's whole process tree (pool workers, Ray's GCS, raylet and workers), sampled from /proc.
Run: ``python benchmarks/bench_datatrove.py [--quick] [--only minhash|tokenize] [--repeat N]`` (N runs of
each side, alternating; the median wall time counts).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import zstandard

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEBIAN, ROOT, print_table, run_child, save

QUICK_DOCS = 10_000
NUM_BUCKETS, ROWS, NGRAM = 16, 8, 5
WORKERS = 2

OURS_DEDUP = f"""
name: dt_dedup
seed: 1
output: out
inputs:
  docs: {{paths: [corpus.jsonl.zst]}}
stages:
  - {{name: ingest, type: ingest, inputs: [docs], shard_mb: 8}}
  - name: dedup
    type: dedup
    inputs: [ingest]
    exact: {{enabled: false}}
    near: {{threshold: 0.8, num_perm: {NUM_BUCKETS * ROWS}, bands: {NUM_BUCKETS}, rows: {ROWS},
            shingle: {{kind: word, n: {NGRAM}}}, verify: false}}
"""

OURS_ENCODE = """
name: dt_encode
seed: 1
output: out
inputs:
  docs: {paths: [corpus.jsonl.zst]}
  tok: {kind: artifact, path: tokenizer.json}
stages:
  - {name: ingest, type: ingest, inputs: [docs], shard_mb: 8}
  - {name: encode, type: encode, inputs: [ingest], tokenizer: tok, add_eos: true, keep_text: false}
"""

DT_DEDUP = """
import sys
sys.path.insert(0, {root!r})
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from benchmarks.bench_datatrove import WhitespaceWords, patch_xxhash
patch_xxhash()
cfg = MinhashConfig(n_grams={ngram}, num_buckets={buckets}, hashes_per_bucket={rows},
                    hash_config=HashConfig(precision=64))
if __name__ == "__main__":
    w = WhitespaceWords()
    LocalPipelineExecutor([JsonlReader("in"), MinhashDedupSignature(output_folder="sigs", config=cfg, language=w)],
                          tasks={workers}, workers={workers}, logging_dir="logs/1").run()
    LocalPipelineExecutor([MinhashDedupBuckets(input_folder="sigs", output_folder="buckets", config=cfg)],
                          tasks=cfg.num_buckets, workers={workers}, logging_dir="logs/2").run()
    LocalPipelineExecutor([MinhashDedupCluster(input_folder="buckets", output_folder="remove", config=cfg)],
                          tasks=1, logging_dir="logs/3").run()
    LocalPipelineExecutor([JsonlReader("in"), MinhashDedupFilter(input_folder="remove"), JsonlWriter("out")],
                          tasks={workers}, workers={workers}, logging_dir="logs/4").run()
"""

DT_TOKENIZE = """
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
if __name__ == "__main__":
    LocalPipelineExecutor([JsonlReader("in"), DocumentTokenizer(output_folder="tokens",
                           tokenizer_name_or_path="tokenizer.json", eos_token="<|endoftext|>", batch_size=1024)],
                          tasks={workers}, workers={workers}, logging_dir="logs/t").run()
"""

try:  # only needed when datatrove is installed
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceWords(WordTokenizer):
        """Whitespace word split: what tokenmill's word shingles use, and free of spaCy."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return text.splitlines()

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            raise NotImplementedError("not used by MinHash")
except ImportError:  # pragma: no cover - the benchmark reports the missing extra
    WhitespaceWords = None  # type: ignore[assignment,misc]


def patch_xxhash() -> None:
    """datatrove 0.10.1 passes str to xxhash, which xxhash 4 refuses; encode first (same hash values).

    Applied only in the datatrove child process of this benchmark, so datatrove runs its default
    (fast) xxhash path rather than the slower sha1 fallback.
    """
    import datatrove.utils.hashes.xxhash as dx
    import xxhash

    def xxhash64(data: str | bytes) -> int:
        return xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)

    def xxhash32(data: str | bytes) -> int:
        return xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)

    dx.xxhash64, dx.xxhash32 = xxhash64, xxhash32


def _run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run a child command; (wall seconds, peak PSS MB of its whole process tree)."""
    wall, mem = run_child(cmd, cwd)
    return wall, mem.peak_mb


def _train_tokenizer(lines: list[bytes], path: Path) -> None:
    import orjson
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=16000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((orjson.loads(x)["text"] for x in lines[:3000]), trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))


#: the tasks, by the name ``--only`` takes
TASKS = {"minhash": "minhash dedup", "tokenize": "tokenize"}


def run(quick: bool, only: list[str] | None = None, repeat: int = 1) -> list[dict[str, Any]]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("datatrove")
    except PackageNotFoundError as exc:  # a missing comparison must show as a failure, not an empty table
        raise RuntimeError('datatrove is not installed: pip install -e ".[bench]" (benchmark-only extra)') from exc
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(DEBIAN.read_bytes())).read()
    lines = raw.splitlines()
    if quick:
        lines = lines[:QUICK_DOCS]
    body = b"\n".join(lines) + b"\n"
    mb, docs = len(body) / 1e6, len(lines)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_datatrove_") as tmp:
        d = Path(tmp)
        (d / "in").mkdir()
        (d / "corpus.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(body))
        (d / "in" / "corpus.jsonl.zst").write_bytes((d / "corpus.jsonl.zst").read_bytes())
        wanted = {TASKS[t] for t in (only or TASKS)}
        if "tokenize" in wanted:
            _train_tokenizer(lines, d / "tokenizer.json")
        for name, ours_spec, dt_script in (
            ("minhash dedup", OURS_DEDUP, DT_DEDUP.format(root=str(ROOT), ngram=NGRAM, buckets=NUM_BUCKETS,
                                                          rows=ROWS, workers=WORKERS)),
            ("tokenize", OURS_ENCODE, DT_TOKENIZE.format(workers=WORKERS)),
        ):
            if name not in wanted:
                continue
            side = d / name.replace(" ", "_")
            walls: dict[str, list[float]] = {"dt": [], "tm": []}
            peaks: dict[str, list[float]] = {"dt": [], "tm": []}
            for i in range(repeat):  # alternating, each run in folders of its own
                tm, dt = side / f"tm{i}", side / f"dt{i}"
                tm.mkdir(parents=True)
                (dt / "in").mkdir(parents=True)
                for f in ("corpus.jsonl.zst", "tokenizer.json"):
                    if (d / f).exists():
                        os.link(d / f, tm / f)
                os.link(d / "corpus.jsonl.zst", dt / "in" / "corpus.jsonl.zst")
                if (d / "tokenizer.json").exists():
                    os.link(d / "tokenizer.json", dt / "tokenizer.json")
                (tm / "spec.yaml").write_text(ours_spec)
                (dt / "run.py").write_text(dt_script)
                for who, cmd, cwd in (("dt", [sys.executable, "run.py"], dt),
                                      ("tm", [sys.executable, "-m", "pipeline", "run", "spec.yaml", "--quiet"], tm)):
                    wall, peak = _run(cmd, cwd)
                    walls[who].append(wall)
                    peaks[who].append(peak)
            results = {who: (statistics.median(walls[who]), max(peaks[who])) for who in walls}
            extra_tm, extra_dt = _outcome(name, tm, dt)
            for who, label, extra in (("dt", f"datatrove {version('datatrove')}", extra_dt),
                                      ("tm", "tokenmill", extra_tm)):
                wall, peak = results[who]
                rows.append({"task": name, "impl": label, "docs": docs, "MB": round(mb, 1), "wall_s": round(wall, 1),
                             "MB/s": round(mb / wall, 2), "docs/s": round(docs / wall), **extra,
                             **({"tokens/s": round(extra["tokens"] / wall)} if "tokens" in extra else {}),
                             "peak_pss_MB": round(peak),
                             **({"wall_s_runs": " / ".join(f"{w:.1f}" for w in walls[who])} if repeat > 1 else {}),
                             "speedup_vs_datatrove": round(results["dt"][0] / wall, 2)})
    return rows


def _outcome(name: str, tm: Path, dt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """What each side produced (its last run): documents removed (dedup) or tokens written (tokenize)."""
    if name == "minhash dedup":
        m = json.loads((tm / "out" / "dedup" / "manifest.json").read_text())
        kept_dt = sum(1 for f in (dt / "out").rglob("*.jsonl*") for _ in _lines(f))
        ingest = json.loads((tm / "out" / "ingest" / "manifest.json").read_text())["rows_out"]
        return {"removed": sum(m["dropped"].values())}, {"removed": ingest - kept_dt}
    m = json.loads((tm / "out" / "encode" / "manifest.json").read_text())
    dt_tokens = sum(f.stat().st_size for f in (dt / "tokens").rglob("*.ds")) // 2
    return {"tokens": m["stats"]["tokens"]}, {"tokens": dt_tokens}


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        import gzip

        data = gzip.decompress(data)
    return data.splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"the first {QUICK_DOCS:,} documents")
    p.add_argument("--only", nargs="+", choices=sorted(TASKS), help="run only these tasks (default: all)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating; the table shows the "
                   "median wall time (and every run's), the largest peak")
    args = p.parse_args()
    rows = run(args.quick, args.only, args.repeat)
    print_table("tokenmill vs datatrove", rows)
    # a partial run is printed, not saved: the results file (and the README table) keep every task
    if not args.only or set(args.only) == set(TASKS):
        save("datatrove", rows)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
