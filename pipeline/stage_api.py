"""The contract every stage implements (stage authors import it through :mod:`pipeline.sdk`).

A stage type is one package (or module) in ``stages/``, or a plugin registered through the
``tokenmill.stages`` entry point group: a pydantic config model (the stage's YAML keys) and a class
with one ``run`` method, registered with :func:`register_stage`. Nothing in ``pipeline/`` changes
when a stage is added: the spec's discriminated union, the DAG, fingerprints, the runner, the
report (through :meth:`Stage.report`) and the CLI all read the registry (:mod:`pipeline.registry`).

Two shapes cover the stage families:

* :class:`Stage` -- the general form. ``run(ctx)`` may read its input datasets, start Ray work
  through ``ctx.map_shards`` or Ray Data, write Parquet under ``ctx.data_dir`` and artifacts under
  ``ctx.work_dir``, and report counts through ``ctx.manifest``.
* :class:`MapStage` -- a row-streaming stage (Arrow batches in, Arrow batches out). It implements
  ``process(batch) -> BatchResult``; the runner streams every input part through it on Ray workers,
  one output part per input part, so outputs are deterministic and resumable per file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.registry import register_stage as register_stage  # stage modules import it from here
from pipeline.retries import RetryConfig

if TYPE_CHECKING:
    from pipeline.context import StageContext
    from pipeline.locations import Location


class RefKind:
    """Marks a config field whose value names another stage or an input (a DAG edge)."""

    def __init__(self, kind: Literal["dataset", "artifact"]):
        self.kind = kind

    def __repr__(self) -> str:
        return f"RefKind({self.kind!r})"


STAGE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: a stage name is a folder beside these files of the output root (and at most this long: file
#: systems limit a name to 255 bytes, and temp folders add ``-<fingerprint>`` to it)
RESERVED_STAGE_NAMES = frozenset({"run.json", "report.html", "report.json", "manifest.json"})
STAGE_NAME_MAX = 100


class StageConfig(BaseModel):
    """Keys every stage has. Subclasses add ``type: Literal["..."]`` and their own parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=STAGE_NAME_PATTERN, max_length=STAGE_NAME_MAX,
                      description="Unique stage name; also its output folder.")
    type: str
    inputs: list[str] = Field(
        default_factory=list, description="Stages (for readers of raw files: inputs) whose datasets this stage reads."
    )
    description: str | None = Field(default=None, description="Free text; not part of the fingerprint.")
    retries: RetryConfig = Field(
        default_factory=RetryConfig, description="Fault tolerance on a cluster; not part of the fingerprint."
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.lower() in RESERVED_STAGE_NAMES:  # names starting '.' or '_' (.tmp, _shards) fail the pattern
            raise ValueError(f"{name!r} is reserved for tokenmill's own files of the output folder "
                             f"(reserved: {', '.join(sorted(RESERVED_STAGE_NAMES))})")
        return name

    def artifact_refs(self) -> dict[str, str]:
        """Config fields annotated ``RefKind('artifact')``: field name -> referenced stage or input."""
        refs: dict[str, str] = {}
        for fname, finfo in type(self).model_fields.items():
            if any(isinstance(m, RefKind) and m.kind == "artifact" for m in finfo.metadata):
                value = getattr(self, fname)
                if value is not None:
                    refs[fname] = value
        return refs

    def fingerprint_payload(self) -> dict[str, Any]:
        """What identifies this stage's work: every key but ``name``, ``description`` and ``retries``."""
        return self.model_dump(mode="json", exclude={"name", "description", "retries"})


C = TypeVar("C", bound=StageConfig)


@dataclass
class BatchResult:
    """What a :class:`MapStage` makes of one Arrow batch.

    Accounting rule, checked per shard: rows in + sum(added) == rows kept + sum(dropped) + rejected rows.
    ``dropped`` are rows removed on purpose (a filter, down-sampling); ``rejected`` are bad rows,
    with ``reason`` and ``detail`` columns, written to the stage's ``__rejects/``.
    """

    kept: pa.Table
    rejected: pa.Table | None = None
    dropped: Counter[str] = field(default_factory=Counter)
    added: Counter[str] = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportChart:
    """One chart of the run report: ``draw()`` returns an SVG document (a string starting with
    ``<svg``), or a ``data:`` URI of an image drawn some other way, or None to skip the chart.

    ``key`` names the chart on the page (``<key>:<stage>``), ``caption`` is shown under it. Draw with
    the primitives of :mod:`pipeline.svg_charts` (``from pipeline.sdk import svg_charts``): every run
    draws every stage's charts at its end, and hand-written SVG takes milliseconds where matplotlib
    took its import (about 1.2 s of CPU) and 0.2-0.4 s per chart. A stage that wants matplotlib
    anyway imports it inside ``draw`` and returns a PNG data URI (its own dependency)."""

    key: str
    caption: str
    draw: Callable[[], str | None]


@dataclass
class ReportSection:
    """A list of examples in the run report (masked spans, removed duplicates): ``items`` are
    (text shown as code, note) pairs, escaped by the report."""

    key: str
    title: str
    items: list[tuple[str, str]]


@dataclass
class ReportPart:
    """What a stage adds to the run report, computed from its manifest and its output folder."""

    #: tokens the stage's output holds (token stages), for the funnel's tokens column
    tokens_out: int | None = None
    #: extra "where rows went" entries of the funnel (label -> count)
    notes: dict[str, int] = field(default_factory=dict)
    charts: list[ReportChart] = field(default_factory=list)
    sections: list[ReportSection] = field(default_factory=list)
    #: extra data kept in report.json under the stage (e.g. a tokenizer's quality report)
    details: dict[str, Any] = field(default_factory=dict)


class Stage(Generic[C]):
    """Base class: one ``run`` method over a :class:`~pipeline.context.StageContext`."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[StageConfig]]
    #: whether downstream stages may read this stage's ``data/`` as a dataset
    produces_dataset: ClassVar[bool] = True
    #: artifact files this stage writes (name -> relative path), for stages whose RefKind("artifact") fields name it
    artifacts: ClassVar[dict[str, str]] = {}
    #: whether ``inputs`` name raw ``inputs:`` entries instead of stages
    reads_raw_inputs: ClassVar[bool] = False
    #: rows in + added == rows out + dropped + rejected holds for this stage's rows
    reconciles_rows: ClassVar[bool] = True
    #: bump when the stage's output for the same config changes (part of the fingerprint)
    code_version: ClassVar[str] = "1"
    #: modules the stage's workers import inside its functions (not at its module's import), which the
    #: embedded Ray's workers import while they wait for their first task (:func:`worker_preload`)
    worker_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: C):
        self.config = config

    def driver_bound(self) -> bool:
        """Whether this stage's work is mostly one driver thread that releases the GIL (a trainer's
        loop in Rust) while Ray's workers idle: the runner then starts it first among the stages
        ready to run (:func:`pipeline.runner._run_stages`)."""
        return False

    def holds_driver(self) -> bool:
        """Whether this stage holds the driver's GIL for long stretches (a native loop that does not
        release it): the runner then runs it alone, since the driver of a stage beside it could
        not hand its workers new tasks meanwhile."""
        return False

    def run(self, ctx: StageContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def report(cls, manifest: dict[str, Any], stage_dir: Location) -> ReportPart:
        """This stage's part of the run report (charts, funnel notes, tokens out); none by default."""
        return ReportPart()

    @classmethod
    def describe_file(cls, path: Location) -> tuple[str, dict[str, dict[str, Any]]] | None:
        """``pipeline inspect`` of a file in a format this stage writes: (title, {key: figures}), or
        None when the file is not one of its formats."""
        return None

    def summary(self, manifest: dict[str, Any]) -> list[tuple[str, str]]:
        """Rows for ``pipeline inspect``: (label, value) pairs from this stage's manifest stats."""
        return [(k, _short(v)) for k, v in manifest.get("stats", {}).items() if not isinstance(v, dict | list)]


class MapStage(Stage[C]):
    """A row-streaming stage: each input part is streamed batch by batch through :meth:`process`.

    Lifecycle: ``prepare(ctx)`` runs once on the driver (for example a counting pass) and returns a
    small picklable state; on each Ray worker the stage object is rebuilt, ``setup(state)`` runs once
    (load a tokenizer or a model), then ``process`` runs per batch. ``finish(ctx, stats)`` merges
    the per-shard ``BatchResult.stats`` into the manifest on the driver.
    """

    #: use an actor pool (state loaded once per actor) instead of stateless tasks
    use_actors: ClassVar[bool] = False
    #: plain tasks whose worker processes keep the set-up stage for the pass's later shards: ``setup``
    #: once per worker like an actor pool, without its process start (preferred over ``use_actors``)
    reuse_setup: ClassVar[bool] = False
    #: rows per Arrow batch read from the input parts
    batch_rows: ClassVar[int] = 4096
    #: CPUs one worker occupies
    worker_cpus: ClassVar[float] = 1.0

    def prepare(self, ctx: StageContext) -> Any:
        return None

    def setup(self, state: Any) -> None:
        self.state = state

    def process(self, batch: pa.Table) -> BatchResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema | None:
        """The schema of ``kept`` (so empty parts still carry it); ``None``: derive from batches."""
        return None

    def finish(self, ctx: StageContext, shard_stats: Sequence[dict[str, Any]]) -> None:
        return None

    def run(self, ctx: StageContext) -> None:
        ctx.map_stage(self)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def iter_ref_fields(config: StageConfig) -> Iterator[tuple[str, str, str]]:
    """(field path, referenced name, kind) for every DAG edge a stage config declares."""
    for i, ref in enumerate(config.inputs):
        yield f"inputs[{i}]", ref, "dataset"
    for fname, ref in config.artifact_refs().items():
        yield fname, ref, "artifact"


def worker_preload(stages: list[type[Stage]]) -> list[str]:
    """Modules for the embedded Ray's workers to import as they start, before their first task: the
    executor, the stages' own modules and their :attr:`Stage.worker_imports`, and pandas when it is
    installed (pyarrow imports it on a process's first ``pa.array``, whatever the input).

    Why: a worker's first task imported these on the run's critical path, ~0.9 s per worker here
    (pandas 0.33 s, the executor and a stage module ~0.3 s, awkward 0.2 s for encode), while the
    prestarted workers sat idle as the driver planned and Ray started."""
    import importlib.util

    modules = ["pandas"] if importlib.util.find_spec("pandas") is not None else []
    modules.append("pipeline.executor")
    for cls in stages:
        modules += [cls.__module__, *cls.worker_imports]
    return list(dict.fromkeys(modules))
