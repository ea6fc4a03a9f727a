"""Encode: any ``tokenizer.json`` over Arrow batches, ids stored in the smallest dtype that fits.

The tokenizer is loaded once per Ray worker process (``setup``; the stage's shards run as plain
tasks whose workers keep the set-up stage, ``reuse_setup``: no actor start), then ``encode_batch``
runs per Arrow batch. With as many workers as cores, Rust-side threads are switched off
(``TOKENIZERS_PARALLELISM`` false during the stage's shards): on 2 cores, 2 single-threaded workers
beat 1 worker with 2 threads once Parquet reading and writing are counted
(``benchmarks/bench_encode.py``).

Engine (``engine``, :mod:`stages.encode.engines`): ``auto`` runs gigatoken when it supports the
``tokenizer.json`` (10-17x HF on byte-level BPE), HF ``tokenizers`` otherwise; the manifest and
``pipeline inspect`` say which ran and why. Parity is checked, not assumed: in every batch a
deterministic sample of documents (``xxh64("encode:parity" + id)``, at least ``parity.rate`` and
``parity.min_docs``) is re-encoded with HF and compared id for id; a mismatch fails the stage with
the document id, the first differing position and both id windows (or, with ``on_mismatch:
fallback``, the batch is re-encoded with HF and the mismatch recorded). Documents above
``piece_bytes`` are encoded in pieces cut at pre-token boundaries (same ids, bounded memory);
documents above ``max_doc_bytes`` are rejected with their size.

Adds ``input_ids`` (``list<uint16>`` when every id of the vocabulary fits, else ``list<uint32>``)
and ``n_tokens``; optional BOS/EOS per document. Token counts per language go to the manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import posixpath
import time
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from pipeline.context import MapStageJob, StageContext
from pipeline.errors import TokenmillError
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import REJECT_SCHEMA, PartWriter, bulk_options, make_rejects, read_one, read_schema
from pipeline.stage_api import BatchResult, MapStage, RefKind, ReportPart, StageConfig, register_stage
from stages.encode.engines import TextEncoder, choose_engine, hf_threads, load_encoder

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<|eos|>")
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]", "<|bos|>")


PARITY_SALT = b"encode:parity"


class ParityConfig(BaseModel):
    """How the fast engine's ids are checked against HF ``tokenizers`` (the reference)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float = Field(default=0.01, ge=0, le=1, description="Share of documents re-encoded with HF.")
    min_docs: int = Field(default=16, ge=0, description="At least this many documents per batch (so per shard).")
    on_mismatch: Literal["fail", "fallback"] = Field(
        default="fail", description="fail: stop with the document id and both id windows; fallback: re-encode "
        "the batch with HF and record the mismatch.")


class EncodeConfig(StageConfig):
    type: Literal["encode"]
    tokenizer: Annotated[str, RefKind("artifact")] = Field(
        description="A train_tokenizer stage, or an input of kind: artifact pointing at a tokenizer.json."
    )
    add_bos: bool = Field(default=False, description="Prepend the BOS token to every document.")
    add_eos: bool = Field(default=True, description="Append the EOS token (document boundary for trainers).")
    bos_token: str | None = Field(default=None, description="BOS token string (default: found in the vocabulary).")
    eos_token: str | None = Field(default=None, description="EOS token string (default: found in the vocabulary).")
    keep_text: bool = Field(
        default=False, description="Also write the text column beside the ids. Off by default: the text is "
        "already in the input stage's output (join on id), and a second copy doubles the stage's write cost "
        "and the disk it takes (pack, clean and the token writers read only the ids).")
    batch_rows: int = Field(default=8192, ge=1, description="Documents per encode_batch call (and per output row "
                            "group); a batch is never larger than its input part.")
    engine: Literal["auto", "fast", "hf"] = Field(
        default="auto", description="auto: gigatoken when it supports the tokenizer.json, else HF tokenizers; "
        "fast: gigatoken or fail; hf: HF tokenizers only.")
    parity: ParityConfig = Field(default_factory=ParityConfig, description="Sampled id-for-id check against HF.")
    piece_bytes: int = Field(
        default=1_000_000, ge=1000, description="Documents above about this size are encoded in pieces cut at "
        "pre-token boundaries (same ids, bounded memory) where the pre-tokenizer allows it.")
    fast_cache_mb: int = Field(
        default=1024, ge=64, description="gigatoken caches every distinct pre-token it has encoded and never "
        "trims the cache (about 80 MB per million distinct words); a worker that has grown by this many MB "
        "since it loaded the engine reloads it with an empty cache (same ids), so a crawl's vocabulary "
        "cannot grow a worker without bound.")
    max_doc_bytes: int = Field(
        default=1 << 30, ge=1, description="Documents above this UTF-8 size are rejected (reason doc_too_large).")
    rust_threads: bool = Field(
        default=False,
        description="Let each worker use the tokenizers Rust thread pool (only useful with fewer workers than "
                    "cores, e.g. TOKENMILL_MAX_WORKERS=1); off by default so workers and threads do not "
                    "oversubscribe the cores.",
    )


def ids_type(vocab_size: int) -> pa.DataType:
    """uint16 only when every id of the vocabulary fits."""
    return pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()


def find_special(tokenizer: Any, given: str | None, candidates: tuple[str, ...], what: str) -> int:
    if given is not None:
        tid = tokenizer.token_to_id(given)
        if tid is None:
            raise TokenmillError(f"{what} token {given!r} is not in the tokenizer's vocabulary")
        return tid
    for cand in candidates:
        tid = tokenizer.token_to_id(cand)
        if tid is not None:
            return tid
    raise TokenmillError(f"no {what} token found in the tokenizer (tried {', '.join(candidates)}); set {what}_token")


def frame(flat: np.ndarray, offsets: np.ndarray, bos: int | None, eos: int | None,
          dtype: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Ids of a batch (flat ids + offsets) framed with BOS/EOS as ``list<dtype>``, and the counts
    per document; vectorised: the specials' slots are marked in a boolean mask and the body ids
    fill the rest in one masked assignment (10x faster than scattering through an index array)."""
    n = len(offsets) - 1
    extra = int(bos is not None) + int(eos is not None)
    new_offsets = offsets.astype(np.int64, copy=False) + np.arange(n + 1, dtype=np.int64) * extra
    lengths = np.diff(new_offsets)
    np_dtype = np.uint16 if dtype == pa.uint16() else np.uint32
    if extra:
        out = np.empty(int(new_offsets[-1]), dtype=np_dtype)
        special = np.zeros(len(out), dtype=bool)
        if bos is not None:
            out[new_offsets[:-1]] = bos
            special[new_offsets[:-1]] = True
        if eos is not None:
            out[new_offsets[1:] - 1] = eos
            special[new_offsets[1:] - 1] = True
        out[~special] = flat
    else:
        out = flat.astype(np_dtype, copy=False)
    values = pa.array(out)
    if new_offsets[-1] >= 2**31:
        return pa.LargeListArray.from_arrays(pa.array(new_offsets), values).cast(pa.list_(dtype)), lengths
    return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), values), lengths


def encode_texts(tokenizer: Any, texts: list[str], bos: int | None, eos: int | None,
                 dtype: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Encode a batch; returns the ``list<dtype>`` ids array and the per-document token counts.
    ``tokenizer``: a :class:`~stages.encode.engines.TextEncoder` or a ``tokenizers.Tokenizer``."""
    if isinstance(tokenizer, TextEncoder):
        bodies = tokenizer.encode_arrays(texts)
    else:
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        bodies = [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]
    offsets = np.zeros(len(bodies) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in bodies], out=offsets[1:])
    flat = np.concatenate(bodies).astype(np.uint32) if bodies else np.empty(0, np.uint32)
    return frame(flat, offsets, bos, eos, dtype)


#: the parity sample of a shard that is checked whole (an empty string array built from buffers: any
#: ``pa.array`` call imports pandas, 0.3 s of every run's start when done at import time)
ALL = pa.StringArray.from_buffers(0, pa.py_buffer(np.zeros(1, np.int32)), pa.py_buffer(b""))


def parity_sample(ids: pa.Array, parity: ParityConfig) -> pa.Array:
    """The ids of a shard's documents to re-encode with HF: the ``max(ceil(rate x n), min_docs)``
    documents of smallest ``xxh64("encode:parity" + id)`` (every copy of a chosen id), or
    :data:`ALL`. An unbiased sample of exactly the required size, drawn from the whole shard, so it
    neither depends on batch size, worker count or engine, nor over-samples a shard of few long
    documents (a hash threshold topped up with the first documents did both)."""
    n = len(ids)
    k = min(n, max(math.ceil(parity.rate * n), parity.min_docs))
    if k >= n:
        return ALL
    strings = ids.cast(pa.string()).to_pylist()
    hashes = np.fromiter((xxhash.xxh64_intdigest(PARITY_SALT + (d or "").encode()) for d in strings),
                         dtype=np.uint64, count=n)
    chosen = np.argpartition(hashes, k - 1)[:k] if k else np.empty(0, np.int64)
    return pa.array(sorted({strings[i] or "" for i in chosen.tolist()}), pa.string())


class ParityFallback(Exception):
    """A parity mismatch under ``on_mismatch: fallback``: the shard is re-encoded with HF."""

    def __init__(self, detail: str, stats: dict[str, Any]):
        super().__init__(detail)
        self.detail, self.stats = detail, stats


class PhaseClock:
    """Seconds per named phase, lap by lap (the stage's own profile, summed into the manifest)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


#: the two bulk columns are written for speed: no dictionary encoding or min/max statistics (nobody
#: filters on them), zstd level 1, and the ids (uint16/uint32, stored as Parquet INT32) byte-stream-split
#: so zstd sees their all-zero high bytes as runs. Measured on the Debian corpus's 111,010 documents
#: (CPU seconds, one process): ids 1.80 s / 35.9 MB with the defaults -> 0.59 s / 36.9 MB; text 1.19 s
#: / 29.0 MB -> 0.67 s / 35.9 MB; the gigatoken encode itself is ~4 s. Other columns keep the defaults.
BULK_COLUMNS = ("text", "input_ids")


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet writer options for the stage's output part (see :data:`BULK_COLUMNS`)."""
    return bulk_options(schema, BULK_COLUMNS)


def idle_in_span(spans: list[list[float]]) -> dict[str, float]:
    """Worker-seconds inside the shards' span with no shard running, per cause: ``start`` (a worker
    began its first shard after the first worker did), ``between`` (from one shard's end to the
    same worker's next shard: the driver's round trip and the task's start), ``end`` (a worker
    finished its last shard before the last worker did)."""
    first, last = min(sp[1] for sp in spans), max(sp[2] for sp in spans)
    idle = {"start": 0.0, "between": 0.0, "end": 0.0}
    for pid in {sp[0] for sp in spans}:
        mine = sorted((sp[1], sp[2]) for sp in spans if sp[0] == pid)
        idle["start"] += mine[0][0] - first
        idle["between"] += sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(mine))
        idle["end"] += last - mine[-1][1]
    return {k: round(v, 3) for k, v in idle.items()}


class EncodeJob(MapStageJob):
    """The map-stage job with shard hooks: the parity top-up counts per shard, a fallback re-encodes
    the whole shard with HF (its partial output is discarded first), the output's writer options,
    and the shard's own timing (worker set-up, wall span, process id) for the stage's profile."""

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        started = time.time()
        self.setup()
        stage = self.stage
        assert isinstance(stage, EncodeStage)
        path = Location.of(task.payload)
        schema = read_schema(path)
        # the shard's ids (a small column) first: the parity sample is drawn from the whole shard
        ids = read_one(path, columns=["id"]).column("id").combine_chunks() if "id" in schema.names else None
        stage.begin_shard(ids=ids)
        # tokenizers reads TOKENIZERS_PARALLELISM on every encode_batch call; the worker process outlives
        # the shard (later shards and stages run in it), so the setting is the shard's and is put back after it
        with hf_threads(stage.config.rust_threads):
            try:
                result = self._run(task, out, schema)
            except ParityFallback as fb:
                out.abort()
                out.data = PartWriter(out.data.final.parent, f"part-{task.key}", tally=True)
                out.rejects = PartWriter(out.rejects.final.parent, f"part-{task.key}", schema=REJECT_SCHEMA,
                                         write_empty=False)
                stage.begin_shard(force_hf=True)
                result = self._run(task, out, schema)
                s = result["stats"]
                s["parity_checked"] = fb.stats.get("parity_checked", 0)
                s["parity_mismatches"] = fb.stats.get("parity_mismatches", 0)
                s["parity_fallback_shards"] = 1
                s["parity_mismatch_examples"] = [f"shard {task.key}: {fb.detail}"[:600]]
            finally:
                stage.begin_shard()
        ended = time.time()
        engine = "hf" if result["stats"].get("parity_fallback_shards") else stage.encoder.engine
        result["stats"]["engine_shards"] = {engine: 1}
        result["stats"]["engine_chosen"] = [stage.encoder.engine, stage.encoder.reason]
        seconds = result["stats"].setdefault("seconds", {})
        setup_s, stage.setup_s = getattr(stage, "setup_s", 0.0), 0.0  # counted on the worker's first shard
        seconds["read_write"] = max(0.0, ended - started - sum(seconds.values()))  # Parquet in and out, the rest
        seconds["worker_setup"] = setup_s
        result["stats"]["shard_spans"] = [[os.getpid(), started, ended]]
        return result

    def _run(self, task: ShardTask, out: ShardOutput, schema: pa.Schema) -> dict[str, Any]:
        assert self.stage is not None
        out.data.options.update(write_options(self.stage.output_schema(schema)))
        return super().run(task, out)


@register_stage
class EncodeStage(MapStage[EncodeConfig]):
    """Tokenize documents with a tokenizer.json (tokenizer loaded once per worker process)."""

    config_model = EncodeConfig
    reuse_setup: ClassVar[bool] = True  # the tokenizer loads once per worker process
    job_class: ClassVar[type[MapStageJob]] = EncodeJob
    batch_rows: ClassVar[int] = 8192
    worker_cpus: ClassVar[float] = 1.0
    worker_imports: ClassVar[tuple[str, ...]] = ("awkward", "tokenizers", "gigatoken")  # in setup

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return ReportPart(tokens_out=manifest.get("stats", {}).get("tokens"))

    def prepare(self, ctx: StageContext) -> dict[str, Any]:
        from tokenizers import Tokenizer

        started = time.perf_counter()
        path = ctx.artifact("tokenizer")
        if not path.is_file():
            raise TokenmillError(f"tokenizer file not found: {path}")
        raw = path.read_bytes()
        tok = Tokenizer.from_str(raw.decode("utf-8"))
        cfg = self.config
        vocab = tok.get_vocab_size(with_added_tokens=True)
        bos = find_special(tok, cfg.bos_token, BOS_CANDIDATES, "bos") if cfg.add_bos else None
        eos = find_special(tok, cfg.eos_token, EOS_CANDIDATES, "eos") if cfg.add_eos else None
        if cfg.engine == "fast":  # fails here, before any worker starts, when gigatoken cannot load it
            choose_engine(raw.decode("utf-8"), "fast")
        # with engine auto the workers choose (load_encoder) and their shards report it (finish): the
        # driver loading gigatoken as well only to learn the same answer cost every run ~0.08 s before
        # the first shard could start
        info = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "vocab_size": vocab, "bos_id": bos,
                "eos_id": eos, "dtype": str(ids_type(vocab))}
        ctx.manifest.stats["tokenizer"] = info
        self.prepared_at = time.time()
        self.prepare_s = time.perf_counter() - started
        return {**info, "path": path}  # the workers' copy: a Location (local path or URI)

    def setup(self, state: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.state = state
        cfg = self.config
        self.encoder = load_encoder(Location.of(state["path"]).read_text(), cfg.engine,  # once per worker process
                                    threads=cfg.rust_threads, piece_bytes=cfg.piece_bytes,
                                    cache_mb=cfg.fast_cache_mb)
        self.tokenizer = self.encoder.reference
        self.dtype = ids_type(state["vocab_size"])
        self.begin_shard()
        self.batch_rows = self.config.batch_rows  # the runner streams parts in batches of this many rows
        self.setup_s = time.perf_counter() - started  # once per worker; EncodeJob reports it with its first shard

    def begin_shard(self, force_hf: bool = False, ids: pa.Array | None = None) -> None:
        """Called by :class:`EncodeJob` before each shard with the ids of all its documents: the
        parity sample is drawn from the whole shard (:func:`parity_sample`). Without ids (a batch
        processed on its own) each batch is sampled as if it were a shard."""
        self.force_hf = force_hf
        self.shard_sample = None if ids is None else parity_sample(ids, self.config.parity)

    def check_parity(self, batch: pa.Table, column: pa.Array, flat: np.ndarray, offsets: np.ndarray,
                     stats: dict[str, Any]) -> None:
        """Re-encode the sample with HF and compare; a mismatch raises (``ParityFallback`` with
        ``on_mismatch: fallback``, which :class:`EncodeJob` answers by re-encoding the shard with HF)."""
        ids = (batch.column("id").combine_chunks().cast(pa.string()) if "id" in batch.column_names
               else pa.array([str(i) for i in range(batch.num_rows)]))
        sample = getattr(self, "shard_sample", None)
        if sample is None or "id" not in batch.column_names:
            sample = parity_sample(ids, self.config.parity)
        rows = (np.arange(len(ids)) if sample is ALL else
                np.flatnonzero(pc.is_in(ids, value_set=sample).to_numpy(zero_copy_only=False)))
        ref = self.encoder.encode_arrays(column.take(pa.array(rows, pa.int64())).to_pylist(), hf=True)
        stats["parity_checked"] = stats.get("parity_checked", 0) + len(rows)
        bad = [(int(i), r) for i, r in zip(rows, ref, strict=True)
               if not np.array_equal(flat[offsets[i]:offsets[i + 1]], r)]
        stats["parity_mismatches"] = stats.get("parity_mismatches", 0) + len(bad)
        if not bad:
            return
        ids = ids.to_pylist()
        i, r = bad[0]
        got = flat[offsets[i]:offsets[i + 1]]
        n = min(len(got), len(r))
        neq = np.nonzero(got[:n] != r[:n])[0]
        diff = int(neq[0]) if len(neq) else n
        lo = max(0, diff - 4)
        detail = (f"document {ids[i]!r}: fast engine ids differ from HF tokenizers at token {diff} "
                  f"(fast {len(got)} tokens, HF {len(r)}): fast[{lo}:{diff + 8}]={got[lo:diff + 8].tolist()} "
                  f"hf[{lo}:{diff + 8}]={r[lo:diff + 8].tolist()}")
        if self.config.parity.on_mismatch == "fail":
            raise TokenmillError(f"encode parity check failed: {detail} (set parity.on_mismatch: fallback or "
                                 "engine: hf)")
        raise ParityFallback(detail, stats)

    def process(self, batch: pa.Table) -> BatchResult:
        clock = PhaseClock()
        column = batch.column("text").combine_chunks()
        nbytes = pc.binary_length(column).to_numpy(zero_copy_only=False)
        rejected = None
        if len(nbytes) and int(nbytes.max()) > self.config.max_doc_bytes:
            too_big = pa.array(nbytes > self.config.max_doc_bytes)
            big = batch.filter(too_big)
            ids = big.column("id").to_pylist() if "id" in big.column_names else [None] * big.num_rows
            sizes = nbytes[nbytes > self.config.max_doc_bytes].tolist()
            limit = self.config.max_doc_bytes
            heads = pc.utf8_slice_codeunits(big.column("text"), 0, 2048).to_pylist()  # not the whole text
            rejected = make_rejects([
                {"id": i, "reason": "doc_too_large", "detail": f"{n:,} bytes > max_doc_bytes {limit:,}", "raw": h}
                for i, n, h in zip(ids, sizes, heads, strict=True)])
            batch = batch.filter(pc.invert(too_big))
            column = batch.column("text").combine_chunks()
            nbytes = nbytes[nbytes <= self.config.max_doc_bytes]
        stats: dict[str, Any] = {}
        force_hf = getattr(self, "force_hf", False)
        clock.lap("prepare_batch")
        flat, offsets = self.encoder.encode_column(column, hf=force_hf)
        clock.lap("encode")
        if self.encoder.engine == "fast" and not force_hf and len(column):
            self.check_parity(batch, column, flat, offsets, stats)
            clock.lap("parity")
        ids, lengths = frame(flat, offsets, self.state["bos_id"], self.state["eos_id"], self.dtype)
        clock.lap("frame")
        drop = [c for c in ("input_ids", "n_tokens", "loss_mask") if c in batch.column_names]
        if not self.config.keep_text:
            drop.append("text")
        out = batch.drop_columns(drop)
        out = out.append_column("input_ids", ids).append_column("n_tokens", pa.array(lengths.astype(np.int32)))
        per_lang: dict[str, int] = {}
        if len(lengths):
            if "lang" in batch.column_names:
                langs = pc.fill_null(batch.column("lang").cast(pa.string()), "und").combine_chunks().dictionary_encode()
                names, codes = langs.dictionary.to_pylist(), langs.indices.to_numpy(zero_copy_only=False)
            else:
                names, codes = ["und"], np.zeros(len(lengths), dtype=np.int64)
            sums = np.bincount(codes, weights=lengths, minlength=len(names))  # no Python loop per document
            for name, total in zip(names, sums.tolist(), strict=True):
                if total:
                    key = name or "und"
                    per_lang[key] = per_lang.get(key, 0) + int(total)
        split = dict(self.encoder.stats)
        self.encoder.stats.update(split_documents=0, pieces=0, cache_reloads=0)
        clock.lap("columns")
        return BatchResult(out, rejected=rejected, stats={
            "tokens": int(lengths.sum()), "documents": len(column), "text_bytes": int(nbytes.sum()),
            "tokens_per_lang": per_lang, **stats, **{k: v for k, v in split.items() if v},
            "seconds": clock.seconds})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [f for f in input_schema if f.name not in ("input_ids", "n_tokens", "loss_mask")]
        if not self.config.keep_text:
            fields = [f for f in fields if f.name != "text"]
        return pa.schema([*fields, pa.field("input_ids", pa.list_(self.dtype)), pa.field("n_tokens", pa.int32())])

    def finish(self, ctx: StageContext, shard_stats: Any) -> None:
        s = ctx.manifest.stats
        self._record_engine(ctx)
        s.setdefault("parity_checked", 0)
        s.setdefault("parity_mismatches", 0)
        if "parity_mismatch_examples" in s:
            s["parity_mismatch_examples"] = s["parity_mismatch_examples"][:5]
        if s.get("tokens"):
            s["bytes_per_token"] = round(s["text_bytes"] / s["tokens"], 4)
            s["tokens_per_lang"] = dict(sorted(s.get("tokens_per_lang", {}).items(), key=lambda kv: -kv[1]))
        s["seconds"] = self.profile(s.pop("seconds", {}), s.pop("shard_spans", []))

    def _record_engine(self, ctx: StageContext) -> None:
        """Which engine encoded, and why, into the manifest and the run's output: as the workers'
        shards reported it (``engine_shards``: shards per engine, a parity fallback's shard under hf),
        or, when no shard ran (an empty input), as the driver decides it."""
        s = ctx.manifest.stats
        shards: dict[str, int] = s.pop("engine_shards", {})
        chosen, reason = s.pop("engine_chosen", [None, None])[:2]  # lists concatenate: the first shard's
        if chosen is None:
            _, chosen, reason = choose_engine(ctx.artifact("tokenizer").read_text(), self.config.engine)
        s["engine"] = {"requested": self.config.engine, "engine": chosen, "reason": reason, "shards": shards}
        if ctx.reporter is not None:  # the run's output (quiet runs keep it in the manifest only)
            ctx.reporter.message(f"[{ctx.name}] encode engine: {chosen} ({reason})")

    def profile(self, worker: dict[str, float], spans: list[list[float]]) -> dict[str, Any]:
        """Where the stage's wall time went: on the driver (``prepare``; ``to_first_shard``: Ray Data
        start and set-up until a worker began its first shard; ``after_last_shard``),
        the span in which shards ran, and CPU-side seconds summed over workers per phase (``encode``
        is the engine itself; ``read_write`` the Parquet read, write and the engine's per-shard
        bookkeeping). Span figures come from the workers' clocks: on one host exact, on a cluster
        as good as its clock sync. Shards resumed from an earlier run are not in the spans."""
        now = time.time()
        out: dict[str, Any] = {"prepare": round(getattr(self, "prepare_s", 0.0), 3)}
        prepared = getattr(self, "prepared_at", None)
        live = [sp for sp in spans if prepared is None or sp[1] >= prepared]  # this run's shards only
        if live and prepared is not None:
            first, last = min(sp[1] for sp in live), max(sp[2] for sp in live)
            out |= {"to_first_shard": round(first - prepared, 3), "shards_span": round(last - first, 3),
                    "after_last_shard": round(now - last, 3), "workers": len({sp[0] for sp in live}),
                    "idle_in_span": idle_in_span(live),
                    # when each worker began its first shard: how long the pool took to fill
                    "worker_first_shard": sorted(round(min(sp[1] for sp in live if sp[0] == pid) - prepared, 3)
                                                 for pid in {sp[0] for sp in live})}
        out["worker"] = {k: round(v, 3) for k, v in sorted(worker.items(), key=lambda kv: -kv[1])}
        return out

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        tok = s.get("tokenizer", {})
        rows = [("tokens", f"{s.get('tokens', 0):,}"), ("bytes per token", str(s.get("bytes_per_token", ""))),
                ("tokenizer", f"{posixpath.basename(tok.get('path', '?'))} "
                              f"(vocab {tok.get('vocab_size')}, {tok.get('dtype')})")]
        eng = s.get("engine", {})
        if eng:
            rows.append(("engine", f"{eng.get('engine')} ({eng.get('reason')})"))
            rows.append(("parity", f"{s.get('parity_checked', 0):,} docs checked against HF, "
                                   f"{s.get('parity_mismatches', 0)} mismatches"))
        rows += [(f"tokens [{k}]", f"{v:,}") for k, v in itertools.islice(s.get("tokens_per_lang", {}).items(), 8)]
        return rows
