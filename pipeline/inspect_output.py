"""``pipeline inspect``: what a stage wrote -- schema, rows, a few rows and the manifest's figures.

Everything shown comes from files (manifests, rows, rejects), so it is printed as plain text, never
as rich markup: a value such as ``[/code]`` or a label such as ``tokens [en]`` shows as written.
Non-Parquet files get a summary (``tokenizer.json``: model, vocabulary, pre-tokenizer, special
tokens; other JSON, ``.npy`` and Megatron ``.idx`` files: their shape) or a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.layout import DATA_DIR, REJECTS_DIR, SIDE_PREFIX
from pipeline.locations import Location, LocationError
from pipeline.manifest import MANIFEST_NAME, read_manifest
from pipeline.parquet_io import parquet_file, parquet_rows, read_one


def _say(console: Console, text: str, style: str | None = None) -> None:
    console.print(Text(text, style=style or ""), highlight=False, soft_wrap=True)


def _parts(path: Location) -> list[Location]:
    if path.is_file():
        return [path]
    for sub in (DATA_DIR, ""):
        parts = (path / sub if sub else path).glob("*.parquet")
        if parts:
            return parts
    return []


def _error(text: str) -> Exception:
    from pipeline.errors import TokenmillError

    return TokenmillError(text)


def inspect_path(path: Location | Path | str, console: Console, rows: int = 3, width: int = 80) -> dict[str, Any]:
    """Print a stage folder (or a Parquet file, or a tokenizer / JSON / array file), local or on a
    filesystem URI; returns the facts it printed, for tests."""
    if isinstance(path, str):
        try:
            path = Location.parse(path, Path.cwd())
        except LocationError as exc:
            raise _error(str(exc)) from None
    path = Location.of(path)
    if path.is_file() and not path.name.endswith(".parquet"):
        return inspect_file(path, console)
    if not path.is_dir() and not path.is_file():
        raise _error(f"{path}: no such file or folder")
    facts: dict[str, Any] = {"path": str(path)}
    manifest = read_manifest(path) if path.is_dir() else None
    if path.is_dir() and manifest is None and not _parts(path):
        stages = [p for p in path.iterdir() if (p / MANIFEST_NAME).exists()]
        if stages:
            _say(console, f"{path} holds {len(stages)} stage outputs:", "bold")
            for st in stages:
                m = read_manifest(st) or {}
                _say(console, f"  {st.name:<16} {m.get('type', '?')!s:<12} {m.get('rows_out', 0):>12,} rows")
            facts["stages"] = [s.name for s in stages]
            return facts
    if manifest:
        facts["manifest"] = manifest
        facts["summary"] = _print_manifest(manifest, console)
    parts = _parts(path)
    if parts:
        pf = parquet_file(parts[0])
        total = sum(parquet_rows(p) for p in parts)
        facts.update(rows=total, parts=len(parts), schema=str(pf.schema_arrow))
        _say(console, f"{len(parts)} part(s), {total:,} rows  schema:", "bold")
        for field in pf.schema_arrow:
            _say(console, f"  {field.name}: {field.type}")
        head = read_one(parts[0]).slice(0, rows).to_pylist()
        facts["head"] = head
        for i, row in enumerate(head):
            shown = {k: _clip(v, width) for k, v in row.items()}
            console.print(Text.assemble((f"row {i}: ", "dim"), json.dumps(shown, ensure_ascii=False, default=str)),
                          highlight=False, soft_wrap=True)
    if path.is_dir():
        facts["side_tables"] = _print_side_tables(path, console, rows, width)
    if not manifest and not parts:
        raise _error(f"{path}: no stage output (manifest.json or Parquet files) found")
    return facts


def _print_manifest(manifest: dict[str, Any], console: Console) -> list[tuple[str, str]]:
    t = Table(title=Text(f"{manifest.get('stage', '?')} ({manifest.get('type', '?')})"), show_header=False)
    shown: list[tuple[str, str]] = []

    def row(label: str, value: str) -> None:
        shown.append((label, value))
        t.add_row(Text(label), Text(value))  # Text: never parsed as markup

    for key in ("rows_in", "rows_out", "rejected", "bytes_in", "bytes_out", "wall_time_s"):
        row(key, f"{manifest.get(key, 0):,}")
    for label, group in (("rejected", "rejected_by_reason"), ("dropped", "dropped"), ("added", "added")):
        for reason, n in manifest.get(group, {}).items():
            row(f"{label}: {reason}", f"{n:,}")
    from pipeline.registry import discover_stages

    cls = discover_stages().get(manifest.get("type", ""))
    if cls is not None:
        try:
            summary = cls(cls.config_model.model_construct()).summary(manifest)
        except Exception as exc:  # a stage's summary must not hide the rest of the output
            summary = [("summary", f"unavailable ({type(exc).__name__}: {exc})")]
        for label, value in summary:
            row(str(label), str(value))
    for w in manifest.get("stats", {}).get("warnings", []) if isinstance(manifest.get("stats"), dict) else []:
        row("warning", str(w))
    console.print(t)
    return shown


def _print_side_tables(path: Location, console: Console, rows: int, width: int) -> dict[str, int]:
    """Side tables (``__rejects``, ``__clusters``, ...): name and rows; the first rejects."""
    found: dict[str, int] = {}
    for sub in sorted(path.iterdir(), key=lambda p: p.name):
        if not (sub.name.startswith(SIDE_PREFIX) or sub.name == "rejects") or not sub.is_dir():
            continue
        parts = sub.glob("*.parquet")
        if not parts:
            continue
        found[sub.name] = sum(parquet_rows(p) for p in parts)
        _say(console, f"{sub.name}/: {len(parts)} part(s), {found[sub.name]:,} rows", "bold")
        if sub.name in (REJECTS_DIR, "rejects"):
            for r in read_one(parts[0]).slice(0, rows).to_pylist():
                _say(console, f"  {r.get('file')}:{r.get('line')} {r.get('reason')}: {_clip(r.get('detail'), width)}")
    return found


def inspect_file(path: Location, console: Console) -> dict[str, Any]:
    """A summary of a non-Parquet file, or a one-line error (never a traceback)."""
    name = path.name
    facts: dict[str, Any] = {"path": str(path)}
    try:
        if name.endswith(".json"):
            obj = json.loads(path.read_text())
            if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
                facts["tokenizer"] = tokenizer_summary(obj)
                _print_pairs(console, f"tokenizer {name}", facts["tokenizer"])
            else:
                keys = list(obj) if isinstance(obj, dict) else []
                facts["json_keys"] = keys
                _say(console, f"{name}: JSON {type(obj).__name__}" + (f" with keys: {', '.join(keys)}" if keys else ""))
            return facts
        if name.endswith(".npy"):
            import numpy as np

            try:
                arr = np.load(path.local_file(), mmap_mode="r")
                facts["array"] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
                _say(console, f"{name}: numpy array {tuple(arr.shape)} {arr.dtype}")
            except ValueError:  # headerless OLMo memmap
                size = path.size()
                facts["array"] = {"bytes": size}
                _say(console, f"{name}: headerless memmap of {size:,} bytes (OLMo token or mask file: "
                              "uint16 tokens = bytes / 2, masks = bytes)")
            return facts
        from pipeline.registry import discover_stages

        for cls in discover_stages().values():  # formats a stage writes (a Megatron .idx, ...)
            if (described := cls.describe_file(path)) is not None:
                title, figures = described
                facts.update(figures)
                _print_pairs(console, f"{title} {name}", next(iter(figures.values())))
                return facts
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, OSError) as exc:
        raise _error(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    raise _error(f"{path}: not a stage folder, Parquet file, tokenizer.json, JSON, .npy or Megatron .idx file")


def tokenizer_summary(obj: dict[str, Any]) -> dict[str, Any]:
    """Model, vocabulary size, pre-tokenizer and special tokens of a ``tokenizer.json`` document."""
    model = obj.get("model") or {}
    vocab = model.get("vocab")
    n_vocab = len(vocab) if isinstance(vocab, dict | list) else 0
    added = obj.get("added_tokens") or []
    n_added = sum(1 for t in added if isinstance(vocab, dict) and t.get("content") not in vocab)
    pre = obj.get("pre_tokenizer") or {}

    def kind(node: Any) -> str:
        if not isinstance(node, dict):
            return "none"
        if node.get("type") == "Sequence":
            inner = node.get("pretokenizers") or node.get("normalizers") or []
            return "Sequence(" + ", ".join(kind(x) for x in inner) + ")"
        return str(node.get("type", "?"))

    return {
        "model": model.get("type", "?"),
        "vocab_size": n_vocab + n_added,
        "merges": len(model.get("merges") or []) if model.get("type") == "BPE" else None,
        "pre_tokenizer": kind(pre),
        "normalizer": kind(obj.get("normalizer")),
        "decoder": kind(obj.get("decoder")),
        "special_tokens": [f"{t.get('content')} ({t.get('id')})" for t in added if t.get("special")],
    }


def _print_pairs(console: Console, title: str, pairs: dict[str, Any]) -> None:
    t = Table(title=Text(title), show_header=False)
    for k, v in pairs.items():
        if v is None:
            continue
        t.add_row(Text(k), Text(", ".join(map(str, v)) if isinstance(v, list) else
                                (f"{v:,}" if isinstance(v, int) else str(v))))
    console.print(t)


def _clip(value: Any, width: int) -> Any:
    if isinstance(value, str) and len(value) > width:
        return value[:width] + "…"
    if isinstance(value, list) and len(value) > 16:
        return [*value[:16], f"… ({len(value)} items)"]
    return value
