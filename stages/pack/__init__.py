"""Pack: token documents into training sequences (concat-and-chunk, best-fit) and write the token
formats trainers read (:mod:`stages.pack.formats`). The pure packing algorithms are in
:mod:`stages.pack.packing`; the stage and its Ray wiring in :mod:`stages.pack.stage`."""

from stages.pack.stage import PackConfig, PackStage

__all__ = ["PackConfig", "PackStage"]
