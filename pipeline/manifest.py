"""Stage manifests (what a stage did, and the fingerprint that lets a re-run skip it)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.locations import Location

MANIFEST_NAME = "manifest.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Location | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Location.of(path).open() as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Location | Path, obj: Any) -> None:
    """Write JSON that appears whole (temp file + rename locally, one upload on an object store)."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default) + "\n"
    Location.of(path).write_text(text)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    return str(value)


def read_json(path: Location | Path) -> Any | None:
    """A JSON file's content, or ``None`` when it is missing or unreadable (half-written)."""
    try:
        return json.loads(Location.of(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_manifest(stage_dir: Location | Path) -> dict[str, Any] | None:
    return read_json(Location.of(stage_dir) / MANIFEST_NAME)


def merge_stats(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Merge per-shard stats: numbers add, dicts merge recursively, lists concatenate, others keep first."""
    for key, value in other.items():
        if key not in into:
            into[key] = json.loads(json.dumps(value, default=_json_default))
        elif isinstance(value, bool) or value is None:
            into[key] = into[key] if into[key] is not None else value
        elif isinstance(value, int | float) and isinstance(into[key], int | float):
            into[key] += value
        elif isinstance(value, dict) and isinstance(into[key], dict):
            merge_stats(into[key], value)
        elif isinstance(value, list) and isinstance(into[key], list):
            into[key].extend(value)
    return into


class ManifestBuilder:
    """Counts that a stage reports while it runs; the runner turns them into ``manifest.json``."""

    def __init__(self) -> None:
        self.rows_in = 0
        self.rows_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.added: Counter[str] = Counter()
        self.stats: dict[str, Any] = {}
        self.files: list[dict[str, Any]] = []
        #: shards run now, and shards an interrupted run had committed (every pass of the stage)
        self.shards: Counter[str] = Counter()
        self.artifacts: dict[str, str] = {}

    def add_shard(self, shard: dict[str, Any]) -> None:
        self.rows_in += shard.get("rows_in", 0)
        self.rows_out += shard.get("rows_out", 0)
        self.bytes_in += shard.get("bytes_in", 0)
        self.bytes_out += shard.get("bytes_out", 0)
        self.rejected.update(shard.get("rejected", {}))
        self.dropped.update(shard.get("dropped", {}))
        self.added.update(shard.get("added", {}))

    def reconciles(self) -> bool:
        return self.rows_in + sum(self.added.values()) == (
            self.rows_out + sum(self.dropped.values()) + sum(self.rejected.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "added": dict(sorted(self.added.items())),
            "shards": {"run": self.shards["run"], "resumed": self.shards["resumed"]},
        }
