"""Encode: any ``tokenizer.json`` over Arrow batches, ids stored in the smallest dtype that fits.

The tokenizer is loaded once per Ray actor (``setup``), then ``encode_batch`` runs per Arrow
batch. With as many actors as cores, Rust-side threads are switched off (``TOKENIZERS_PARALLELISM``
false in the workers): on 2 cores, 2 single-threaded actors beat 1 actor with 2 threads once
Parquet reading and writing are counted (notes/ray.md; ``benchmarks/bench_encode.py``).

Adds ``input_ids`` (``list<uint16>`` when every id of the vocabulary fits, else ``list<uint32>``)
and ``n_tokens``; optional BOS/EOS per document. Token counts per language go to the manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
from collections import Counter
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.context import StageContext
from pipeline.errors import TokenmillError
from pipeline.locations import Location
from pipeline.stage_api import BatchResult, MapStage, RefKind, StageConfig, register_stage

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<|eos|>")
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]", "<|bos|>")


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


def encode_texts(tokenizer: Any, texts: list[str], bos: int | None, eos: int | None,
                 dtype: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Encode a batch; returns the ``list<dtype>`` ids array and the per-document token counts."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode(texts, add_special_tokens=False)
    extra = int(bos is not None) + int(eos is not None)
    lengths = np.fromiter((len(e.ids) + extra for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    flat = np.empty(total, dtype=np.uint32)
    pos = 0
    for enc, n in zip(encodings, lengths, strict=True):
        if bos is not None:
            flat[pos] = bos
        body = enc.ids
        start = pos + (bos is not None)
        flat[start:start + len(body)] = body
        if eos is not None:
            flat[pos + n - 1] = eos
        pos += n
    offsets = np.zeros(len(encodings) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(flat.astype(np.uint16 if dtype == pa.uint16() else np.uint32, copy=False))
    return pa.ListArray.from_arrays(pa.array(offsets), values), lengths


@register_stage
class EncodeStage(MapStage[EncodeConfig]):
    """Tokenize documents with a tokenizer.json (actor pool, tokenizer loaded once per actor)."""

    config_model = EncodeConfig
    use_actors: ClassVar[bool] = True
    batch_rows: ClassVar[int] = 1024
    worker_cpus: ClassVar[float] = 1.0

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
        info = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "vocab_size": vocab, "bos_id": bos,
                "eos_id": eos, "dtype": str(ids_type(vocab))}
        ctx.manifest.stats["tokenizer"] = info
        return {**info, "path": path}  # the workers' copy: a Location (local path or URI)

    def setup(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.state = state
        # tokenizers reads this on every encode_batch call; Ray workers default to "false" (WORKER_ENV)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if self.config.rust_threads else "false"
        self.tokenizer = Tokenizer.from_str(Location.of(state["path"]).read_text())  # loaded once per actor
        self.dtype = ids_type(state["vocab_size"])
        self.batch_rows = self.config.batch_rows  # the runner streams parts in batches of this many rows

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [f for f in input_schema if f.name not in ("input_ids", "n_tokens", "loss_mask")]
        if not self.config.keep_text:
            fields = [f for f in fields if f.name != "text"]
        return pa.schema([*fields, pa.field("input_ids", pa.list_(self.dtype)), pa.field("n_tokens", pa.int32())])

    def process(self, batch: pa.Table) -> BatchResult:
        texts = batch.column("text").to_pylist()
        ids, lengths = encode_texts(self.tokenizer, texts, self.state["bos_id"], self.state["eos_id"], self.dtype)
        drop = [c for c in ("input_ids", "n_tokens", "loss_mask") if c in batch.column_names]
        if not self.config.keep_text:
            drop.append("text")
        out = batch.drop_columns(drop)
        out = out.append_column("input_ids", ids).append_column("n_tokens", pa.array(lengths.astype(np.int32)))
        langs = batch.column("lang").to_pylist() if "lang" in batch.column_names else [None] * len(texts)
        per_lang: Counter[str] = Counter()
        for lang, n in zip(langs, lengths.tolist(), strict=True):
            per_lang[lang or "und"] += n
        text_bytes = sum(len(t.encode("utf-8")) for t in texts)
        return BatchResult(out, stats={"tokens": int(lengths.sum()), "documents": len(texts),
                                       "text_bytes": text_bytes, "tokens_per_lang": dict(per_lang)})

    def finish(self, ctx: StageContext, shard_stats: Any) -> None:
        s = ctx.manifest.stats
        if s.get("tokens"):
            s["bytes_per_token"] = round(s["text_bytes"] / s["tokens"], 4)
            s["tokens_per_lang"] = dict(sorted(s.get("tokens_per_lang", {}).items(), key=lambda kv: -kv[1]))

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        tok = s.get("tokenizer", {})
        rows = [("tokens", f"{s.get('tokens', 0):,}"), ("bytes per token", str(s.get("bytes_per_token", ""))),
                ("tokenizer", f"{posixpath.basename(tok.get('path', '?'))} "
                              f"(vocab {tok.get('vocab_size')}, {tok.get('dtype')})")]
        rows += [(f"tokens [{k}]", f"{v:,}") for k, v in itertools.islice(s.get("tokens_per_lang", {}).items(), 8)]
        return rows
