"""Everything a stage author imports: ``from pipeline.sdk import ...``.

A stage package under ``stages/`` (or a plugin registered through the ``tokenmill.stages`` entry
point group) needs only this module. It names the engine's contract and nothing of its machinery:

* **config**: :class:`StageConfig` (subclass it with ``type: Literal["<name>"]`` and typed keys),
  :class:`RefKind` (mark a field that names another stage or an input), :class:`RetryConfig`.
* **stages**: :class:`Stage` (one ``run(ctx)``) and :class:`MapStage` (``process(batch)`` per Arrow
  batch, one output part per input part), :class:`BatchResult`, :func:`register_stage`.
* **passes**: :class:`ShardTask`, :class:`ShardOutput` and a job with ``setup()``/``run(task, out)``
  run through ``ctx.map_shards`` (dataset parts), ``ctx.run_pass`` (a named side-file pass) or
  ``ctx.map_function`` (small results); every pass gets progress, resume markers and retries.
* **I/O**: :class:`Location` (local path or URI), Parquet helpers, JSON writes that are atomic.
* **report**: :class:`ReportPart` returned by ``Stage.report`` (charts and notes of the run report);
  a :class:`ReportChart` draws an SVG string, with the primitives of :mod:`svg_charts <pipeline.svg_charts>`
  (bars on a linear or log axis, grouped bars, bars side by side, a stacked bar, a line).
* **errors**: :class:`TokenmillError` (one line for the user), :class:`InputDataError`.
"""

from __future__ import annotations

from pipeline import svg_charts
from pipeline.commands import register_command
from pipeline.context import DatasetInput, RawInput, StageContext
from pipeline.errors import InputDataError, SpecError, TokenmillError
from pipeline.executor import ShardJob, ShardOutput, ShardTask, SidePass
from pipeline.locations import Location
from pipeline.manifest import read_json, read_manifest, write_json_atomic
from pipeline.memory import release_memory, releasing
from pipeline.parquet_io import (
    PartWriter,
    iter_batches,
    make_rejects,
    parquet_rows,
    read_one,
    read_schema,
    read_table,
    write_one,
)
from pipeline.registry import register_stage
from pipeline.retries import RetryConfig
from pipeline.stage_api import (
    BatchResult,
    MapStage,
    RefKind,
    ReportChart,
    ReportPart,
    ReportSection,
    Stage,
    StageConfig,
)

__all__ = [
    "BatchResult",
    "DatasetInput",
    "InputDataError",
    "Location",
    "MapStage",
    "PartWriter",
    "RawInput",
    "RefKind",
    "ReportChart",
    "ReportPart",
    "ReportSection",
    "RetryConfig",
    "ShardJob",
    "ShardOutput",
    "ShardTask",
    "SidePass",
    "SpecError",
    "Stage",
    "StageConfig",
    "StageContext",
    "TokenmillError",
    "iter_batches",
    "make_rejects",
    "parquet_rows",
    "read_json",
    "read_manifest",
    "read_one",
    "read_schema",
    "read_table",
    "register_command",
    "register_stage",
    "release_memory",
    "releasing",
    "svg_charts",
    "write_json_atomic",
    "write_one",
]
