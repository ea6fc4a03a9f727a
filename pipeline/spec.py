"""The pipeline spec: pydantic models are the single source of truth (validation, defaults, docs, JSON Schema).

The ``stages`` list is a discriminated union over every registered stage type, built at import
time from the registry (:mod:`pipeline.stage_api`), so a new stage module extends the spec without
any change here.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from pipeline.errors import SpecError
from pipeline.locations import Location, LocationError
from pipeline.registry import discover_stages
from pipeline.stage_api import STAGE_NAME_PATTERN, StageConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayOptions(_Strict):
    """Where and how big the Ray cluster is."""

    address: str | None = Field(
        default=None,
        description="Existing cluster ('auto', 'ray://host:10001', GCS 'host:6379'); none starts a local Ray.",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the embedded local Ray (default: all).")
    object_store_memory_mb: int | None = Field(default=None, ge=64, description="Embedded Ray's object store.")


#: the normalised columns every document has after reading
NORMALISED_COLUMNS = ("id", "text", "lang", "source")


class FieldMap(_Strict):
    """Which source fields hold the normalised columns. ``None`` means the source has no such field."""

    id: str | None = Field(default="id", description="Document id; missing ids are derived from file and line.")
    text: str = Field(default="text", description="Document text (required).")
    lang: str | None = Field(default="lang", description="Language label, if the source has one.")
    source: str | None = Field(default="source", description="Source label; defaults to the input's name.")


class FilesInput(_Strict):
    """Raw files, read by a stage that reads raw inputs: paths and globs, relative to the spec file."""

    kind: Literal["files"] = "files"
    paths: list[str] = Field(
        min_length=1,
        description="Files or glob patterns (** allowed), relative to the spec, or URIs (s3://, gs://, hdfs://, "
        "abfs://, file://, or any fsspec scheme whose package is installed).",
    )
    format: Literal["auto", "jsonl", "parquet", "text"] = Field(
        default="auto", description="auto: from the extension (.jsonl/.json/.ndjson[.zst|.gz], .parquet, .txt)."
    )
    fields: FieldMap = Field(default_factory=FieldMap)
    keep_fields: list[str] = Field(
        default_factory=list,
        description="Extra source fields kept as string columns (not id, text, lang or source: those are the "
        "normalised columns, mapped by `fields`).",
    )
    text_unit: Literal["file", "line"] = Field(
        default="file", description="For plain text: one document per file or per line."
    )
    lang: str | None = Field(default=None, description="Language label for every document (overrides the field).")
    source: str | None = Field(default=None, description="Source label for every document (default: input name).")
    allow_empty: bool = Field(
        default=False,
        description="Let a path or glob match no file (by default that is an error naming it, as is a directory).",
    )

    @field_validator("keep_fields")
    @classmethod
    def _keep_fields_are_not_normalised_columns(cls, value: list[str]) -> list[str]:
        # the reader writes id/text/lang/source itself: a kept field of that name would be a second column
        clash = [k for k in value if k in NORMALISED_COLUMNS]
        if clash:
            raise ValueError(f"{clash[0]!r} is a normalised column (id, text, lang, source); map a source field "
                             "to it with `fields` instead")
        dup = sorted({k for k in value if value.count(k) > 1})
        if dup:
            raise ValueError(f"{dup[0]!r} is listed twice")
        return value


class ArtifactInput(_Strict):
    """A file that a stage uses as a whole (for example an existing tokenizer.json)."""

    kind: Literal["artifact"]
    path: str


def _input_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "files")
    return getattr(value, "kind", "files")


InputSpec = Annotated[
    Annotated[FilesInput, Tag("files")] | Annotated[ArtifactInput, Tag("artifact")],
    Discriminator(_input_kind),
]


def _stage_union() -> Any:
    classes = [cls.config_model for cls in discover_stages().values()]
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007 - built at run time


@functools.cache
def spec_model() -> type[BaseModel]:
    """The PipelineSpec model, with the stage union of every registered stage type."""
    stage_union = _stage_union()

    class PipelineSpec(_Strict):
        """A tokenmill pipeline: named inputs and a DAG of stages."""

        name: str = Field(pattern=STAGE_NAME_PATTERN, description="Pipeline name.")
        seed: int = Field(default=0, ge=0, description="Seed for every random choice (hash-based).")
        output: str | None = Field(default=None, description="Output directory (default: out/<name>, relative to the "
                                   "spec): a local or shared path, or a URI such as s3://bucket/prefix.")
        ray: RayOptions = Field(default_factory=RayOptions)
        inputs: dict[str, InputSpec] = Field(default_factory=dict)
        stages: list[stage_union] = Field(min_length=1)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _unique_names(self) -> PipelineSpec:
            seen: dict[str, str] = {}
            problems = []
            for key in self.inputs:
                seen[key] = f"inputs.{key}"
            for i, st in enumerate(self.stages):
                if st.name in seen:
                    problems.append(f"stages[{i}].name: duplicate name '{st.name}' (already used by {seen[st.name]})")
                seen.setdefault(st.name, f"stages[{i}]")
            if problems:
                raise ValueError("; ".join(problems))
            return self

    return PipelineSpec


class LoadedSpec:
    """A validated spec plus where it came from (relative paths resolve against ``base_dir``)."""

    def __init__(self, model: BaseModel, source: str, base_dir: Path):
        self.model = model
        self.source = source
        self.base_dir = base_dir

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def stages(self) -> list[StageConfig]:
        return list(self.model.stages)

    def output_dir(self, override: str | None = None) -> Location:
        """The output folder: a local or shared path (relative to the spec), or a filesystem URI
        (``s3://``, ``gs://``, ``hdfs://``, ``abfs://`` or any fsspec scheme)."""
        key, location = ("--output", override) if override else ("output", self.model.output)
        try:
            # --output is relative to where the command runs; the spec's output to the spec
            return Location.parse(location or f"out/{self.model.name}", Path.cwd() if override else self.base_dir)
        except LocationError as exc:
            raise SpecError(self.source, [f"{key}: {exc}"]) from None


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate a YAML spec file; raise :class:`SpecError` with key paths on any problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [f"cannot read: {exc}"]) from None
    return parse_spec(text, source=source, base_dir=path.resolve().parent)


#: bounds of a spec once YAML aliases are expanded: a few aliases of a big string ("billion laughs")
#: would otherwise cost gigabytes in validation, fingerprints and run.json
SPEC_MAX_NODES = 100_000
SPEC_MAX_SCALAR_BYTES = 16 << 20


def _expanded_size(root: yaml.Node | None) -> tuple[int, int]:
    """(nodes, scalar bytes) of a composed YAML document with every alias expanded; each distinct
    node is sized once (memoised), so this costs the document's size, not its expansion."""
    sizes: dict[int, tuple[int, int]] = {}

    def size(node: yaml.Node) -> tuple[int, int]:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = (SPEC_MAX_NODES + 1, 0)  # a node reached again while being sized: a cycle
        if isinstance(node, yaml.ScalarNode):
            total = (1, len(node.value.encode("utf-8", "surrogatepass")))
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [c for kv in node.value for c in kv]
            n, b = 1, 0
            for child in children:
                cn, cb = size(child)
                n, b = min(n + cn, SPEC_MAX_NODES + 1), min(b + cb, SPEC_MAX_SCALAR_BYTES + 1)
            total = (n, b)
        sizes[id(node)] = total
        return total

    return size(root) if root is not None else (0, 0)


def parse_spec(text: str, *, source: str = "spec.yaml", base_dir: Path | None = None) -> LoadedSpec:
    try:
        nodes, nbytes = _expanded_size(yaml.compose(text, Loader=yaml.SafeLoader))
        if nodes > SPEC_MAX_NODES or nbytes > SPEC_MAX_SCALAR_BYTES:
            raise SpecError(source, [f"the spec is too big once its YAML aliases are expanded (limits: "
                                     f"{SPEC_MAX_NODES:,} values, {SPEC_MAX_SCALAR_BYTES >> 20} MB of text)"])
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [f"{where}invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise SpecError(source, [f"the spec must be a mapping of keys (got {type(data).__name__})"])
    model_cls = spec_model()
    try:
        model = model_cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, format_validation_errors(exc, data, model_cls)) from None
    loaded = LoadedSpec(model, source, base_dir or Path.cwd())
    from pipeline.dag import build_dag  # dag names spec types only for type checking

    build_dag(loaded)  # references, kinds and cycles; raises SpecError
    return loaded


# ----------------------------------------------------------------------------- error messages


def format_validation_errors(exc: ValidationError, data: Any, root: type[BaseModel]) -> list[str]:
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"], data)
        path = _loc_to_path(loc)
        msg = _message(err, loc, data, root)
        line = f"{path}: {msg}" if path else msg
        if line not in problems:
            problems.append(line)
    return problems


def _clean_loc(loc: tuple[Any, ...], data: Any) -> list[Any]:
    """Drop union tags that pydantic inserts (``stages.2.<type>.near`` -> ``stages[2].near``)."""
    out: list[Any] = []
    node = data
    for i, elem in enumerate(loc):
        is_last = i == len(loc) - 1
        is_tag = (
            isinstance(elem, str) and isinstance(node, dict) and elem not in node and not is_last
            and elem in (node.get("type"), node.get("kind", "files"))
        )
        if is_tag or (isinstance(elem, str) and "[" in elem):  # union tags, 'function-after[...]' validators
            continue
        out.append(elem)
        if isinstance(node, dict):
            node = node.get(elem)
        elif isinstance(node, list) and isinstance(elem, int) and elem < len(node):
            node = node[elem]
        else:
            node = None
    return out


def _loc_to_path(loc: list[Any]) -> str:
    path = ""
    for elem in loc:
        if isinstance(elem, int):
            path += f"[{elem}]"
        else:
            path += ("." if path else "") + str(elem)
    return path


def _fmt(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
}


def _message(err: dict[str, Any], loc: list[Any], data: Any, root: type[BaseModel]) -> str:
    kind: str = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1], data)
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = (f" (did you mean '{close[0]}'?" if close else " (") + f" allowed: {', '.join(allowed)})"
        return f"unknown key{hint}"
    bounds = {"less_than_equal": ("≤", "le"), "less_than": ("<", "lt"),
              "greater_than_equal": ("≥", "ge"), "greater_than": (">", "gt")}
    if kind in bounds:
        sym, key = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {sym} {bound} (got {_fmt(got)})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {_fmt(got)})".replace("\"", "")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        allowed = ", ".join(repr(t) for t in discover_stages()) if loc and loc[0] == "stages" else ctx.get(
            "expected_tags", "")
        if kind == "union_tag_not_found":
            return f"missing 'type' (allowed: {allowed})"
        return f"unknown stage type {_fmt(ctx.get('tag'))} (allowed: {allowed})"
    if kind in ("too_short", "too_long"):
        what = "at least" if kind == "too_short" else "at most"
        n = ctx.get("min_length", ctx.get("max_length"))
        return f"must have {what} {n} item{'s' if n != 1 else ''} (got {ctx.get('actual_length')})"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters (got {len(got) if isinstance(got, str) else got})"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')} (got {_fmt(got)})"
    for suffix, word in _TYPE_WORDS.items():
        if kind.startswith(suffix + "_") or kind == f"{suffix}_type" or kind == f"{suffix}_parsing":
            return f"must be {word} (got {_fmt(got)})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']} (got {_fmt(got)})"


def _unwrap(ann: Any, node: Any) -> Any:
    """Strip Annotated/Optional and pick the union member that matches the data's tag."""
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [(typing.get_origin(a) is Annotated and typing.get_args(a)[0]) or a for a in typing.get_args(ann)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if isinstance(node, dict):
                for m in models:
                    for tag_field in ("type", "kind"):
                        f = m.model_fields.get(tag_field)
                        if f and node.get(tag_field, f.default) in typing.get_args(f.annotation):
                            return m
            non_none = [m for m in members if m is not type(None)]
            ann = models[0] if models else (non_none[0] if non_none else ann)
            if typing.get_origin(ann) in (Union, types.UnionType):
                return ann
            continue
        return ann


def _allowed_keys(root: type[BaseModel], loc: list[Any], data: Any) -> list[str]:
    ann: Any = root
    node = data
    for elem in loc:
        ann = _unwrap(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(str(elem))
            if field is None:
                return []
            ann = field.annotation
        elif origin in (list, tuple):
            ann = typing.get_args(ann)[0]
        elif origin is dict:
            ann = typing.get_args(ann)[1]
        else:
            return []
        node = node[elem] if isinstance(node, dict | list) and _has(node, elem) else None
    ann = _unwrap(ann, node)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _has(node: Any, elem: Any) -> bool:
    if isinstance(node, dict):
        return elem in node
    return isinstance(elem, int) and 0 <= elem < len(node)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec, for editors (``pipeline schema``).

    Pydantic writes the tagged unions as ``oneOf`` + an OpenAPI ``discriminator``, which generic JSON
    Schema validators and editors ignore: a typo inside one stage then fails every branch, and the
    error points at the whole stage ("not valid under any of the given schemas"). Each union becomes
    an ``if``/``then`` per tag (``type`` of a stage, ``kind`` of an input), which every draft-7+
    tool understands, so an error is reported inside the one branch the tag selects.
    """
    schema = spec_model().model_json_schema()
    schema["title"] = "tokenmill pipeline spec"
    props = schema.get("properties", {})
    stages = props.get("stages", {}).get("items", {})
    if "discriminator" in stages:
        props["stages"]["items"] = _tagged_union(stages["discriminator"]["propertyName"],
                                                 stages["discriminator"]["mapping"], default=None)
    inputs = props.get("inputs", {}).get("additionalProperties", {})
    if "oneOf" in inputs:
        props["inputs"]["additionalProperties"] = _tagged_union(
            "kind", {"files": "#/$defs/FilesInput", "artifact": "#/$defs/ArtifactInput"}, default="files")
    return schema


def _tagged_union(tag: str, mapping: dict[str, str], default: str | None) -> dict[str, Any]:
    """``{tag: enum}`` plus ``if tag == value then $ref`` for each value (``default`` when the tag is absent)."""
    branches: list[dict[str, Any]] = []
    for value, ref in mapping.items():
        cond: dict[str, Any] = {"properties": {tag: {"const": value}}}
        if value != default:
            cond["required"] = [tag]
        branches.append({"if": cond, "then": {"$ref": ref}})
    out: dict[str, Any] = {
        "type": "object",
        "properties": {tag: {"enum": list(mapping)}},
        "allOf": branches,
        # kept for OpenAPI-style tools; ignored by JSON Schema validators
        "discriminator": {"propertyName": tag, "mapping": mapping},
    }
    if default is None:
        out["required"] = [tag]
    return out
