"""Compile a validated spec into a DAG of stages: check every reference, its kind, and cycles."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import SpecError
from pipeline.registry import discover_stages, stage_class
from pipeline.stage_api import Stage, StageConfig, iter_ref_fields

if TYPE_CHECKING:
    from pipeline.spec import ArtifactInput, FilesInput, LoadedSpec


@dataclass
class StageNode:
    index: int
    config: StageConfig
    cls: type[Stage]
    dataset_inputs: list[str] = field(default_factory=list)
    artifact_inputs: dict[str, str] = field(default_factory=dict)  # field -> stage or input name

    @property
    def name(self) -> str:
        return self.config.name

    def upstream(self) -> list[str]:
        return [*self.dataset_inputs, *self.artifact_inputs.values()]


@dataclass
class Dag:
    inputs: dict[str, FilesInput | ArtifactInput]
    nodes: dict[str, StageNode]
    order: list[str]  # topological, ties broken by spec order

    def downstream_closure(self, names: list[str]) -> set[str]:
        """The named stages and every stage that depends on them, directly or not."""
        out = set(names)
        for name in self.order:
            if any(up in out for up in self.nodes[name].upstream()):
                out.add(name)
        return out

    def edges(self) -> list[tuple[str, str, str]]:
        """(from, to, kind) for display."""
        out = []
        for name in self.order:
            node = self.nodes[name]
            out += [(src, name, "dataset") for src in node.dataset_inputs]
            out += [(src, name, f"artifact:{f}") for f, src in node.artifact_inputs.items()]
        return out


def build_dag(spec: LoadedSpec) -> Dag:
    inputs = dict(spec.model.inputs)
    nodes: dict[str, StageNode] = {}
    problems: list[str] = []
    configs = spec.stages
    by_name = {c.name: (i, c) for i, c in enumerate(configs)}

    for i, cfg in enumerate(configs):
        cls = stage_class(cfg.type)
        node = StageNode(i, cfg, cls)
        for path, ref, kind in iter_ref_fields(cfg):
            where = f"stages[{i}].{path}"
            if ref == cfg.name:
                problems.append(f"{where}: stage '{cfg.name}' cannot read itself")
                continue
            if ref in inputs:
                inp = inputs[ref]
                if kind == "dataset" and not cls.reads_raw_inputs:
                    readers = ", ".join(t for t, c in discover_stages().items() if c.reads_raw_inputs)
                    problems.append(
                        f"{where}: '{ref}' is a raw input; only stages of type {readers} read inputs "
                        f"(add one and read that)"
                    )
                elif kind == "dataset" and inp.kind != "files":
                    problems.append(f"{where}: '{ref}' is an artifact input, not files")
                elif kind == "artifact" and inp.kind != "artifact":
                    problems.append(f"{where}: '{ref}' is a files input; an artifact (kind: artifact) is needed")
            elif ref in by_name:
                ucls = stage_class(by_name[ref][1].type)
                if kind == "dataset" and cls.reads_raw_inputs:
                    problems.append(f"{where}: '{ref}' is a stage; {cfg.type} reads inputs (files)")
                elif kind == "dataset" and not ucls.produces_dataset:
                    problems.append(f"{where}: stage '{ref}' ({ucls.type_name}) produces no dataset")
                elif kind == "artifact" and not ucls.artifacts:
                    problems.append(f"{where}: stage '{ref}' ({ucls.type_name}) produces no artifact")
            else:
                known = sorted(n for n in [*inputs, *by_name] if n != cfg.name)
                close = difflib.get_close_matches(ref, known, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                problems.append(f"{where}: unknown stage or input '{ref}' ({hint}known: {', '.join(known)})")
                continue
            if kind == "dataset":
                node.dataset_inputs.append(ref)
            else:
                node.artifact_inputs[path] = ref
        nodes[cfg.name] = node

    if problems:
        raise SpecError(spec.source, problems)
    order = _topological_order(nodes, spec.source)
    return Dag(inputs=inputs, nodes=nodes, order=order)


def _topological_order(nodes: dict[str, StageNode], source: str) -> list[str]:
    indegree = {n: sum(1 for up in node.upstream() if up in nodes) for n, node in nodes.items()}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for n, node in nodes.items():
        for up in node.upstream():
            if up in nodes:
                children[up].append(n)
    ready = sorted((nodes[n].index, n) for n, d in indegree.items() if d == 0)
    order: list[str] = []
    while ready:
        _, n = ready.pop(0)
        order.append(n)
        for child in children[n]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append((nodes[child].index, child))
                ready.sort()
    if len(order) < len(nodes):
        cycle = _find_cycle({n: [u for u in nodes[n].upstream() if u in nodes] for n in nodes if n not in order})
        first = min(cycle, key=lambda n: nodes[n].index)
        raise SpecError(
            source, [f"stages[{nodes[first].index}].inputs: cycle {' -> '.join([*cycle, cycle[0]])}"]
        )
    return order


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A cycle in a graph known to contain one (depth-first, iterative)."""
    color: dict[str, int] = {}
    for start in graph:
        stack = [(start, iter(graph[start]))]
        path = [start]
        color[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color.get(nxt) == 1:
                cyc = path[path.index(nxt):]
                return list(reversed(cyc))
            elif nxt not in color and nxt in graph:
                color[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))
                path.append(nxt)
    return list(graph)[:1]
