"""Token cleaning: token-level loss masks, model-free rules and reference-model scoring.

Token Cleaning (Pang et al. 2025, "Token Cleaning: Fine-Grained Data Selection for LLM Supervised
Fine-Tuning", arXiv 2502.01968): inside good documents many tokens are uninformative; masking them
from the loss (they stay as context) helps. Rho-1 (Lin et al., NeurIPS 2024) applies the same
excess-loss rule to pre-training. Scorers:

* ``influence``: ``score_j = loss_base(x_j | x_<j) − loss_ref(x_j | x_<j)`` with count-based n-gram
  models over token ids trained here (base: the corpus being cleaned; reference: a trusted subset
  named in the spec), interpolated Witten-Bell (:mod:`stages.clean.core`). The top ``keep_ratio``
  of tokens by score are kept, globally (a mergeable fixed-bin histogram of scores gives the
  threshold: no process ever holds all scores) or per document, or those at or above ``min_score``.
* ``repetition``: tokens in periodic repeats beyond the k-th repetition.
* ``boilerplate``: tokens of lines (as token sequences) that occur in at least ``min_docs`` documents;
  line hashes are counted in a hash-partitioned distributed pass.
* ``special``: special-token ids inside document text (e.g. a literal ``<|endoftext|>``).

BOS at the start and EOS at the end of a document are never masked. Output: ``loss_mask``
(list<uint8>, 1 = train) beside ``input_ids``, optional ``token_scores``; the manifest holds the
share masked per scorer and per language, the score histogram and decoded samples of masked spans.
"""

from __future__ import annotations

import io
import pickle
from collections import Counter
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from pipeline.context import StageContext
from pipeline.errors import TokenmillError
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import iter_batches, read_schema
from pipeline.sampling import salted_hash
from pipeline.stage_api import RefKind, ReportPart, Stage, StageConfig, register_stage
from stages.clean.core import NGramCounts, NGramLM, line_spans, repetition_mask
from stages.clean.report import report_part

SCORE_RANGE = (-30.0, 30.0)
SCORE_BINS = 6000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceFilter(_Strict):
    """Which documents of the input form the trusted reference set."""

    sources: list[str] | None = None
    langs: list[str] | None = None


class InfluenceConfig(_Strict):
    enabled: bool = False
    order: int = Field(default=3, ge=1, le=3, description="n-gram order of both models.")
    reference: ReferenceFilter = Field(default_factory=ReferenceFilter)
    keep_ratio: float = Field(default=0.6, gt=0, le=1, description="Share of tokens kept (the paper keeps 60%).")
    granularity: Literal["global", "document"] = Field(default="global", description="Top keep_ratio of the "
                                                       "corpus (distributed quantile) or of each document.")
    min_score: float | None = Field(default=None, description="Keep tokens scoring at least this instead of a "
                                    "share (a fixed threshold; keep_ratio and granularity are then unused).")
    model: Literal["ngram", "hf"] = Field(default="ngram", description="n-gram models trained here, or two local "
                                          "Hugging Face causal LMs (optional extra 'hf').")
    base_model: str | None = Field(default=None, description="hf: local directory of the base model.")
    reference_model: str | None = Field(default=None, description="hf: local directory of the reference model.")
    device: str = Field(default="auto", description="hf: 'auto' (GPU if present), 'cpu' or 'cuda'.")
    batch_size: int = Field(default=8, ge=1, description="hf: documents per forward pass.")


class RepetitionConfig(_Strict):
    enabled: bool = True
    min_period: int = Field(default=1, ge=1)
    max_period: int = Field(default=13, ge=1)
    keep_repeats: int = Field(default=3, ge=1, description="Repeats of a periodic run that stay trainable.")


class BoilerplateConfig(_Strict):
    enabled: bool = True
    min_docs: int = Field(default=5, ge=2, description="A line in at least this many documents is boilerplate.")
    min_tokens: int = Field(default=3, ge=1, description="Shorter lines are never boilerplate.")


class CleanConfig(StageConfig):
    type: Literal["clean"]
    tokenizer: Annotated[str, RefKind("artifact")] = Field(description="The tokenizer the encode stage used.")
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig)
    repetition: RepetitionConfig = Field(default_factory=RepetitionConfig)
    boilerplate: BoilerplateConfig = Field(default_factory=BoilerplateConfig)
    special: bool = Field(default=True, description="Mask special-token ids inside document text.")
    keep_scores: bool = Field(default=False, description="Write token_scores (influence) beside the mask.")
    partitions: int = Field(default=8, ge=1, le=4096)
    samples: int = Field(default=20, ge=0, description="Masked spans decoded into the manifest.")


def _line_hashes(ids: np.ndarray, newline: np.ndarray, min_tokens: int) -> list[tuple[int, int, int]]:
    out = []
    for a, b in line_spans(ids, newline):
        if b - a >= min_tokens:
            out.append((xxhash.xxh64_intdigest(ids[a:b].astype(np.uint32).tobytes()), a, b))
    return out


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted set: a binary search per key instead of a scan of the set per call."""
    if not len(sorted_set) or not len(keys):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    return sorted_set[at] == keys


def _boundaries(ids: np.ndarray, special: np.ndarray) -> np.ndarray:
    """True at a document's first and last position when they hold a special token (BOS, EOS)."""
    edge = np.zeros(len(ids), bool)
    if len(ids):
        edge[0], edge[-1] = special[ids[0]], special[ids[-1]]
    return edge


def _is_reference(row: dict[str, Any], ref: ReferenceFilter) -> bool:
    return (ref.sources is None or row.get("source") in ref.sources) and (ref.langs is None or row.get("lang") in
                                                                           ref.langs)


def _docs(batch: pa.RecordBatch | pa.Table) -> list[np.ndarray]:
    """The ``input_ids`` of a batch as int64 arrays, through Arrow's offsets (no per-token Python ints)."""
    col = batch.column("input_ids")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = col.offsets.to_numpy() - col.offsets[0].as_py()
    return np.split(values, offsets[1:-1]) if len(col) else []


class _Tables:
    """Per-worker tokenizer facts: which ids contain a newline, which are special."""

    def __init__(self, tokenizer: Location):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer.read_text())
        vocab = self.tok.get_vocab_size(with_added_tokens=True)
        self.newline = np.zeros(vocab + 1, bool)
        for i in range(vocab):
            if "\n" in self.tok.decode([i], skip_special_tokens=False):
                self.newline[i] = True
        self.special = np.zeros(vocab + 1, bool)
        for i, t in self.tok.get_added_tokens_decoder().items():
            if t.special:
                self.special[i] = True
        self.vocab = vocab


class CountJob:
    """Pass 1: boilerplate line hashes (hash-partitioned files) and n-gram counts (base and reference)."""

    def __init__(self, cfg: CleanConfig, tokenizer: Location, work: Location):
        self.cfg, self.tokenizer, self.work = cfg, tokenizer, work
        self.tables: _Tables | None = None

    def setup(self) -> None:
        if self.tables is None:
            self.tables = _Tables(self.tokenizer)

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        assert self.tables is not None
        cfg, key = self.cfg, task.key.split("-", 1)[1]
        out.data.write_empty = False
        line_keys: list[int] = []
        ngram = cfg.influence.enabled and cfg.influence.model == "ngram"
        base = NGramCounts(cfg.influence.order) if ngram else None
        ref = NGramCounts(cfg.influence.order) if ngram else None
        for batch in iter_batches(task.payload, 1024, columns=["input_ids", "source", "lang"]):
            docs = _docs(batch)
            if cfg.boilerplate.enabled:
                for ids in docs:
                    lines = _line_hashes(ids, self.tables.newline, cfg.boilerplate.min_tokens)
                    line_keys.extend({h for h, _, _ in lines})  # a line counts once per document
            if base is not None and ref is not None:
                rows = batch.select(["source", "lang"]).to_pylist()
                base.add_buffered(docs)
                ref.add_buffered([d for d, r in zip(docs, rows, strict=True)
                                  if _is_reference(r, cfg.influence.reference)])
        if base is not None and ref is not None:
            base.flush()
            ref.flush()
        if cfg.boilerplate.enabled:
            keys, counts = np.unique(np.array(line_keys, dtype=np.uint64), return_counts=True)
            part = (keys % np.uint64(cfg.partitions)).astype(np.int64)
            for p in range(cfg.partitions):
                buf = io.BytesIO()
                np.savez(buf, keys=keys[part == p], counts=counts[part == p])
                (self.work / "_lines" / f"p{p:04d}" / f"{key}.npz").write_bytes(buf.getvalue())
        if base is not None:
            (self.work / "_ngrams" / f"{key}.pkl").write_bytes(pickle.dumps((base, ref)))
        return {}


def _frequent_lines(partition: tuple[list[Location], int]) -> np.ndarray:
    """One partition's line hashes that occur in at least ``min_docs`` documents."""
    files, min_docs = partition
    keys, counts = [], []
    for f in files:
        with np.load(io.BytesIO(f.read_bytes())) as z:
            keys.append(z["keys"])
            counts.append(z["counts"])
    if not keys:
        return np.zeros(0, np.uint64)
    k = np.concatenate(keys)
    uniq, inv = np.unique(k, return_inverse=True)
    total = np.bincount(inv, weights=np.concatenate(counts))
    return uniq[total >= min_docs]


class MaskJob:
    """Scores and masks per document; in ``histogram`` mode only the influence-score histogram."""

    def __init__(self, cfg: CleanConfig, tokenizer: Location, boiler: np.ndarray, models: Any, threshold: float | None,
                 histogram: bool, stage: str = "clean", seed: int = 0):
        self.cfg, self.tokenizer, self.boiler = cfg, tokenizer, boiler
        self.models, self.threshold, self.histogram = models, threshold, histogram
        self.stage, self.seed = stage, seed  # salt of the span-sample ranking (pipeline.sampling)
        self.tables: _Tables | None = None

    def setup(self) -> None:
        if self.tables is None:
            self.tables = _Tables(self.tokenizer)
        if isinstance(self.models, dict):  # hf: load the models once per worker
            from stages.clean.hf import HFScorer

            self.models = HFScorer(**self.models)
        elif isinstance(self.models, tuple) and isinstance(self.models[0], Location):  # n-gram: memory-map them
            self.models = (NGramLM.load(self.models[0].local_dir()), NGramLM.load(self.models[1].local_dir()))

    def batch_scores(self, docs: list[np.ndarray]) -> list[np.ndarray]:
        if not isinstance(self.models, tuple):
            return self.models.score_batch(docs)
        base, ref = self.models
        return [(np.log(r) - np.log(b)).astype(np.float32)
                for b, r in zip(base.prob_docs(docs), ref.prob_docs(docs), strict=True)]

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        assert self.tables is not None
        cfg, tables = self.cfg, self.tables
        if self.histogram:
            out.data.write_empty = False
            hist = np.zeros(SCORE_BINS, np.int64)
            tokens = 0
            for batch in iter_batches(task.payload, 1024, columns=["input_ids"]):
                docs = _docs(batch)
                for ids, s in zip(docs, self.batch_scores(docs), strict=True):
                    tokens += len(ids)  # boundaries are never masked, so they stay out of the quantile
                    hist += np.histogram(s[~_boundaries(ids, tables.special)], bins=SCORE_BINS, range=SCORE_RANGE)[0]
            return {"stats": {"histogram": hist.tolist(), "tokens": tokens}}
        schema = read_schema(task.payload)
        fields = [f for f in schema if f.name not in ("loss_mask", "token_scores")]
        fields.append(pa.field("loss_mask", pa.list_(pa.uint8())))
        if cfg.keep_scores and self.models is not None:
            fields.append(pa.field("token_scores", pa.list_(pa.float32())))
        out.data.schema = pa.schema(fields)
        masked: Counter[str] = Counter()
        per_lang: dict[str, Counter[str]] = {}
        samples: list[dict[str, Any]] = []
        rows_in = 0
        for batch in iter_batches(task.payload, 1024):
            masks, scores_col = [], []
            langs = batch.column("lang").to_pylist() if "lang" in batch.column_names else [None] * batch.num_rows
            doc_ids = batch.column("id").to_pylist() if "id" in batch.column_names else [None] * batch.num_rows
            docs = _docs(batch)
            all_scores = self.batch_scores(docs) if self.models is not None else [None] * len(docs)
            for ids, lang, s, doc_id in zip(docs, langs, all_scores, doc_ids, strict=True):
                m = np.ones(len(ids), np.uint8)
                edge = _boundaries(ids, tables.special)
                rules: dict[str, np.ndarray] = {}
                if cfg.repetition.enabled:
                    rules["repetition"] = repetition_mask(ids, cfg.repetition.min_period, cfg.repetition.max_period,
                                                          cfg.repetition.keep_repeats)
                if cfg.boilerplate.enabled and len(self.boiler):
                    bm = np.ones(len(ids), np.uint8)
                    lines = _line_hashes(ids, tables.newline, cfg.boilerplate.min_tokens)
                    hits = _member(np.array([h for h, _, _ in lines], np.uint64), self.boiler)
                    for (_, a, b), hit in zip(lines, hits, strict=True):
                        if hit:
                            bm[a:b] = 0
                    rules["boilerplate"] = bm
                if cfg.special:
                    rules["special"] = (~tables.special[ids]).astype(np.uint8)
                if s is not None:
                    if cfg.influence.min_score is not None or cfg.influence.granularity == "global":
                        keep = s >= (self.threshold if self.threshold is not None else -np.inf)
                    else:
                        k = max(1, round(cfg.influence.keep_ratio * len(ids)))
                        keep = np.zeros(len(ids), bool)
                        ranked = np.where(edge, np.inf, s)  # boundaries count as kept
                        keep[np.argsort(-ranked, kind="stable")[:k]] = True
                    rules["influence"] = keep.astype(np.uint8)
                for name, r in rules.items():
                    r[edge] = 1  # document boundaries (BOS/EOS) stay trainable, whatever a rule says
                    masked[f"{name}_tokens"] += int((r == 0).sum())
                    m &= r
                lc = per_lang.setdefault(lang or "und", Counter())
                lc["tokens"] += len(ids)
                lc["masked"] += int((m == 0).sum())
                masked["tokens"] += len(ids)
                masked["masked"] += int((m == 0).sum())
                if cfg.samples and (m == 0).any():
                    rank = salted_hash(doc_id or f"{task.key}:{rows_in + len(masks)}", self.seed, self.stage,
                                       "masked-samples")
                    # up-sampled copies share an id, hence a rank: one example per document
                    fresh = all(x["rank"] != rank for x in samples)
                    if fresh and (len(samples) < cfg.samples or rank < samples[-1]["rank"]):
                        samples.append(_masked_sample(tables.tok, ids, m, rules, rank, lang, doc_id))
                        samples.sort(key=lambda x: x["rank"])
                        del samples[cfg.samples:]
                masks.append(m)
                scores_col.append(s)
            t = batch.drop_columns([c for c in ("loss_mask", "token_scores") if c in batch.column_names])
            t = t.append_column("loss_mask", pa.array([x for x in masks], pa.list_(pa.uint8())))
            if cfg.keep_scores and self.models is not None:
                t = t.append_column("token_scores", pa.array(scores_col, pa.list_(pa.float32())))
            out.data.write(t)
            rows_in += batch.num_rows
        return {"rows_in": rows_in, "rows_out": rows_in,
                "stats": {**dict(masked), "per_lang": {k: dict(v) for k, v in per_lang.items()}, "samples": samples}}


def _masked_sample(tok: Any, ids: np.ndarray, m: np.ndarray, rules: dict[str, np.ndarray], rank: int,
                   lang: str | None, doc_id: str | None = None) -> dict[str, Any]:
    """The document's longest masked run (at most 40 tokens) decoded, with 12 tokens of context on each
    side, so a reader sees what was removed and where: ``context`` marks the span with ⟦ ⟧.

    A byte-level token may hold part of a UTF-8 character (CJK text often): each cut is moved, by at
    most a few tokens, to where both sides decode without U+FFFD, so no character is shown broken."""
    zero = (m == 0).astype(np.int8)
    edges = np.diff(np.r_[0, zero, 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    k = int(np.argmax(ends - starts))
    a, b = int(starts[k]), min(int(ends[k]), int(starts[k]) + 40)

    def dec(x: np.ndarray) -> str:
        return tok.decode(x.tolist(), skip_special_tokens=False)

    bad = "\ufffd"
    rule_names = [n for n, r in rules.items() if r[a] == 0]
    lo, hi = max(0, a - 12), min(len(ids), b + 12)
    # widen the span over a split character, narrow the outer context off partial characters, and
    # drop what is left of a character no token boundary completes (merges may cross characters)
    for _ in range(16):
        moved = False
        if b < hi and (dec(ids[a:b]).endswith(bad) or dec(ids[b:hi]).startswith(bad)):
            b, moved = b + 1, True
        if a > lo and (dec(ids[a:b]).startswith(bad) or dec(ids[lo:a]).endswith(bad)):
            a, moved = a - 1, True
        if not moved:
            break
    while lo < a and dec(ids[lo:a]).startswith(bad):
        lo += 1
    while hi > b and dec(ids[b:hi]).endswith(bad):
        hi -= 1
    left, span, right = (dec(ids[lo:a]).rstrip(bad), dec(ids[a:b]).strip(bad), dec(ids[b:hi]).lstrip(bad))
    return {"text": span, "context": f"{left.lstrip(bad)}⟦{span}⟧{right.rstrip(bad)}",
            "rules": rule_names, "lang": lang, "rank": rank, "id": doc_id}


def threshold_for(hist: np.ndarray, keep_ratio: float) -> float:
    """The score above which ``keep_ratio`` of the histogram's tokens lie (bin resolution)."""
    total = hist.sum()
    if total == 0:
        return -np.inf
    above = np.cumsum(hist[::-1])[::-1]  # tokens in bins >= b
    b = int(np.flatnonzero(above >= keep_ratio * total).max())
    edges = np.linspace(*SCORE_RANGE, SCORE_BINS + 1)
    return float(edges[b]) if b > 0 else -np.inf


@register_stage
class CleanStage(Stage[CleanConfig]):
    """Per-token loss masks from the configured scorers."""

    config_model = CleanConfig
    code_version: ClassVar[str] = "3"

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return report_part(manifest, stage_dir)

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        files = [f for _, f in ctx.input_files()]
        if files and "input_ids" not in read_schema(files[0]).names:
            raise TokenmillError(f"stage '{ctx.name}': input has no input_ids (put an encode stage before it)")
        tok = ctx.artifact("tokenizer")
        tasks = [ShardTask(f"{i:05d}", f) for i, f in enumerate(files)]
        boiler = np.zeros(0, np.uint64)
        models = None
        if cfg.boilerplate.enabled or cfg.influence.enabled:
            ctx.map_shards(CountJob(cfg, tok, ctx.work_dir), [ShardTask(f"count-{t.key}", t.payload)
                                                                     for t in tasks], count_rows=False)
        if cfg.boilerplate.enabled:
            partitions = [(d.glob("*.npz"), cfg.boilerplate.min_docs) for d in (ctx.work_dir / "_lines").glob("p*")]
            found = ctx.map_function("boilerplate", _frequent_lines, partitions)
            boiler = np.sort(np.concatenate(found)) if found else boiler
        if cfg.influence.enabled and cfg.influence.model == "hf":
            inf = cfg.influence
            if not inf.base_model or not inf.reference_model:
                raise TokenmillError(f"stage '{ctx.name}': influence.model 'hf' needs base_model and reference_model")
            from stages.clean.hf import _require

            _require()  # a clear error on the driver when the extra is missing
            models = {"base_dir": inf.base_model, "ref_dir": inf.reference_model, "device": inf.device,
                      "batch_size": inf.batch_size}
        elif cfg.influence.enabled:
            base = ref = None
            for f in (ctx.work_dir / "_ngrams").glob("*.pkl"):
                b, r = pickle.loads(f.read_bytes())
                base = b if base is None else base.merge(b)
                ref = r if ref is None else ref.merge(r)
            if ref is None or base is None or ref.total_tokens() == 0:
                raise TokenmillError(f"stage '{ctx.name}': the influence reference filter selects no documents")
            from tokenizers import Tokenizer

            vocab = Tokenizer.from_str(tok.read_text()).get_vocab_size(with_added_tokens=True)
            dirs = (ctx.work_dir / "_models" / "base", ctx.work_dir / "_models" / "reference")
            for lm, d in zip((NGramLM(base, vocab), NGramLM(ref, vocab)), dirs, strict=True):
                with d.writing_dir() as local:
                    lm.save(local)
            del base, ref
            models = dirs  # workers memory-map them (MaskJob.setup)
        threshold = None
        hist = None
        if models is not None and cfg.influence.min_score is not None:
            threshold = cfg.influence.min_score
        elif models is not None and cfg.influence.granularity == "global":
            res = ctx.map_shards(MaskJob(cfg, tok, boiler, models, None, True),
                                 [ShardTask(f"hist-{t.key}", t.payload) for t in tasks], count_rows=False)
            hist = np.sum([np.array(r["stats"]["histogram"]) for r in res], axis=0) if res else np.zeros(SCORE_BINS)
            # keep_ratio is a share of ALL tokens; boundaries are always kept, so the maskable tokens give up
            # the whole masked budget: keep 1 - (1 - keep_ratio) * tokens / maskable of them.
            maskable = int(hist.sum())
            tokens = sum(int(r["stats"]["tokens"]) for r in res)
            keep = 1 - (1 - cfg.influence.keep_ratio) * tokens / maskable if maskable else 1.0
            threshold = threshold_for(hist, max(0.0, keep))
        results = ctx.map_shards(MaskJob(cfg, tok, boiler, models, threshold, False, ctx.name, ctx.seed), tasks)
        merged: Counter[str] = Counter()
        per_lang: dict[str, Counter[str]] = {}
        samples: list[dict[str, Any]] = []
        for r in results:
            st = r["stats"]
            merged.update({k: v for k, v in st.items() if isinstance(v, int)})
            for lang, c in st["per_lang"].items():
                per_lang.setdefault(lang, Counter()).update(c)
            samples.extend(st["samples"])
        samples.sort(key=lambda x: x["rank"])  # the documents with the smallest id hashes: spread over the corpus
        samples = [x for i, x in enumerate(samples) if i == 0 or x["rank"] != samples[i - 1]["rank"]]  # copies
        total = merged["tokens"] or 1
        for side in ("_lines", "_ngrams", "_models"):
            (ctx.work_dir / side).rmtree()
        ctx.manifest.stats.update({
            "tokens": merged["tokens"], "masked_tokens": merged["masked"],
            "masked_share": round(merged["masked"] / total, 6),
            "masked_share_by_scorer": {k.removesuffix("_tokens"): round(v / total, 6) for k, v in merged.items()
                                       if k.endswith("_tokens") and k != "tokens"},
            "masked_share_by_lang": {k: round(v["masked"] / max(v["tokens"], 1), 6) for k, v in
                                     sorted(per_lang.items(), key=lambda kv: -kv[1]["tokens"])},
            "boilerplate_lines": len(boiler), "influence_threshold": threshold,
            "score_histogram": _coarse(hist) if hist is not None else None,
            "masked_samples": samples[: cfg.samples],
        })

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        rows = [("tokens masked", f"{s.get('masked_tokens', 0):,} of {s.get('tokens', 0):,} "
                                  f"({100 * s.get('masked_share', 0):.2f}%)")]
        rows += [(f"  by {k}", f"{100 * v:.2f}%") for k, v in s.get("masked_share_by_scorer", {}).items()]
        rows += [(f"masked [{i}]", repr(x.get("context") or x["text"])[:90] + f" ({', '.join(x['rules'])})")
                 for i, x in enumerate(_readable(s.get("masked_samples", []))[:6])]
        return rows


def _coarse(hist: np.ndarray, bins: int = 60) -> dict[str, int]:
    """The score histogram in 60 bins for the manifest."""
    h = hist.reshape(bins, -1).sum(axis=1)
    edges = np.linspace(*SCORE_RANGE, bins + 1)
    return {f"{edges[i]:.1f}": int(h[i]) for i in range(bins) if h[i]}


def _readable(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples with visible text first: a run of spaces tells a reader little."""
    return sorted(samples, key=lambda x: not x["text"].strip())
