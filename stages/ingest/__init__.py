"""Ingest: JSONL, JSONL.zst/.gz, Parquet and plain text into the normalised schema (``id``, ``text``,
``lang``, ``source``, kept fields), every bad row or file quarantined with its reason.

:mod:`stages.ingest.sources` reads compressed streams and plans byte-range shards (pure, no Ray);
:mod:`stages.ingest.stage` is the stage and its Ray wiring."""

from stages.ingest.stage import IngestConfig, IngestStage

__all__ = ["IngestConfig", "IngestStage"]
