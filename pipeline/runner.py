"""Compile a spec to its DAG, decide what is up to date, and run the rest on Ray, one stage at a time.

Each stage works in ``<output>/.tmp/<stage>-<fingerprint>/`` and appears atomically: the folder is
renamed to ``<output>/<stage>/`` and ``manifest.json`` is written last. On an object store, which
cannot rename a folder, the old manifest is deleted first, the objects are copied server side and
the manifest is again written last: it is the commit point either way. A stage whose manifest
carries the fingerprint it would have now (its config, its inputs' fingerprints, the seed and the
code version) is skipped. An interrupted stage keeps its temp folder, so a re-run with the same
fingerprint reuses every shard that was committed.
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.context import DatasetInput, RawInput, StageContext
from pipeline.dag import Dag, build_dag
from pipeline.errors import SpecError, StageFailed, TokenmillError
from pipeline.executor import SCRATCH_DIR, SHARDS_DIR
from pipeline.locations import Location, LocationError, expand_paths
from pipeline.manifest import MANIFEST_NAME, canonical_json, read_manifest, sha256_file, sha256_text, write_json_atomic
from pipeline.memory import release_memory
from pipeline.progress import Reporter
from pipeline.ray_session import ray_session
from pipeline.spec import ArtifactInput, FilesInput, LoadedSpec

TMP_DIR = ".tmp"


@dataclass
class StagePlan:
    name: str
    type: str
    fingerprint: str
    action: str  # "run" or "skip"
    reason: str


@dataclass
class Plan:
    dag: Dag
    output: Location
    stages: list[StagePlan]
    input_fingerprints: dict[str, str]

    def by_name(self) -> dict[str, StagePlan]:
        return {s.name: s for s in self.stages}


def input_fingerprint(spec: LoadedSpec, name: str, inp: FilesInput | ArtifactInput) -> str:
    if isinstance(inp, ArtifactInput):
        key = f"inputs.{name}.path"
        try:
            loc = artifact_location(spec, inp)
            if not loc.is_file():
                raise SpecError(spec.source, [f"{key}: file not found: {loc.uri}"])
            return sha256_file(loc)
        except LocationError as exc:
            raise SpecError(spec.source, [f"{key}: {exc}"]) from None
        except OSError as exc:
            raise SpecError(spec.source, [f"{key}: cannot read {loc.uri}: {exc}"]) from None
    try:
        files = expand_paths(inp.paths, spec.base_dir, allow_empty=inp.allow_empty)
    except LocationError as exc:
        raise SpecError(spec.source, [f"inputs.{name}.paths: {exc}"]) from None
    if not files and not inp.allow_empty:
        raise SpecError(spec.source, [f"inputs.{name}.paths: no file matches {inp.paths}"])
    listing = [(f.uri, *f.info()) for f in files]
    return sha256_text(canonical_json({"spec": inp.model_dump(mode="json"), "files": listing}))


def artifact_location(spec: LoadedSpec, inp: ArtifactInput) -> Location:
    """An artifact input's file: a path relative to the spec, or a URI."""
    return Location.parse(inp.path, spec.base_dir)


def stage_code_hash(cls: type) -> str:
    try:
        return sha256_text(inspect.getsource(inspect.getmodule(cls)))[:16]  # type: ignore[arg-type]
    except (OSError, TypeError):
        return "unknown"


def make_plan(spec: LoadedSpec, output: Location | Path, force: list[str] | None = None) -> Plan:
    output = Location.of(output)
    dag = build_dag(spec)
    force = force or []
    unknown = [f for f in force if f not in dag.nodes]
    if unknown:
        names = ", ".join(dag.order)
        raise SpecError(spec.source, [f"--force: unknown stage '{u}' (stages: {names})" for u in unknown])
    forced = dag.downstream_closure(force)
    fps: dict[str, str] = {name: input_fingerprint(spec, name, inp) for name, inp in dag.inputs.items()}
    try:
        output.exists()
    except OSError as exc:  # an unreachable endpoint, missing credentials, a denied bucket
        raise SpecError(spec.source, [f"output: cannot reach {output.uri}: {exc}"]) from None
    plans: list[StagePlan] = []
    for name in dag.order:
        node = dag.nodes[name]
        payload = {
            "type": node.config.type,
            "config": node.config.fingerprint_payload(),
            "seed": spec.model.seed,
            "tokenmill": __version__,
            "code": [node.cls.code_version, stage_code_hash(node.cls)],
            "inputs": [fps[i] for i in node.dataset_inputs],
            "artifacts": {f: fps[r] for f, r in node.artifact_inputs.items()},
        }
        fp = sha256_text(canonical_json(payload))
        fps[name] = fp
        manifest = read_manifest(output / name)
        if name in forced:
            action, reason = "run", "forced" if name in force else "downstream of a forced stage"
        elif manifest is None:
            action, reason = "run", "no output yet" if not (output / name).exists() else "incomplete output"
        elif manifest.get("fingerprint") != fp or manifest.get("status") != "complete":
            action, reason = "run", "config or inputs changed"
        else:
            action, reason = "skip", "up to date"
        plans.append(StagePlan(name, node.config.type, fp, action, reason))
    return Plan(dag, output, plans, {k: v for k, v in fps.items() if k in dag.inputs})


def run_pipeline(
    spec: LoadedSpec,
    *,
    output: str | None = None,
    force: list[str] | None = None,
    address: str | None = None,
    reporter: Reporter | None = None,
) -> Plan:
    """Run every stage that is not up to date; returns the plan that was carried out."""
    out = spec.output_dir(output)
    plan = make_plan(spec, out, force)
    reporter = reporter or Reporter()
    out.mkdir()
    to_run = [s for s in plan.stages if s.action == "run"]
    with reporter:
        for sp in plan.stages:
            if sp.action == "skip":
                reporter.stage_skipped(sp.name)
        if to_run:
            with ray_session(spec.model.ray, address):
                for sp in to_run:
                    _run_stage(spec, plan, sp, reporter)
                    release_memory()
    _write_run_summary(out, spec, plan)
    from pipeline.report import build_report

    build_report(out)
    return plan


def _run_stage(spec: LoadedSpec, plan: Plan, sp: StagePlan, reporter: Reporter) -> None:
    dag, out = plan.dag, plan.output
    node = dag.nodes[sp.name]
    fps = {**plan.input_fingerprints, **{s.name: s.fingerprint for s in plan.stages}}
    work = out / TMP_DIR / f"{sp.name}-{sp.fingerprint[:16]}"
    work.mkdir()
    datasets, raw = [], []
    for ref in node.dataset_inputs:
        if ref in dag.inputs:
            raw.append(RawInput(ref, dag.inputs[ref], spec.base_dir))  # type: ignore[arg-type]
        else:
            datasets.append(DatasetInput(ref, out / ref, read_manifest(out / ref) or {}))
    artifacts: dict[str, Location] = {}
    for fname, ref in node.artifact_inputs.items():
        if ref in dag.inputs:
            artifacts[fname] = artifact_location(spec, dag.inputs[ref])  # type: ignore[arg-type]
        else:
            upstream = dag.nodes[ref].cls
            rel = next(iter(upstream.artifacts.values()))
            artifacts[fname] = out / ref / rel
    ctx = StageContext(
        name=sp.name, config=node.config, seed=spec.model.seed, work_dir=work, output_root=out,
        datasets=datasets, raw_inputs=raw, artifact_paths=artifacts, reporter=reporter,
    )
    reporter.stage_started(sp.name, sp.type)
    started = time.time()
    t0 = time.perf_counter()
    stage = node.cls(node.config)
    try:
        stage.run(ctx)
    except TokenmillError:
        raise
    except Exception as exc:
        import traceback

        raise StageFailed(sp.name, traceback.format_exc() if os.environ.get("TOKENMILL_DEBUG") else repr(exc)) from exc
    mb = ctx.manifest
    if node.cls.reconciles_rows and not mb.reconciles():
        raise StageFailed(sp.name, f"row counts do not reconcile: {mb.to_dict()}")
    manifest: dict[str, Any] = {
        "stage": sp.name,
        "type": sp.type,
        "status": "complete",
        "fingerprint": sp.fingerprint,
        "tokenmill_version": __version__,
        "inputs": {ref: fps.get(ref) for ref in node.upstream()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        **mb.to_dict(),
        "files": _list_files(work),
        "artifacts": {**node.cls.artifacts, **mb.artifacts},
        "config": node.config.model_dump(mode="json"),
        "stats": mb.stats,
    }
    _commit(work, out / sp.name, out, manifest)
    reporter.stage_finished(sp.name, manifest)


def _list_files(work: Location) -> list[dict[str, Any]]:
    files = []
    for f, size in work.file_sizes():
        rel = f.relpath(work)
        if not rel.startswith("_") and not f.name.startswith("."):
            files.append({"path": rel, "bytes": size})
    return files


def _commit(work: Location, final: Location, out: Location, manifest: dict[str, Any]) -> None:
    """Put the finished work folder in place of ``final``; writing the manifest last commits it."""
    if work.is_local:
        (work / SHARDS_DIR).rmtree()
        (work / SCRATCH_DIR).rmtree()
        trash = None
        if final.exists():
            trash = out / TMP_DIR / f"trash-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final.path, trash.path)
        os.replace(work.path, final.path)
        if trash is not None:
            trash.rmtree()
    else:  # no folder renames on object stores: uncommit, replace the objects, commit
        (final / MANIFEST_NAME).unlink()
        final.rmtree()
        work.copy_tree(final, skip=(SHARDS_DIR, SCRATCH_DIR))
    write_json_atomic(final / MANIFEST_NAME, manifest)  # last: marks the stage complete
    if not work.is_local:
        work.rmtree()  # after the commit: until then its shard markers let a re-run resume


def _write_run_summary(out: Path, spec: LoadedSpec, plan: Plan) -> None:
    summary = {
        "pipeline": spec.name,
        "stages": [
            {"name": s.name, "type": s.type, "fingerprint": s.fingerprint, "action": s.action, "reason": s.reason}
            for s in plan.stages
        ],
    }
    write_json_atomic(out / "run.json", summary)
