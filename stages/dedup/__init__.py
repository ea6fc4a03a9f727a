"""Dedup: exact (normalised-text hash) and near-duplicate (MinHash + LSH) removal, one module per phase.

* :mod:`.config` -- the spec keys; :mod:`.signatures` -- the pure core (normalisation, shingles,
  MinHash, LSH bands); :mod:`.pairs` -- the signature/shuffle and pairs passes; :mod:`.components`
  -- connected components and kept twins; :mod:`.filter` -- the filter pass; :mod:`.stage` -- the
  stage that runs them (its docstring walks through the whole algorithm); :mod:`.report` -- its
  charts in the run report.
"""

from stages.dedup.stage import DedupConfig, DedupStage

__all__ = ["DedupConfig", "DedupStage"]
