"""Pack: encoded documents to fixed-length training sequences, and the token files trainers read.

Methods (see :mod:`stages.pack.packing`): ``concat`` (concatenate and cut, no padding, cuts documents)
and ``best_fit`` (Ding et al., ICML 2024: split only documents longer than ``seq_len``, then
best-fit decreasing inside a bounded buffer; padding fills the rest). Every packed sequence
carries ``doc_lens``, ``cu_seqlens`` (FlashAttention varlen), ``position_ids`` restarting at each
document (HF ``DataCollatorWithFlattening``) and a ``loss_mask`` (0 on padding, and the token
cleaning mask when the input has one).

Writers: the stage's dataset is the packed Parquet; ``numpy`` adds the fixed-shape arrays;
``megatron`` and ``olmo`` are written from the *documents* (one per sequence, EOS included),
because those trainers build samples across documents themselves.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from pipeline.context import StageContext
from pipeline.errors import TokenmillError
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.manifest import read_manifest, write_json_atomic
from pipeline.parquet_io import iter_batches, read_schema
from pipeline.stage_api import ReportPart, Stage, StageConfig, register_stage
from stages.pack.formats import (
    MEGATRON_MASK_DIR,
    OLMO_MASK_DIR,
    MegatronDataset,
    MegatronWriter,
    OlmoWriter,
    PackedNumpyWriter,
    megatron_dtype,
)
from stages.pack.packing import Segment, best_fit_decreasing, concat_chunk, split_long
from stages.pack.report import report_part

DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
---
# {name}: packed sequences (tokenmill)

`data/` holds the packed sequences as Parquet; `numpy/`, `megatron/`, `megatron_masks/`, `olmo/`,
`olmo_masks/` hold the same tokens for trainers, `tokenizer/` the tokenizer (see `metadata.json`).
"""


class PackConfig(StageConfig):
    type: Literal["pack"]
    method: Literal["concat", "best_fit"] = "best_fit"
    seq_len: int = Field(default=2048, ge=8, description="Tokens per packed sequence.")
    labels_shift: bool = Field(
        default=False, description="concat only: windows of seq_len + 1 tokens every seq_len (shifted labels)."
    )
    buffer_docs: int = Field(default=20000, ge=1, description="best_fit: documents packed together (streaming).")
    long_docs: Literal["split", "truncate"] = Field(
        default="split", description="best_fit: split documents longer than seq_len into chunks, or truncate."
    )
    pad_id: int | None = Field(default=None, ge=0, description="Padding id (default: the tokenizer's EOS, else 0).")
    writers: list[Literal["numpy", "megatron", "olmo"]] = Field(
        default_factory=lambda: ["numpy"], description="Extra outputs besides the packed Parquet dataset."
    )
    max_tokens_per_file: int = Field(default=1 << 29, ge=1024, description="OLMo memmap shard size in tokens.")

    @model_validator(mode="after")
    def _check(self) -> PackConfig:
        if self.labels_shift and self.method != "concat":
            raise ValueError("labels_shift applies to method: concat")
        return self


def _sequence_arrays(segs: list[Segment], docs: list[np.ndarray], masks: list[np.ndarray | None],
                     width: int, pad_id: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    tokens = np.full(width, pad_id, dtype=dtype)
    mask = np.zeros(width, dtype=np.uint8)
    pos = np.zeros(width, dtype=np.int32)
    lens = np.array([s.length for s in segs], dtype=np.int32)
    p = 0
    for s in segs:
        tokens[p:p + s.length] = docs[s.doc][s.start:s.start + s.length]
        m = masks[s.doc]
        mask[p:p + s.length] = 1 if m is None else m[s.start:s.start + s.length]
        pos[p:p + s.length] = np.arange(s.length, dtype=np.int32)
        p += s.length
    return tokens, mask, pos, lens


def flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat numpy values, int64 offsets from 0), zero-copy where Arrow allows."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return values, offsets - offsets[0]


class PackJob:
    """Packs one encoded part into sequences (a part is packed on its own: deterministic, parallel)."""

    def __init__(self, cfg: PackConfig, pad_id: int, value_type: pa.DataType):
        self.cfg, self.pad_id, self.value_type = cfg, pad_id, value_type

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        cfg = self.cfg
        dtype = np.dtype(self.value_type.to_pandas_dtype())
        width = cfg.seq_len + 1 if cfg.labels_shift else cfg.seq_len
        out.data.schema = pa.schema([
            ("input_ids", pa.list_(self.value_type)), ("loss_mask", pa.list_(pa.uint8())),
            ("position_ids", pa.list_(pa.int32())), ("doc_lens", pa.list_(pa.int32())),
            ("cu_seqlens", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.string())),
        ])
        stats: Counter[str] = Counter()
        rows: dict[str, list] = {k: [] for k in out.data.schema.names}
        columns = ["id", "input_ids"] + (["loss_mask"] if "loss_mask" in read_schema(task.payload).names else [])
        docs: list[np.ndarray] = []
        masks: list[np.ndarray | None] = []
        ids: list[str] = []

        def flush_rows() -> None:
            if rows["input_ids"]:
                out.data.write(pa.table(rows, schema=out.data.schema))
                for v in rows.values():
                    v.clear()

        def emit(seqs: list[list[Segment]]) -> None:
            for segs in seqs:
                tokens, mask, pos, lens = _sequence_arrays(segs, docs, masks, width, self.pad_id, dtype)
                rows["input_ids"].append(tokens)
                rows["loss_mask"].append(mask)
                rows["position_ids"].append(pos)
                rows["doc_lens"].append(lens)
                rows["cu_seqlens"].append(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
                rows["doc_ids"].append([ids[s.doc] for s in segs])
                stats["sequences"] += 1
                stats["segments"] += len(segs)
                stats["real_tokens"] += int(lens.sum())
                stats["padding_tokens"] += width - int(lens.sum())
                if len(rows["input_ids"]) >= 1024:
                    flush_rows()

        def pack_buffer() -> None:
            lengths = [len(d) for d in docs]
            if cfg.method == "concat":
                window = width
                seqs = list(concat_chunk(lengths, window, cfg.seq_len))
                pieces = Counter(s.doc for segs in seqs for s in segs)
                stats["documents_split"] += sum(1 for n in pieces.values() if n > 1)
            else:
                if cfg.long_docs == "truncate":
                    chunks = [Segment(d, 0, min(n, cfg.seq_len)) for d, n in enumerate(lengths)]
                    stats["documents_truncated"] += sum(1 for n in lengths if n > cfg.seq_len)
                    stats["tokens_truncated"] += sum(max(0, n - cfg.seq_len) for n in lengths)
                else:
                    chunks = split_long(lengths, cfg.seq_len)
                    stats["documents_split"] += sum(1 for n in lengths if n > cfg.seq_len)
                seqs = best_fit_decreasing(chunks, cfg.seq_len)
            emit(seqs)
            docs.clear()
            masks.clear()
            ids.clear()

        # concat streams one part as one token stream; best_fit packs buffers of documents
        limit = cfg.buffer_docs if cfg.method == "best_fit" else 1 << 62
        n_docs = 0
        for batch in iter_batches(task.payload, 2048, columns=columns):
            values, offsets = flat_lists(batch.column("input_ids"))
            values = values.astype(dtype, copy=False)
            mvalues = flat_lists(batch.column("loss_mask"))[0].astype(np.uint8, copy=False) \
                if "loss_mask" in columns else None
            bounds = offsets.tolist()
            for k, doc_id in enumerate(batch.column("id").to_pylist()):
                a, b = bounds[k], bounds[k + 1]
                docs.append(values[a:b])  # views into the batch: no per-document copy
                masks.append(None if mvalues is None else mvalues[a:b])
                ids.append(doc_id)
                n_docs += 1
                if len(docs) >= limit:
                    pack_buffer()
        if docs:
            pack_buffer()
        flush_rows()
        stats["documents"] = n_docs
        return {"rows_in": n_docs, "rows_out": stats["sequences"], "stats": dict(stats)}


@register_stage
class PackStage(Stage[PackConfig]):
    """Concat or best-fit packing, plus Megatron / OLMo / numpy token files."""

    config_model = PackConfig
    reconciles_rows: ClassVar[bool] = False  # documents in, sequences out

    @classmethod
    def describe_file(cls, path: Location) -> tuple[str, dict[str, dict[str, Any]]] | None:
        if not path.name.endswith(".idx"):
            return None
        ds = MegatronDataset(str(path.local_file())[: -len(".idx")])
        return "Megatron index", {"megatron": {"documents": len(ds), "dtype": str(ds.dtype),
                                               "tokens": int(ds.lengths.sum())}}

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return report_part(manifest, stage_dir)

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        if not ctx.datasets:
            raise TokenmillError(f"stage '{ctx.name}': pack needs an encoded dataset as input")
        files = [f for _, f in ctx.input_files()]
        schema = read_schema(files[0]) if files else None
        if schema is None or "input_ids" not in schema.names:
            raise TokenmillError(f"stage '{ctx.name}': input has no input_ids column (run an encode stage first)")
        value_type = schema.field("input_ids").type.value_type
        tok = self._tokenizer_info(ctx)
        tok_path = tok.pop("path", None)
        tok_stages = tok.pop("from_stages", [])
        pad_id = cfg.pad_id if cfg.pad_id is not None else (tok.get("eos_id") or 0)
        tasks = [ShardTask(f"{i:05d}", f) for i, f in enumerate(files)]
        results = ctx.map_shards(PackJob(cfg, pad_id, value_type), tasks)
        stats: Counter[str] = Counter()
        for r in results:
            stats.update(r.get("stats", {}))
        width = cfg.seq_len + 1 if cfg.labels_shift else cfg.seq_len
        slots = stats["sequences"] * width
        summary: dict[str, Any] = {
            "method": cfg.method, "seq_len": cfg.seq_len, "sequence_width": width, "pad_id": pad_id,
            "documents": stats["documents"], "sequences": stats["sequences"], "tokens": stats["real_tokens"],
            "padding_tokens": stats["padding_tokens"],
            "padding_share": round(stats["padding_tokens"] / slots, 6) if slots else 0.0,
            "documents_split": stats["documents_split"], "documents_truncated": stats["documents_truncated"],
            "tokens_truncated": stats["tokens_truncated"],
            "documents_split_share": round(stats["documents_split"] / stats["documents"], 6)
            if stats["documents"] else 0.0,
            "avg_documents_per_sequence": round(stats["segments"] / stats["sequences"], 4)
            if stats["sequences"] else 0.0,
        }
        ctx.manifest.stats.update(summary)
        writers = self._write_outputs(ctx, files, tok, value_type, width, summary)
        if tok_path:
            hf = self._write_hf_tokenizer(ctx, tok_path, tok_stages, tok.get("sha256"), cfg.seq_len)
            if hf:
                writers["hf_tokenizer"] = hf
        # the folder also holds .npy/.bin/.json token files: a dataset card tells HF datasets' folder
        # mode (load_dataset(<pack folder>)) that the dataset is data/*.parquet
        (ctx.work_dir / "README.md").write_text(DATASET_CARD.format(name=ctx.name))
        meta = {"tokenizer": tok, "dtype": str(value_type), "pack": summary, "writers": writers}
        write_json_atomic(ctx.work_dir / "metadata.json", meta)
        ctx.manifest.stats["writers"] = writers

    @staticmethod
    def _tokenizer_info(ctx: StageContext) -> dict[str, Any]:
        for ds in ctx.datasets:
            stack = [ds.manifest]
            while stack:  # the encode stage's manifest may be further upstream (cleaning in between)
                m = stack.pop()
                if "tokenizer" in m.get("stats", {}):
                    return {**m["stats"]["tokenizer"], "from_stages": list(m.get("inputs", {}))}
                for up in m.get("inputs", {}):
                    um = read_manifest(ctx.output_root / up)
                    if um is not None:
                        stack.append(um)
        return {}

    def _write_outputs(self, ctx: StageContext, files: list[Location], tok: dict[str, Any], value_type: pa.DataType,
                       width: int, summary: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"parquet": "data/"}
        # the writers need real files (memmaps): writing_dir is the folder itself on a local or shared
        # disk, and a local folder uploaded when complete for an object store
        if "numpy" in cfg.writers:
            dtype = np.dtype(value_type.to_pandas_dtype())
            with (ctx.work_dir / "numpy").writing_dir() as numpy_dir:
                w = PackedNumpyWriter(numpy_dir, summary["sequences"], width, dtype)
                for part in ctx.data_dir.glob("part-*.parquet"):
                    for batch in iter_batches(part, 4096, columns=["input_ids", "loss_mask", "doc_lens"]):
                        n = batch.num_rows
                        toks = batch.column("input_ids").combine_chunks().flatten().to_numpy().reshape(n, width)
                        mask = batch.column("loss_mask").combine_chunks().flatten().to_numpy().reshape(n, width)
                        lens = [np.asarray(x, dtype=np.int32) for x in batch.column("doc_lens").to_pylist()]
                        w.add(toks, mask, lens)
                out["numpy"] = {"dir": "numpy/", **w.close()}
        if "megatron" in cfg.writers or "olmo" in cfg.writers:
            has_mask = any("loss_mask" in read_schema(f).names for f in files)
            with ExitStack() as stack:
                vocab = tok.get("vocab_size") or (1 << 16)
                mega = None
                if "megatron" in cfg.writers:
                    mdir = stack.enter_context((ctx.work_dir / "megatron").writing_dir())
                    mask_dir = (stack.enter_context((ctx.work_dir / MEGATRON_MASK_DIR).writing_dir())
                                if has_mask else None)
                    mega = MegatronWriter(mdir / "tokens", megatron_dtype(vocab),
                                          mask_prefix=mask_dir / "tokens" if mask_dir else None)
                olmo_dtype = np.uint16 if value_type == pa.uint16() else np.uint32
                olmo = OlmoWriter(stack.enter_context((ctx.work_dir / "olmo").writing_dir()), olmo_dtype,
                                  cfg.max_tokens_per_file,
                                  stack.enter_context((ctx.work_dir / OLMO_MASK_DIR).writing_dir()),
                                  ) if "olmo" in cfg.writers else None
                self._write_documents(files, mega, olmo)
                if mega is not None:
                    out["megatron"] = {"prefix": "megatron/tokens", "dtype": np.dtype(mega.dtype).name, **mega.close(),
                                       "loss_mask": f"{MEGATRON_MASK_DIR}/tokens" if has_mask else None}
                    if has_mask:
                        ctx.warn(
                            f"stage '{ctx.name}': Megatron's GPTDataset reads tokens only; the token-cleaning "
                            f"loss mask is the companion indexed dataset {MEGATRON_MASK_DIR}/tokens "
                            "(uint8, same documents): read it beside the tokens (README: Use the outputs)")
                if olmo is not None:
                    out["olmo"] = {"dir": "olmo/", **olmo.close(), "loss_mask": f"{OLMO_MASK_DIR}/",
                                   "glob": "olmo/*.npy", "mask_glob": f"{OLMO_MASK_DIR}/*.npy"}
        out["masks"] = self._mask_carriers(cfg.writers, out)
        return out

    @staticmethod
    def _write_hf_tokenizer(ctx: StageContext, path: str, stages: list[str], sha256: str | None,
                            seq_len: int) -> str | None:
        """``tokenizer/``: the encode stage's tokenizer with HF configs and ``model_max_length = seq_len``.

        The tokenizer stage cannot know ``seq_len`` (its artifact must not depend on a later stage),
        so the folder that carries it is written here; skipped when the file changed since encode.
        """
        import hashlib
        import json

        from stages.tokenizer.hf_files import write_hf_tokenizer_files

        # the encode stage's tokenizer: a tokenizer stage's artifact in this output (found through the
        # output root, which works on object stores too), else the artifact input's path as recorded
        candidates = [ctx.output_root / up / "tokenizer.json" for up in stages]
        raw = None
        for src in candidates:
            if src.is_file():
                data = src.read_bytes()
                if not sha256 or hashlib.sha256(data).hexdigest() == sha256:
                    raw = data
                    break
        if raw is None and "://" not in path and Path(path).is_file():
            raw = Path(path).read_bytes()
        if raw is None or (sha256 and hashlib.sha256(raw).hexdigest() != sha256):
            return None
        specials = [t["content"] for t in json.loads(raw).get("added_tokens", []) if t.get("special")]
        folder = ctx.work_dir / "tokenizer"
        (folder / "tokenizer.json").write_bytes(raw)
        write_hf_tokenizer_files(folder, specials, model_max_length=seq_len)
        return "tokenizer/"

    @staticmethod
    def _mask_carriers(writers: list[str], out: dict[str, Any]) -> dict[str, str]:
        """Which outputs carry the loss mask, in plain words (also in the manifest)."""
        carriers = {"parquet": "loss_mask column (0 on padding and on cleaned tokens)"}
        if "numpy" in writers:
            carriers["numpy"] = "numpy/loss_mask.npy [N, L]"
        if "olmo" in writers:
            carriers["olmo"] = f"{OLMO_MASK_DIR}/part-N.npy (np.bool_ bytes; label_mask_paths of OLMo-core)"
        if "megatron" in writers:
            mp = out.get("megatron", {}).get("loss_mask")
            carriers["megatron"] = (f"{mp}.bin/.idx companion (uint8); GPTDataset does not read it" if mp
                                    else "no mask in the input: every token trains")
        return carriers

    @staticmethod
    def _write_documents(files: list[Location], mega: MegatronWriter | None, olmo: OlmoWriter | None) -> None:
        """Every document, in part order, to the document-level writers (Megatron, OLMo)."""
        loc = 0
        for f in files:  # parts in sorted key order: the trainer's document order is deterministic
            cols = ["id", "source", "input_ids"] + (["loss_mask"] if "loss_mask" in read_schema(f).names else [])
            for batch in iter_batches(f, 8192, columns=cols):
                values, offsets = flat_lists(batch.column("input_ids"))
                masks = flat_lists(batch.column("loss_mask"))[0] if "loss_mask" in cols else None
                if mega is not None:
                    mega.add_documents(values, offsets, masks)
                if olmo is not None:
                    srcs = [s or "" for s in batch.column("source").to_pylist()]
                    olmo.add_documents(values, offsets, masks, batch.column("id").to_pylist(), srcs, loc)
                loc += batch.num_rows

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        return [
            ("method", f"{s.get('method')} @ {s.get('seq_len')}"),
            ("sequences", f"{s.get('sequences', 0):,}"), ("tokens", f"{s.get('tokens', 0):,}"),
            ("padding share", f"{100 * s.get('padding_share', 0):.3f}%"),
            ("documents split", f"{s.get('documents_split', 0):,} ({100 * s.get('documents_split_share', 0):.2f}%)"),
            ("documents truncated", f"{s.get('documents_truncated', 0):,}"),
            ("avg documents / sequence", str(s.get("avg_documents_per_sequence"))),
            ("writers", ", ".join(s.get("writers", {}))),
        ]
