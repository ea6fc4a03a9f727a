"""Encode: any ``tokenizer.json`` over Arrow batches, ids stored in the smallest dtype that fits.

The tokenizer is loaded once per Ray actor (``setup``), then ``encode_batch`` runs per Arrow
batch. With as many actors as cores, Rust-side threads are switched off (``TOKENIZERS_PARALLELISM``
false in the workers): on 2 cores, 2 single-threaded actors beat 1 actor with 2 threads once
Parquet reading and writing are counted (``benchmarks/bench_encode.py``).

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
import os
import posixpath
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
from pipeline.parquet_io import REJECT_SCHEMA, PartWriter, make_rejects
from pipeline.stage_api import BatchResult, MapStage, RefKind, ReportPart, StageConfig, register_stage
from stages.encode.engines import TextEncoder, choose_engine, load_encoder

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
    keep_text: bool = Field(default=True, description="Keep the text column beside the ids.")
    batch_rows: int = Field(default=1024, ge=1, description="Documents per encode_batch call.")
    engine: Literal["auto", "fast", "hf"] = Field(
        default="auto", description="auto: gigatoken when it supports the tokenizer.json, else HF tokenizers; "
        "fast: gigatoken or fail; hf: HF tokenizers only.")
    parity: ParityConfig = Field(default_factory=ParityConfig, description="Sampled id-for-id check against HF.")
    piece_bytes: int = Field(
        default=1_000_000, ge=1000, description="Documents above about this size are encoded in pieces cut at "
        "pre-token boundaries (same ids, bounded memory) where the pre-tokenizer allows it.")
    max_doc_bytes: int = Field(
        default=1 << 30, ge=1, description="Documents above this UTF-8 size are rejected (reason doc_too_large).")
    rust_threads: bool = Field(
        default=False,
        description="Let each actor use the tokenizers Rust thread pool (only useful with fewer actors than "
                    "cores, e.g. TOKENMILL_MAX_WORKERS=1); off by default so actors and threads do not "
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
    per document; vectorised (no Python loop per document)."""
    n = len(offsets) - 1
    body = np.diff(offsets)
    extra = int(bos is not None) + int(eos is not None)
    lengths = body + extra
    new_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    np_dtype = np.uint16 if dtype == pa.uint16() else np.uint32
    if extra:
        out = np.empty(int(new_offsets[-1]), dtype=np_dtype)
        doc_of_token = np.repeat(np.arange(n, dtype=np.int64), body)
        out[np.arange(len(flat), dtype=np.int64) + doc_of_token * extra + int(bos is not None)] = flat
        if bos is not None:
            out[new_offsets[:-1]] = bos
        if eos is not None:
            out[new_offsets[1:] - 1] = eos
    else:
        out = flat.astype(np_dtype, copy=False)
    offsets_arr = pa.array(new_offsets.astype(np.int32)) if new_offsets[-1] < 2**31 else pa.array(new_offsets)
    values = pa.array(out)
    if offsets_arr.type == pa.int64():
        return pa.LargeListArray.from_arrays(offsets_arr, values).cast(pa.list_(dtype)), lengths
    return pa.ListArray.from_arrays(offsets_arr, values), lengths


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


class ParityFallback(Exception):
    """A parity mismatch under ``on_mismatch: fallback``: the shard is re-encoded with HF."""

    def __init__(self, detail: str, stats: dict[str, Any]):
        super().__init__(detail)
        self.detail, self.stats = detail, stats


class EncodeJob(MapStageJob):
    """The map-stage job with shard hooks: the parity top-up counts per shard, and a fallback
    re-encodes the whole shard with HF (its partial output is discarded first)."""

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        stage = self.stage
        assert isinstance(stage, EncodeStage)
        stage.begin_shard()
        try:
            return super().run(task, out)
        except ParityFallback as fb:
            out.abort()
            out.data = PartWriter(out.data.final.parent, f"part-{task.key}")
            out.rejects = PartWriter(out.rejects.final.parent, f"part-{task.key}", schema=REJECT_SCHEMA,
                                     write_empty=False)
            stage.begin_shard(force_hf=True)
            result = super().run(task, out)
            s = result["stats"]
            s["parity_checked"] = fb.stats.get("parity_checked", 0)
            s["parity_mismatches"] = fb.stats.get("parity_mismatches", 0)
            s["parity_fallback_shards"] = 1
            s["parity_mismatch_examples"] = [f"shard {task.key}: {fb.detail}"[:600]]
            return result
        finally:
            stage.begin_shard()


@register_stage
class EncodeStage(MapStage[EncodeConfig]):
    """Tokenize documents with a tokenizer.json (actor pool, tokenizer loaded once per actor)."""

    config_model = EncodeConfig
    use_actors: ClassVar[bool] = True
    job_class: ClassVar[type[MapStageJob]] = EncodeJob
    batch_rows: ClassVar[int] = 1024
    worker_cpus: ClassVar[float] = 1.0

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return ReportPart(tokens_out=manifest.get("stats", {}).get("tokens"))

    def prepare(self, ctx: StageContext) -> dict[str, Any]:
        from tokenizers import Tokenizer

        path = ctx.artifact("tokenizer")
        if not path.is_file():
            raise TokenmillError(f"tokenizer file not found: {path}")
        raw = path.read_bytes()
        tok = Tokenizer.from_str(raw.decode("utf-8"))
        cfg = self.config
        vocab = tok.get_vocab_size(with_added_tokens=True)
        bos = find_special(tok, cfg.bos_token, BOS_CANDIDATES, "bos") if cfg.add_bos else None
        eos = find_special(tok, cfg.eos_token, EOS_CANDIDATES, "eos") if cfg.add_eos else None
        _, engine, reason = choose_engine(raw.decode("utf-8"), cfg.engine)  # fails here when fast is impossible
        info = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "vocab_size": vocab, "bos_id": bos,
                "eos_id": eos, "dtype": str(ids_type(vocab))}
        ctx.manifest.stats["tokenizer"] = info
        ctx.manifest.stats["engine"] = {"requested": cfg.engine, "engine": engine, "reason": reason}
        if ctx.reporter is not None:  # the run's output (quiet runs keep it in the manifest only)
            ctx.reporter.message(f"[{ctx.name}] encode engine: {engine} ({reason})")
        return {**info, "path": path}  # the workers' copy: a Location (local path or URI)

    def setup(self, state: dict[str, Any]) -> None:
        self.state = state
        # tokenizers reads this on every encode_batch call; Ray workers default to "false" (WORKER_ENV)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if self.config.rust_threads else "false"
        cfg = self.config
        self.encoder = load_encoder(Location.of(state["path"]).read_text(), cfg.engine,  # once per actor
                                    threads=cfg.rust_threads, piece_bytes=cfg.piece_bytes)
        self.tokenizer = self.encoder.reference
        self.dtype = ids_type(state["vocab_size"])
        self.begin_shard()
        self.batch_rows = self.config.batch_rows  # the runner streams parts in batches of this many rows

    def begin_shard(self, force_hf: bool = False) -> None:
        """Called by :class:`EncodeJob` before each shard: the ``min_docs`` top-up counts per shard."""
        self.shard_checked = 0
        self.force_hf = force_hf

    def parity_sample(self, ids: list[str]) -> list[int]:
        """Rows to re-encode with HF: hash of (salt, id) under the rate, topped up with the shard's
        first documents until ``min_docs`` of the shard are checked -- the same rows whatever the
        worker count or engine."""
        p = self.config.parity
        if p.rate >= 1:
            return list(range(len(ids)))
        threshold = int(p.rate * 2**64)
        chosen = [i for i, d in enumerate(ids) if xxhash.xxh64_intdigest(PARITY_SALT + d.encode()) < threshold]
        missing = p.min_docs - getattr(self, "shard_checked", 0) - len(chosen)
        if missing > 0:
            taken = set(chosen)
            chosen = sorted(taken | set(itertools.islice((i for i in range(len(ids)) if i not in taken), missing)))
        self.shard_checked = getattr(self, "shard_checked", 0) + len(chosen)
        return chosen

    def check_parity(self, ids: list[str], column: pa.Array, flat: np.ndarray, offsets: np.ndarray,
                     stats: dict[str, Any]) -> None:
        """Re-encode the sample with HF and compare; a mismatch raises (``ParityFallback`` with
        ``on_mismatch: fallback``, which :class:`EncodeJob` answers by re-encoding the shard with HF)."""
        rows = self.parity_sample(ids)
        ref = self.encoder.encode_arrays(column.take(pa.array(rows, pa.int64())).to_pylist(), hf=True)
        stats["parity_checked"] = stats.get("parity_checked", 0) + len(rows)
        bad = [(i, r) for i, r in zip(rows, ref, strict=True) if not np.array_equal(flat[offsets[i]:offsets[i + 1]], r)]
        stats["parity_mismatches"] = stats.get("parity_mismatches", 0) + len(bad)
        if not bad:
            return
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
        flat, offsets = self.encoder.encode_column(column, nbytes, hf=force_hf)
        if self.encoder.engine == "fast" and not force_hf and len(column):
            doc_ids = (batch.column("id").cast(pa.string()).to_pylist() if "id" in batch.column_names
                       else [str(i) for i in range(len(column))])
            self.check_parity(doc_ids, column, flat, offsets, stats)
        ids, lengths = frame(flat, offsets, self.state["bos_id"], self.state["eos_id"], self.dtype)
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
        self.encoder.stats.update(split_documents=0, pieces=0)
        return BatchResult(out, rejected=rejected, stats={
            "tokens": int(lengths.sum()), "documents": len(column), "text_bytes": int(nbytes.sum()),
            "tokens_per_lang": per_lang, **stats, **{k: v for k, v in split.items() if v}})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [f for f in input_schema if f.name not in ("input_ids", "n_tokens", "loss_mask")]
        if not self.config.keep_text:
            fields = [f for f in fields if f.name != "text"]
        return pa.schema([*fields, pa.field("input_ids", pa.list_(self.dtype)), pa.field("n_tokens", pa.int32())])

    def finish(self, ctx: StageContext, shard_stats: Any) -> None:
        s = ctx.manifest.stats
        s.setdefault("parity_checked", 0)
        s.setdefault("parity_mismatches", 0)
        if "parity_mismatch_examples" in s:
            s["parity_mismatch_examples"] = s["parity_mismatch_examples"][:5]
        if s.get("tokens"):
            s["bytes_per_token"] = round(s["text_bytes"] / s["tokens"], 4)
            s["tokens_per_lang"] = dict(sorted(s.get("tokens_per_lang", {}).items(), key=lambda kv: -kv[1]))

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
