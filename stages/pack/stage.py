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
from collections.abc import Iterator
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
from pipeline.parquet_io import bulk_options, iter_batches, read_schema
from pipeline.stage_api import ReportPart, Stage, StageConfig, register_stage
from stages.pack.columns import documents, flat_lists, packed_schema, sequence_table
from stages.pack.formats import (
    MEGATRON_MASK_DIR,
    OLMO_MASK_DIR,
    MegatronDataset,
    MegatronWriter,
    OlmoWriter,
    PackedNumpyPart,
    PackedNumpyWriter,
    megatron_dtype,
)
from stages.pack.packing import Layout, best_fit_layout, concat_layout, split_chunks, truncate_chunks
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


#: the files of a shard's packed numpy part, in :class:`PackedNumpyPart`'s argument order
NUMPY_PART_FILES = ("tokens", "mask", "lens.npz")
#: the [N, L] columns: one value per token slot, no filter ever reads their min/max
BULK_COLUMNS = ("input_ids", "loss_mask", "position_ids")


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options of a packed part: the [N, L] columns (:data:`BULK_COLUMNS`) without dictionary
    pages or statistics, byte-stream-split (zstd then sees the all-zero high bytes of the ids and
    positions as runs) at zstd level 1, as encode writes its ids; the small columns keep the defaults.
    Measured on a 4x Debian part (6,567 sequences of 2,048, CPU seconds, one process): written in
    0.86 s -> 0.44 s, read back in 0.61 s -> 0.25 s, 19.7 MB -> 18.5 MB."""
    return bulk_options(schema, BULK_COLUMNS)


#: packed rows per table written, so per row group of a part (the stage's output layout)
ROWS_PER_TABLE = 1024


def _buffers(path: Location, columns: list[str], limit: int) -> Iterator[pa.Table]:
    """The part's documents in consecutive tables of ``limit`` documents (the last may hold fewer)."""
    pending: list[pa.Table] = []
    rows = 0
    for batch in iter_batches(path, 2048, columns=columns):
        pending.append(batch)
        rows += batch.num_rows
        while rows >= limit:
            table = pa.concat_tables(pending)
            yield table.slice(0, limit)
            pending, rows = [table.slice(limit)], rows - limit
    if rows:
        yield pa.concat_tables(pending)


class _SequenceSink:
    """Writes packed rows to the part in tables of :data:`ROWS_PER_TABLE` (the last may hold fewer),
    whatever the blocks they arrive in, and to the shard's packed numpy part when there is one."""

    def __init__(self, out: ShardOutput, width: int, numpy_part: PackedNumpyPart | None):
        self.out, self.width, self.numpy_part = out, width, numpy_part
        self.pending: list[pa.Table] = []
        self.rows = 0

    @property
    def room(self) -> int:
        """Rows until the table being gathered is complete."""
        return ROWS_PER_TABLE - self.rows

    def add(self, block: pa.Table) -> None:
        """A block of at most :attr:`room` rows."""
        self.pending.append(block)
        self.rows += block.num_rows
        if self.rows >= ROWS_PER_TABLE:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = self.pending[0] if len(self.pending) == 1 else pa.concat_tables(self.pending).combine_chunks()
        self.out.data.write(table)
        if self.numpy_part is not None:
            self._add_numpy(table)
        self.pending, self.rows = [], 0

    def _add_numpy(self, table: pa.Table) -> None:
        n = table.num_rows
        tokens = flat_lists(table.column("input_ids"))[0].reshape(n, self.width)
        mask = flat_lists(table.column("loss_mask"))[0].reshape(n, self.width)
        lens, offsets = flat_lists(table.column("doc_lens"))
        self.numpy_part.add(tokens, mask, lens, np.diff(offsets))


def pack_layout(cfg: PackConfig, lengths: np.ndarray, width: int, stats: Counter[str]) -> Layout:
    """How one buffer of documents is packed (counting split and truncated documents in ``stats``)."""
    if cfg.method == "concat":
        lay = concat_layout(lengths, width, cfg.seq_len)
        stats["documents_split"] += int(np.count_nonzero(np.bincount(lay.doc) > 1))
        return lay
    if cfg.long_docs == "truncate":
        chunks = truncate_chunks(lengths, cfg.seq_len)
        stats["documents_truncated"] += int(np.count_nonzero(lengths > cfg.seq_len))
        stats["tokens_truncated"] += int(np.maximum(lengths - cfg.seq_len, 0).sum())
    else:
        chunks = split_chunks(lengths, cfg.seq_len)
        stats["documents_split"] += int(np.count_nonzero(lengths > cfg.seq_len))
    return best_fit_layout(*chunks, cfg.seq_len)


class PackJob:
    """Packs one encoded part into sequences (a part is packed on its own: deterministic, parallel).

    With the numpy writer on, the worker also writes its part of the packed numpy arrays to
    ``numpy_parts`` (see :class:`PackedNumpyPart`)."""

    def __init__(self, cfg: PackConfig, pad_id: int, value_type: pa.DataType, numpy_parts: Location | None = None):
        self.cfg, self.pad_id, self.value_type, self.numpy_parts = cfg, pad_id, value_type, numpy_parts

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        with ExitStack() as stack:
            numpy_part = None
            if self.numpy_parts is not None:
                paths = [stack.enter_context((self.numpy_parts / f"{task.key}.{kind}").writing())
                         for kind in NUMPY_PART_FILES]
                numpy_part = stack.enter_context(PackedNumpyPart(*paths))
            return self._pack(task, out, numpy_part)

    def _pack(self, task: ShardTask, out: ShardOutput, numpy_part: PackedNumpyPart | None) -> dict[str, Any]:
        cfg = self.cfg
        dtype = np.dtype(self.value_type.to_pandas_dtype())
        width = cfg.seq_len + 1 if cfg.labels_shift else cfg.seq_len
        out.data.schema = packed_schema(self.value_type)
        out.data.options.update(write_options(out.data.schema))
        sink = _SequenceSink(out, width, numpy_part)
        stats: Counter[str] = Counter()
        columns = ["id", "input_ids"] + (["loss_mask"] if "loss_mask" in read_schema(task.payload).names else [])
        # concat streams one part as one token stream; best_fit packs buffers of documents
        limit = cfg.buffer_docs if cfg.method == "best_fit" else 1 << 62
        for buffer in _buffers(task.payload, columns, limit):
            docs = documents(buffer, dtype)
            lay = pack_layout(cfg, docs.lengths, width, stats)
            first = 0
            while first < lay.sequences:
                last = min(lay.sequences, first + sink.room)
                sink.add(sequence_table(lay.slice(first, last), docs, width, self.pad_id, out.data.schema))
                first = last
            real = int(lay.length.sum())
            stats.update(documents=buffer.num_rows, sequences=lay.sequences, segments=len(lay.length),
                         real_tokens=real, padding_tokens=lay.sequences * width - real)
        sink.flush()
        return {"rows_in": stats["documents"], "rows_out": stats["sequences"], "stats": dict(stats)}


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
        numpy_parts = ctx.scratch_dir / "numpy" if "numpy" in cfg.writers else None
        results = ctx.map_shards(PackJob(cfg, pad_id, value_type, numpy_parts), tasks)
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
        writers = self._write_outputs(ctx, files, tok, value_type, width, summary,
                                      [[numpy_parts / f"{t.key}.{kind}" for kind in NUMPY_PART_FILES] for t in tasks]
                                      if numpy_parts is not None else [])
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
                       width: int, summary: dict[str, Any], numpy_parts: list[list[Location]]) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"parquet": "data/"}
        # the writers need real files (memmaps): writing_dir is the folder itself on a local or shared
        # disk, and a local folder uploaded when complete for an object store
        if "numpy" in cfg.writers:
            dtype = np.dtype(value_type.to_pandas_dtype())
            with (ctx.work_dir / "numpy").writing_dir() as numpy_dir:
                w = PackedNumpyWriter(numpy_dir, summary["sequences"], width, dtype)
                for part in numpy_parts:  # the workers' parts, in part order
                    with ExitStack() as files_of_part:
                        w.add_part(*(files_of_part.enter_context(f.open()) for f in part))
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
