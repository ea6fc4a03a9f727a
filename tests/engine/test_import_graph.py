"""The engine/stage boundary, checked on the source: no import circles, no engine module importing a
stage, no stage reaching past the SDK into the engine's runner or CLI, and validating a spec does not
load the CLI or the runner."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: engine modules a stage may not import (the machinery behind the SDK)
ENGINE_ONLY = {"pipeline.runner", "pipeline.cli", "pipeline.submit", "pipeline.report", "pipeline.dag",
               "pipeline.spec", "pipeline.ray_session", "pipeline.inspect_output"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("stages/**/*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _runtime_imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports at run time (module level or in functions), not those imported
    only for type checking."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for m in block.body for n in ast.walk(m)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _runtime_imports(path, set(mods)) - {name} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_engine_modules_never_import_stages():
    for name, deps in _graph().items():
        if name.startswith("pipeline") and name != "pipeline.registry":
            assert not {d for d in deps if d == "stages" or d.startswith("stages.")}, name
    # the registry imports the stages package only to discover its modules (importlib)
    assert _graph()["pipeline.registry"] <= {"stages", "pipeline.stage_api"}


def test_stages_use_the_sdk_not_the_engine_machinery():
    for name, deps in _graph().items():
        if name.startswith("stages"):
            assert not deps & ENGINE_ONLY, f"{name} imports {sorted(deps & ENGINE_ONLY)}"


def test_validating_a_spec_loads_neither_the_cli_nor_the_runner(tmp_path):
    (tmp_path / "x.jsonl").write_text("{\"text\": \"a\"}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ninputs:\n  raw: {paths: [x.jsonl]}\n"
                    "stages:\n  - {name: ingest, type: ingest, inputs: [raw]}\n")
    code = ("import sys; from pipeline.spec import load_spec; load_spec(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m in ('pipeline.cli', 'pipeline.runner', 'pipeline.report')))")
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
