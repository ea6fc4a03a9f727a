"""Tokenizer training on the curated data, with HF ``tokenizers``, and a quality report.

Models: byte-level BPE (pre-tokenization presets: GPT-2, the cl100k/Llama-3 pattern, and a variant
that splits digits one by one), Unigram (Kudo 2018) and WordPiece. The training text is a
deterministic sample of the input: the documents with the lowest hash of (stage name, role, id, seed) whose
UTF-8 text fits the byte budget (:mod:`stages.tokenizer.sample`; the hash is salted, so the sample is
independent of balance's and keeps the input's balanced language mix), whatever the block layout.
Byte-level BPE with the GPT-2 pattern trains with gigatoken (:mod:`stages.tokenizer.fast_trainer`):
on the sample's text, streamed to a scratch file, up to ``parallel_count_mb``; above it, from the
sample's pre-token counts, counted on Ray workers (map per part, reduce per hash partition,
:mod:`stages.tokenizer.counts`). Anything else streams from Parquet into HF's ``train_from_iterator``.
Either way the trainer's memory is its word-count and pair tables (growing with distinct pre-tokens in
the sample), never the corpus; the small-sample path also reads its file (at most
``parallel_count_mb``) once, for the ``min_frequency`` check.

Artifacts: ``tokenizer.json`` (loadable by ``Tokenizer.from_file`` and
``PreTrainedTokenizerFast(tokenizer_file=...)``), ``tokenizer_config.json`` and ``special_tokens_map.json``
(so ``AutoTokenizer.from_pretrained(<stage folder>)`` works, see :mod:`stages.tokenizer.hf_files`) and
``report.json`` (see :mod:`stages.tokenizer.quality`).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.context import StageContext
from pipeline.errors import TokenmillError
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import read_table
from pipeline.stage_api import RefKind, ReportPart, Stage, StageConfig, register_stage
from stages.encode.engines import hf_threads
from stages.tokenizer.charts import report_part
from stages.tokenizer.hf_files import write_hf_tokenizer_files
from stages.tokenizer.pretokenizers import PRETOKENIZER_PATTERNS
from stages.tokenizer.sample import HashSample, HeldoutPool, calibrate, heldout_docs, iter_sample


class ReportConfig(BaseModel):
    """Options of the quality report."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reference_lang: str = Field(default="eng", description="Language the premiums are relative to (parallel set).")
    heldout_docs: int = Field(default=2000, ge=0, description="Input documents outside the sample to measure on "
                              "(by id: never a copy of a trained document).")


class SuperBPEConfig(BaseModel):
    """SuperBPE (Liu et al. 2025): subwords up to a transition size, then superwords across spaces."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = Field(default=False, description="Train SuperBPE (model: bpe only).")
    transition_vocab: int | None = Field(
        default=None, ge=300, description="Stage-1 vocabulary size; default transition_share x vocab_size.")
    transition_share: float = Field(default=0.5, gt=0, lt=1, description="Stage-1 share of the vocabulary.")
    max_words: int = Field(default=4, ge=1, le=64, description="Most words one superword token may hold.")
    sample_mb: float = Field(default=16, gt=0, description="Stage-2 text budget (MB of UTF-8 text): a hash subset "
                             "of the sample, with its own salt.")
    parallel_count_mb: float = Field(
        default=8, ge=0, description="Count stage-2 pre-tokens on Ray workers above this many MB of input.")

    def transition(self, vocab_size: int) -> int:
        return self.transition_vocab or int(self.transition_share * vocab_size)


class TrainTokenizerConfig(StageConfig):
    type: Literal["train_tokenizer"]
    model: Literal["bpe", "unigram", "wordpiece"] = "bpe"
    vocab_size: int = Field(default=32000, ge=64, le=1 << 20)
    pretokenizer: Literal["gpt2", "llama3", "digits"] = Field(default="llama3", description="bpe only.")
    special_tokens: list[str] = Field(default_factory=lambda: ["<|endoftext|>", "<|padding|>"])
    min_frequency: int = Field(default=2, ge=1)
    max_token_length: int | None = Field(default=None, ge=1)
    normalization: Literal["none", "nfc", "nfkc"] = Field(
        default="none", description="none keeps decode(encode(x)) == x for byte-level BPE on any input."
    )
    sample_mb: float = Field(default=256, gt=0, description="Training text budget (MB of UTF-8 text, as cut to "
                             "max_doc_chars), sampled by a salted hash; exceeded never, missed by under one document.")
    parallel_count_mb: float = Field(
        default=128, ge=0, description="Fast BPE trainer: count the sample's pre-tokens on Ray workers "
        "(map per input part, reduce per hash partition) above this many MB of sample text.")
    max_doc_chars: int = Field(default=100_000, ge=100, description="Documents are cut to this for training.")
    parallel_text: Annotated[str | None, RefKind("artifact")] = Field(
        default=None, description="An input (kind: artifact) of parallel JSONL[.zst] text with lang, article, "
        "text fields (e.g. UDHR) for token premiums across languages.",
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    superbpe: SuperBPEConfig = Field(default_factory=SuperBPEConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainTokenizerConfig:
        if self.superbpe.enabled:
            if self.model != "bpe":
                raise ValueError("superbpe needs model: bpe")
            if self.superbpe.transition(self.vocab_size) >= self.vocab_size:
                raise ValueError("superbpe.transition_vocab must be smaller than vocab_size")
        return self


def build_tokenizer(cfg: TrainTokenizerConfig, vocab_size: int | None = None) -> tuple[Any, Any]:
    """An untrained tokenizer and its trainer for the configured model (``vocab_size`` overrides)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    norm = {"nfc": normalizers.NFC(), "nfkc": normalizers.NFKC()}.get(cfg.normalization)
    specials = list(cfg.special_tokens)
    if cfg.model == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZER_PATTERNS[cfg.pretokenizer]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=cfg.max_token_length,
            show_progress=False,
        )
    elif cfg.model == "unigram":
        unk = next((t for t in specials if "unk" in t.lower()), "<unk>")
        if unk not in specials:
            specials.append(unk)
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size or cfg.vocab_size, special_tokens=specials, unk_token=unk, show_progress=False,
            max_piece_length=cfg.max_token_length or 16,
        )
    else:
        unk = next((t for t in specials if "unk" in t.lower()), "[UNK]")
        if unk not in specials:
            specials.append(unk)
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size or cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials,
            show_progress=False,
        )
    if norm is not None:
        tok.normalizer = norm
    return tok, trainer


FAST_REASON = "byte-level BPE with the GPT-2 pattern: same merges as HF"
NUL_REASON = "a document contains NUL (gigatoken's document separator)"


def _hf_info(why: str) -> dict[str, Any]:
    return {"trainer": "hf", "reason": f"gigatoken.train_bpe does not reproduce HF here: {why}"}


def train(cfg: TrainTokenizerConfig, tok: Any, trainer: Any, texts: Iterator[str],
          vocab_size: int) -> tuple[Any, dict[str, Any]]:
    """gigatoken's BPE trainer on the texts where its merges are exactly HF's
    (:mod:`stages.tokenizer.fast_trainer`), else HF ``train_from_iterator``; returns the trained
    tokenizer and which trainer ran and why. The texts are consumed once, streaming, into a scratch
    file, as the stage does with a sample up to ``parallel_count_mb``."""
    from stages.tokenizer.fast_trainer import SEPARATOR, fast_unsupported, train_from_documents

    why = fast_unsupported(cfg)
    if why is not None:
        tok.train_from_iterator(texts, trainer=trainer)
        return tok, _hf_info(why)
    held: list[str] = []  # only to retrain with HF if a NUL turns up (gigatoken's document separator)
    nul = False
    with tempfile.TemporaryDirectory(prefix="tokenmill-bpe-") as d:
        path = Path(d) / "sample.bin"
        with open(path, "wb") as f:
            for t in texts:
                held.append(t)
                b = t.encode("utf-8")
                nul = nul or SEPARATOR in b
                f.write(b + SEPARATOR)
        if nul:
            tok.train_from_iterator(held, trainer=trainer)
            return tok, _hf_info(NUL_REASON)
        held.clear()
        fast, figures = train_from_documents(cfg, tok, path, vocab_size)
    return fast, {"trainer": "gigatoken", "reason": FAST_REASON, "counted_on": "driver", **figures}


@register_stage
class TrainTokenizerStage(Stage[TrainTokenizerConfig]):
    """Train a tokenizer on a hash-sampled budget of the input; write tokenizer.json and report.json."""

    config_model = TrainTokenizerConfig
    produces_dataset: ClassVar[bool] = False
    artifacts: ClassVar[dict[str, str]] = {"tokenizer": "tokenizer.json", "report": "report.json"}

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return report_part(manifest, stage_dir)

    def driver_bound(self) -> bool:
        """HF's trainer (every config but gigatoken's) counts and merges in Rust with the GIL released,
        on the driver, while Ray's workers idle."""
        from stages.tokenizer.fast_trainer import fast_unsupported

        return fast_unsupported(self.config) is not None

    def holds_driver(self) -> bool:
        """``gigatoken.train_bpe`` holds the GIL (measured)."""
        return not self.driver_bound()

    def run(self, ctx: StageContext) -> None:
        from stages.tokenizer.quality import quality_report

        cfg = self.config
        files = [f for _, f in ctx.input_files()]
        total = sum(ds.manifest.get("bytes_out", 0) for ds in ctx.datasets) or 1
        n = cfg.report.heldout_docs
        pool = HeldoutPool(ctx.name, ctx.seed, n, cfg.max_doc_chars) if n > 0 else None  # filled by calibrate
        sample, eligible = calibrate(files, HashSample(ctx.name, "sample", ctx.seed), cfg.sample_mb * 1e6,
                                     cfg.max_doc_chars, heldout=pool)
        stage1_vocab = cfg.superbpe.transition(cfg.vocab_size) if cfg.superbpe.enabled else None
        tok, trainer = build_tokenizer(cfg, stage1_vocab)
        counts = {"documents": 0, "bytes": 0}
        per_lang: Counter[str] = Counter()
        trained_ids: set[str] = set()  # the sample's ids, as HF streams it: the held-out set needs them

        def texts() -> Iterator[str]:
            for row in iter_sample(files, sample, cfg.max_doc_chars):
                trained_ids.add(row["id"])
                nb = len(row["text"].encode("utf-8"))
                counts["documents"] += 1
                counts["bytes"] += nb
                per_lang[row.get("lang") or "und"] += nb
                yield row["text"]

        t0 = time.perf_counter()
        trained, trainer_info = self._train_fast(ctx, files, sample, eligible["sample_bytes"], tok, counts,
                                                 per_lang)
        if trained is None:  # HF streams the sample (and fills the figures)
            with hf_threads(not ctx.shares_cores):
                tok.train_from_iterator(texts(), trainer=trainer)
            trainer_info["threads"] = "one (stages beside it)" if ctx.shares_cores else "all"
        else:
            tok = trained
        train_s = time.perf_counter() - t0
        if counts["documents"] == 0:
            raise TokenmillError(f"stage '{ctx.name}': no training text (empty input)")
        superbpe_stats: dict[str, Any] = {}
        if cfg.superbpe.enabled:
            t1 = time.perf_counter()
            tok, superbpe_stats = self._superbpe_stage2(ctx, tok, files, sample)
            superbpe_stats["seconds"] = round(time.perf_counter() - t1, 3)
        with (ctx.work_dir / "tokenizer.json").writing() as path:
            tok.save(str(path))
        write_hf_tokenizer_files(ctx.work_dir, cfg.special_tokens)  # AutoTokenizer.from_pretrained(folder)
        heldout = heldout_docs(files, sample, n, cfg.max_doc_chars,  # by id: never a trained document or copy
                               trained_ids if trained is None else None, pool)
        note = None if heldout else ("report.heldout_docs is 0" if n == 0 else
                                     "every document of the input is in the training sample")
        parallel = ctx.artifact("parallel_text").local_file() if cfg.parallel_text else None
        report = quality_report(tok, heldout, parallel=parallel, reference_lang=cfg.report.reference_lang,
                                no_heldout=note)
        if heldout:  # languages every document of which has a row (a copy) in the sample: no figure for them
            report["heldout"]["languages_without"] = sorted(set(per_lang) - set(report["per_language"]))
        from pipeline.manifest import write_json_atomic

        write_json_atomic(ctx.work_dir / "report.json", report)
        ctx.manifest.stats.update({
            "model": cfg.model, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "training_documents": counts["documents"], "training_bytes": counts["bytes"],
            "training_bytes_per_language": dict(sorted(per_lang.items())),
            "sample_budget_bytes": round(cfg.sample_mb * 1e6), "input_text_bytes": eligible["eligible_bytes"],
            "sample_rate": round(counts["bytes"] / max(eligible["eligible_bytes"], 1), 6),
            "train_seconds": round(train_s, 3), "trainer": trainer_info,
            "training_mb_per_s": round(counts["bytes"] / 1e6 / max(train_s, 1e-9), 3),
            "report": report["summary"],
            "config": cfg.model_dump(mode="json", exclude={"name", "description"}),
            "input_fingerprints": {ds.name: ds.manifest.get("fingerprint") for ds in ctx.datasets},
            **({"superbpe": superbpe_stats} if superbpe_stats else {}),
        })
        ctx.manifest.rows_in = sum(ds.manifest.get("rows_out", 0) for ds in ctx.datasets)
        ctx.manifest.rows_out = ctx.manifest.rows_in
        ctx.manifest.bytes_in = total

    def _train_fast(self, ctx: StageContext, files: list[Location], sample: HashSample, sample_bytes: int,
                    tok: Any, counts: dict[str, int], per_lang: Counter[str]) -> tuple[Any, dict[str, Any]]:
        """gigatoken on the sample's text, or, when the sample is larger than ``parallel_count_mb``, on
        its pre-token counts made on Ray workers; fills the sample figures. (None, info): HF must
        train, info says why."""
        from stages.tokenizer.counts import count_sample_on_ray, read_counts, write_sample
        from stages.tokenizer.fast_trainer import fast_unsupported, train_from_counts, train_from_documents

        cfg = self.config
        why = fast_unsupported(cfg)
        if why is not None:
            return None, _hf_info(why)
        on_ray = sample_bytes > cfg.parallel_count_mb * 1e6 and len(files) > 1
        with tempfile.TemporaryDirectory(prefix="tokenmill-bpe-") as d:
            # the text path: the sample's text as it is, which gigatoken pre-tokenizes and counts on all cores
            text = Path(d) / "sample.bin"
            if on_ray:
                parts, figures = count_sample_on_ray(ctx, files, sample, cfg.max_doc_chars, sample_bytes)
            else:
                figures = write_sample(files, sample, cfg.max_doc_chars, text)
            if figures.documents == 0:
                raise TokenmillError(f"stage '{ctx.name}': no training text (empty input)")
            if figures.has_nul:  # gigatoken would take it for a document boundary: HF streams the sample
                return None, _hf_info(NUL_REASON)
            counts["documents"], counts["bytes"] = figures.documents, figures.bytes
            per_lang.update(figures.per_lang)
            if on_ray:
                trained, stats = train_from_counts(cfg, tok, *read_counts(parts), cfg.vocab_size)
            else:
                trained, stats = train_from_documents(cfg, tok, text, cfg.vocab_size)
        return trained, {"trainer": "gigatoken", "reason": FAST_REASON, "counted_on": "ray" if on_ray else "driver",
                         **stats}

    def _superbpe_stage2(self, ctx: StageContext, stage1: Any, files: list[Location],
                         sample: HashSample) -> tuple[Any, dict[str, Any]]:
        """Count stage-2 pre-tokens of a hash subset of the sample (on Ray when large), then extend."""
        from stages.tokenizer.superbpe import count_chunks, extend_tokenizer

        cfg = self.config
        sb = cfg.superbpe
        # a subset of the sample, ranked by its own salted hash (independent of the sample's threshold)
        sample2, size2 = calibrate(files, HashSample(ctx.name, "superbpe-stage2", ctx.seed, within=sample),
                               sb.sample_mb * 1e6, cfg.max_doc_chars)
        job = ChunkCountJob(sample2, cfg.max_doc_chars)
        if size2["sample_bytes"] > sb.parallel_count_mb * 1e6 and len(files) > 1:
            tasks = [ShardTask(f.stem.removeprefix("part-") + f"-{i}", f) for i, f in enumerate(files)]
            ctx.map_shards(job, tasks, count_rows=False)
            chunks = read_chunk_counts(ctx.data_dir.glob("part-*.parquet"))
            ctx.data_dir.move_to(ctx.side_dir("chunk_counts"))  # keep the counts; this stage has no dataset
            where = "ray"
        else:
            chunks = count_chunks(row["text"] for row in iter_sample(files, sample2, cfg.max_doc_chars))
            where = "driver"
        if not chunks:
            raise TokenmillError(f"stage '{ctx.name}': superbpe stage 2 has no text (raise superbpe.sample_mb)")
        tok, stats = extend_tokenizer(stage1, chunks, cfg.vocab_size, cfg.min_frequency, sb.max_words)
        return tok, {**stats, "counted_on": where, "stage2_bytes": size2["sample_bytes"]}

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        from stages.tokenizer.quality import summary_rows

        s = manifest.get("stats", {})
        rows = [("model", f"{s.get('model')} ({s.get('vocab_size', 0):,} tokens)"),
                ("trained on", f"{s.get('training_documents', 0):,} docs, {s.get('training_bytes', 0) / 1e6:.1f} MB "
                               f"in {s.get('train_seconds', 0)} s"),
                ("trainer", _trainer_summary(s.get("trainer", {})))]
        sb = s.get("superbpe")
        if sb:
            rows.append(("superbpe", f"{sb['transition_vocab']:,} subwords + {sb['stage2_merges']:,} stage-2 merges "
                                     f"({sb['superwords']:,} superwords) on {sb['distinct_chunks']:,} chunks, "
                                     f"{sb.get('seconds', 0)} s"))
        return rows + summary_rows(s.get("report", {}))


def _trainer_summary(info: dict[str, Any]) -> str:
    if info.get("trainer") != "gigatoken":
        return f"{info.get('trainer', 'hf')} ({info.get('reason', '')})"
    if "distinct_pretokens" not in info:  # trained on the sample's text: gigatoken counted it itself
        return f"gigatoken, on the sample's text, {info.get('merges', 0):,} merges"
    return (f"gigatoken, {info['distinct_pretokens']:,} distinct pre-tokens counted on "
            f"{info.get('counted_on')}, {info.get('merges', 0):,} merges")


class ChunkCountJob:
    """Ray shard job: the stage-2 pre-tokens of the sampled documents of one part, with counts."""

    def __init__(self, sample: HashSample, max_chars: int):
        self.sample, self.max_chars = sample, max_chars

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        import pyarrow as pa

        from stages.tokenizer.superbpe import count_chunks

        docs = list(iter_sample([task.payload], self.sample, self.max_chars))
        counts = count_chunks(d["text"] for d in docs)
        keys = sorted(counts)
        out.data.write(pa.table({"chunk": pa.array(keys, pa.string()),
                                 "count": pa.array([counts[k] for k in keys], pa.int64())}))
        return {"rows_in": len(docs), "rows_out": len(keys), "bytes_in": sum(len(d["text"]) for d in docs)}


def read_chunk_counts(parts: list[Location]) -> Counter[str]:
    """Sum the per-part chunk counts (the reduce step); order-independent."""
    if not parts:
        return Counter()
    table = read_table(parts).group_by("chunk").aggregate([("count", "sum")])
    return Counter(dict(zip(table.column("chunk").to_pylist(), table.column("count_sum").to_pylist(), strict=True)))
