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

import ast
import contextlib
import functools
import importlib.util
import os
import pkgutil
import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from pipeline import __version__
from pipeline.context import DatasetInput, RawInput, StageContext
from pipeline.dag import Dag, build_dag
from pipeline.errors import SpecError, StageFailed, TokenmillError
from pipeline.executor import SCRATCH_DIR, SHARDS_DIR
from pipeline.locations import Location, LocationError, expand_paths
from pipeline.manifest import MANIFEST_NAME, canonical_json, read_manifest, sha256_file, sha256_text, write_json_atomic
from pipeline.memory import release_memory
from pipeline.output_guard import TMP_DIR, OutputLock, claim_output, sweep_work_dirs
from pipeline.progress import Reporter
from pipeline.ray_session import ray_session_in_background
from pipeline.spec import ArtifactInput, FilesInput, LoadedSpec
from pipeline.stage_api import worker_preload


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
    listing = [file_identity(f, spec.base_dir) for f in files]
    return sha256_text(canonical_json({"spec": inp.model_dump(mode="json"), "files": listing}))


#: files up to this size are hashed whole; bigger ones by their first and last MB (and their size)
FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


def file_identity(f: Location, base_dir: Path) -> list[Any]:
    """What a raw input file *is*, independent of where the spec's folder lives and of mtimes:
    its path relative to the spec's folder (or its URI), its size and an xxh64 of its content.

    Files up to 64 MB are hashed whole (xxh64 reads ~5 GB/s, so ~10 ms); bigger ones by size plus
    their first and last MB, which catches appends, truncations and rewrites of either end but
    not an edit of the same length in the middle -- ``--force <stage>`` covers that case. Hashing
    whole multi-GB corpora on every ``plan`` would cost minutes (and a full download from object
    stores)."""
    size = f.size()
    h = xxhash.xxh64()
    try:
        with f.open() as fh:
            if size <= FULL_HASH_BYTES:
                while block := fh.read(8 << 20):
                    h.update(block)
                how = "xxh64"
            else:
                h.update(fh.read(_EDGE_BYTES))
                fh.seek(size - _EDGE_BYTES)
                h.update(fh.read(_EDGE_BYTES))
                how = "xxh64-head-tail"
    except OSError as exc:  # unreadable (denied, EIO): the reading stage rejects or names it; once readable, it re-runs
        return [f.relative_to(base_dir), size, f"unreadable:{type(exc).__name__}"]
    return [f.relative_to(base_dir), size, f"{how}:{h.hexdigest()}"]


def check_embedded_ray(spec: LoadedSpec, address: str | None) -> None:
    """``ray.num_cpus`` sizes the embedded Ray, which starts one worker process per CPU: more than
    the host has only oversubscribes it (100,000 spawned 126 processes and a 10 GB raylet on 2 cores).
    An error rather than a silent cap, so the spec says what really runs."""
    opts = spec.model.ray
    if address or opts.address or os.environ.get("RAY_ADDRESS") or not opts.num_cpus:
        return  # a cluster sizes itself; the key is unused there
    host = os.cpu_count() or 1
    if opts.num_cpus > host:
        raise SpecError(spec.source, [f"ray.num_cpus: {opts.num_cpus} is more than this host's {host} CPUs "
                                      f"(allowed: 1 to {host}, or leave it out to use all)"])


def artifact_location(spec: LoadedSpec, inp: ArtifactInput) -> Location:
    """An artifact input's file: a path relative to the spec, or a URI."""
    return Location.parse(inp.path, spec.base_dir)


def stage_code_hash(cls: type) -> str:
    """A hash of the code a stage runs: every module of its stage package, and every module of
    tokenmill's own packages (``stages``, ``pipeline``, or a plugin's top-level package) that they
    import, transitively, read with :mod:`ast` from their source files and hashed in name order.
    Imports only for type checking are not followed. Over-inclusive on purpose: an engine edit may re-run a
    stage needlessly, but a changed helper never leaves stale output "up to date"."""
    try:
        return sha256_text(canonical_json(_module_closure(cls.__module__, *_package_modules(cls.__module__))))[:16]
    except (OSError, TypeError, SyntaxError):
        return "unknown"


def _runtime_import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements of a module, but those under ``if TYPE_CHECKING:``. Only statements are
    walked (an import is a statement, and no expression holds one): walking every expression node
    made fingerprinting cost 1.3 s of CPU per plan, twice per run, before Ray even started."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        todo.extend(child for child in ast.iter_child_nodes(node)
                    if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case))


@functools.lru_cache(maxsize=4096)
def _imported_names(name: str, is_pkg: bool, source: str) -> tuple[str, ...]:
    """Absolute names a module's runtime imports may refer to (modules, or attributes of them).
    Cached by the module's source text: a run plans twice and its stages share most modules."""
    out: list[str] = []
    for node in _runtime_import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out += [base, *(f"{base}.{a.name}" for a in node.names)]  # names may be submodules
    return tuple(out)


def _package_modules(module: str) -> list[str]:
    """Every module of the stage package ``module`` belongs to (``stages.<family>.*`` for
    ``stages.<family>.stage``): a stage package's code is all of it, imported or not."""
    parts = module.split(".")
    if parts[0] != "stages" or len(parts) < 3:
        return []
    spec = importlib.util.find_spec(".".join(parts[:2]))
    if spec is None or not spec.submodule_search_locations:
        return []
    prefix = ".".join(parts[:2]) + "."
    return sorted(m.name for m in pkgutil.walk_packages(spec.submodule_search_locations, prefix))


def _module_closure(*roots: str) -> list[tuple[str, str]]:
    packages = {roots[0].split(".")[0], "stages", "pipeline"}
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        source = Path(spec.origin).read_text(encoding="utf-8")
        seen[name] = source
        for mod in _imported_names(name, spec.submodule_search_locations is not None, source):
            if mod.split(".")[0] in packages and mod not in seen:
                try:
                    if importlib.util.find_spec(mod) is not None:
                        todo.append(mod)
                except (ImportError, ValueError):
                    pass  # an attribute imported from a module, not a submodule
    return sorted(seen.items())


def make_plan(spec: LoadedSpec, output: Location | Path, force: list[str] | None = None,
              input_fingerprints: dict[str, str] | None = None) -> Plan:
    output = Location.of(output)
    dag = build_dag(spec)
    force = force or []
    unknown = [f for f in force if f not in dag.nodes]
    if unknown:
        names = ", ".join(dag.order)
        raise SpecError(spec.source, [f"--force: unknown stage '{u}' (stages: {names})" for u in unknown])
    forced = dag.downstream_closure(force)
    fps: dict[str, str] = dict(input_fingerprints) if input_fingerprints is not None else {
        name: input_fingerprint(spec, name, inp) for name, inp in dag.inputs.items()}
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
    break_lock: bool = False,
) -> Plan:
    """Run every stage that is not up to date; returns the plan that was carried out.

    The output's lock is held for the whole run, and the plan is made under it (another run may
    have changed the output meanwhile); see :mod:`pipeline.output_guard`."""
    check_embedded_ray(spec, address)
    out = spec.output_dir(output)
    first = make_plan(spec, out, force)  # spec and input errors first, before anything is written
    with OutputLock(out).acquire(break_lock=break_lock):
        # Ray starts in the background from here when a stage is to run: the plan under the lock,
        # claiming the output and the first stage's driver-side work overlap its start (pipeline.ray_session)
        to_start = [first.dag.nodes[s.name].cls for s in first.stages if s.action == "run"]
        ray_start = (ray_session_in_background(spec.model.ray, address, worker_preload(to_start))
                     if to_start else contextlib.nullcontext())
        report: _Background | None = None
        try:
            with ray_start:
                plan = make_plan(spec, out, force, first.input_fingerprints)  # what is up to date, under the lock
                claim_output(out, [s.name for s in plan.stages], spec.name)
                reporter = reporter or Reporter()
                to_run = [s for s in plan.stages if s.action == "run"]
                with reporter:
                    for sp in plan.stages:
                        if sp.action == "skip":
                            reporter.stage_skipped(sp.name)
                    _run_stages(spec, plan, to_run, reporter)
                    # the report reads only what the stages wrote: built while Ray shuts down (mostly a wait)
                    if to_run:
                        report = _Background(_write_report, out, spec, plan)
        finally:
            if report is not None:
                report.join()
        if report is None:
            _write_report(out, spec, plan)
    return plan


#: stages that run at once: two keep a run's driver memory to two stages' (see _run_stages)
STAGES_AT_ONCE = 2


def _run_stages(spec: LoadedSpec, plan: Plan, to_run: list[StagePlan], reporter: Reporter) -> None:
    """Run each stage in a thread of its own as soon as its inputs are committed, at most
    :data:`STAGES_AT_ONCE` at once. Among the stages ready to start: a
    :meth:`~pipeline.stage_api.Stage.driver_bound` one first (a tokenizer's training with HF works on
    the driver while Ray's workers serve the stages beside it), then the one with the most stages
    downstream (the path to the last output: the tokenizer before dedup), then spec order.

    Why at once: one stage at a time left cores idle in every stage's tail (its last tasks, its
    driver-side finish) and while a long stage ran alone (the pipeline benchmark at 4x: dedup alone
    for 8 s after the tokenizer, 9.6 idle CPU-seconds in a 45 s run); tasks of two stages share
    Ray's workers instead. Outputs do not depend on it: every stage reads only complete, committed
    inputs. A stage that :meth:`~pipeline.stage_api.Stage.holds_driver` runs alone. If a stage
    fails, no other starts, the running ones are waited for, and the first failure is raised; an
    interrupt does not wait (the threads are daemons: their stages stay uncommitted)."""
    names = {sp.name for sp in to_run}
    done: set[str] = set()
    pending = list(to_run)
    running: dict[str, _Background] = {}
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()
    order = _start_order(plan, to_run)
    alone = {sp.name for sp in to_run if _stage_of(plan, sp).holds_driver()}
    sharing = _sharing_cores(plan, to_run, alone)
    failure: BaseException | None = None

    def ready(sp: StagePlan) -> bool:
        return all(ref not in names or ref in done for ref in plan.dag.nodes[sp.name].upstream())

    def run(sp: StagePlan) -> None:
        try:
            _run_stage(spec, plan, sp, reporter, shares_cores=sp.name in sharing)
            release_memory()
        finally:
            finished.put(sp.name)

    while pending or running:
        if failure is None:
            for sp in sorted((p for p in pending if ready(p)), key=lambda p: order[p.name]):
                if len(running) >= STAGES_AT_ONCE or alone & set(running) or (running and sp.name in alone):
                    break
                pending.remove(sp)
                running[sp.name] = _Background(run, sp, name=f"tokenmill-{sp.name}", daemon=True)
        if not running:
            break  # after a failure: nothing left running
        name = _next_finished(finished)
        try:
            running.pop(name).join()
            done.add(name)
        except BaseException as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def _next_finished(finished: queue.SimpleQueue[str]) -> str:
    """The next stage name put on ``finished``, waiting in short steps so that an interrupt is seen."""
    while True:
        try:
            return finished.get(timeout=0.5)
        except queue.Empty:
            continue


def _downstream(plan: Plan, to_run: list[StagePlan]) -> dict[str, set[str]]:
    """Per stage of ``to_run`` (in DAG order), the stages of ``to_run`` that read its output,
    directly or through others."""
    below: dict[str, set[str]] = {sp.name: set() for sp in to_run}
    for sp in reversed(to_run):  # DAG order reversed: a stage's dependents are counted before it
        for ref in plan.dag.nodes[sp.name].upstream():
            if ref in below:
                below[ref] |= {sp.name} | below[sp.name]
    return below


def _start_order(plan: Plan, to_run: list[StagePlan]) -> dict[str, tuple[bool, int, int]]:
    """Sort key per stage name: driver-bound first, then more stages downstream, then spec order."""
    below = _downstream(plan, to_run)
    return {sp.name: (not _stage_of(plan, sp).driver_bound(), -len(below[sp.name]), i)
            for i, sp in enumerate(to_run)}


def _sharing_cores(plan: Plan, to_run: list[StagePlan], alone: set[str]) -> set[str]:
    """The stages that may run beside another stage of ``to_run``: one that neither feeds nor reads
    them (directly or through others), when neither holds the driver and two may run at once."""
    if STAGES_AT_ONCE < 2:
        return set()
    below = _downstream(plan, to_run)
    return {a for a in below for b in below
            if a != b and a not in alone and b not in alone and b not in below[a] and a not in below[b]}


def _stage_of(plan: Plan, sp: StagePlan) -> Any:
    """The stage object of a planned stage (to ask it how it runs)."""
    node = plan.dag.nodes[sp.name]
    return node.cls(node.config)


def _write_report(out: Location, spec: LoadedSpec, plan: Plan) -> None:
    _write_run_summary(out, spec, plan)
    from pipeline.report import build_report

    build_report(out)


class _Background:
    """``fn(*args)`` in a thread; ``join`` waits and raises what it raised.

    Used for the run report, built beside ``ray.shutdown()`` (which mostly waits for the embedded
    Ray's processes to exit, 1.5-2 s measured here; the report after it took as long again in the
    same single thread), and for each stage (:func:`_run_stages`)."""

    def __init__(self, fn: Any, *args: Any, name: str = "tokenmill-report", daemon: bool = False) -> None:
        import threading

        self.error: BaseException | None = None

        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # handed to the thread that joins
                self.error = exc

        self.thread = threading.Thread(target=target, name=name, daemon=daemon)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def _run_stage(spec: LoadedSpec, plan: Plan, sp: StagePlan, reporter: Reporter, shares_cores: bool = False) -> None:
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
        datasets=datasets, raw_inputs=raw, artifact_paths=artifacts, reporter=reporter, shares_cores=shares_cores,
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
    sweep_work_dirs(out, sp.name, keep=work.name)  # work folders of superseded fingerprints
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
