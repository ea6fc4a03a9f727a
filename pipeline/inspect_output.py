"""``pipeline inspect``: what a stage wrote -- schema, rows, a few rows and the manifest's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.locations import Location, LocationError
from pipeline.manifest import read_manifest
from pipeline.parquet_io import parquet_file, parquet_rows, read_one


def _parts(path: Location) -> list[Location]:
    if path.is_file():
        return [path]
    for sub in ("data", ""):
        parts = (path / sub if sub else path).glob("*.parquet")
        if parts:
            return parts
    return []


def inspect_path(path: Location | Path | str, console: Console, rows: int = 3, width: int = 80) -> dict[str, Any]:
    """Print a stage folder (or a Parquet file), local or on a filesystem URI; returns the facts
    it printed, for tests."""
    if isinstance(path, str):
        try:
            path = Location.parse(path, Path.cwd())
        except LocationError as exc:
            from pipeline.errors import TokenmillError

            raise TokenmillError(str(exc)) from None
    path = Location.of(path)
    facts: dict[str, Any] = {"path": str(path)}
    manifest = read_manifest(path) if path.is_dir() else None
    if path.is_dir() and manifest is None and not _parts(path):
        stages = [p for p in path.iterdir() if (p / "manifest.json").exists()]
        if stages:
            console.print(f"[bold]{path}[/] holds {len(stages)} stage outputs:")
            for st in stages:
                m = read_manifest(st) or {}
                console.print(f"  {st.name:<16} {m.get('type', '?'):<12} {m.get('rows_out', 0):>12,} rows")
            facts["stages"] = [s.name for s in stages]
            return facts
    if manifest:
        facts["manifest"] = manifest
        t = Table(title=f"{manifest['stage']} ({manifest['type']})", show_header=False)
        for key in ("rows_in", "rows_out", "rejected", "bytes_in", "bytes_out", "wall_time_s"):
            t.add_row(key, f"{manifest.get(key, 0):,}")
        for label, group in (("rejected", "rejected_by_reason"), ("dropped", "dropped"), ("added", "added")):
            for reason, n in manifest.get(group, {}).items():
                t.add_row(f"{label}: {reason}", f"{n:,}")
        from pipeline.registry import discover_stages

        cls = discover_stages().get(manifest["type"])
        if cls is not None:
            for label, value in cls(cls.config_model.model_construct()).summary(manifest):
                t.add_row(label, value)
        console.print(t)
    parts = _parts(path)
    if parts:
        pf = parquet_file(parts[0])
        total = sum(parquet_rows(p) for p in parts)
        facts.update(rows=total, parts=len(parts), schema=str(pf.schema_arrow))
        console.print(f"[bold]{len(parts)} part(s), {total:,} rows[/]  schema:")
        for field in pf.schema_arrow:
            console.print(f"  {field.name}: {field.type}")
        head = read_one(parts[0]).slice(0, rows).to_pylist()
        facts["head"] = head
        for i, row in enumerate(head):
            shown = {k: _clip(v, width) for k, v in row.items()}
            console.print(f"[dim]row {i}:[/] {json.dumps(shown, ensure_ascii=False)}")
    rejects = (path / "rejects").glob("*.parquet") if path.is_dir() else []
    if rejects:
        rtable = read_one(rejects[0]).slice(0, rows).to_pylist()
        console.print(f"[bold]rejects[/] ({len(rejects)} part(s)), first rows:")
        for r in rtable:
            console.print(f"  {r['file']}:{r['line']} {r['reason']}: {_clip(r['detail'], width)}")
    if not manifest and not parts:
        from pipeline.errors import TokenmillError

        raise TokenmillError(f"{path}: no stage output (manifest.json or Parquet files) found")
    return facts


def _clip(value: Any, width: int) -> Any:
    if isinstance(value, str) and len(value) > width:
        return value[:width] + "…"
    if isinstance(value, list) and len(value) > 16:
        return [*value[:16], f"… ({len(value)} items)"]
    return value
