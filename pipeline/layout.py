"""Where things go inside a stage folder, so that readers pointed at the folder see the dataset only.

* ``data/part-*.parquet``: the stage's dataset, and nothing else;
* ``__<name>/``: side tables (``__rejects`` of every stage, a cluster table, ...).

Why the double underscore: ``pyarrow.dataset``, Ray Data and polars skip paths whose names start
with ``_`` or ``.``; Hugging Face ``datasets`` (``data_files.py``) skips ``.``-hidden paths and
folders starting with ``__``. ``__`` is the one prefix all of them skip, so
``ray.data.read_parquet(<stage>)`` and ``load_dataset(<stage>)`` read the dataset rows only, while the
side tables stay visible to ``ls`` and ``pipeline inspect``.
"""

from __future__ import annotations

DATA_DIR = "data"
SIDE_PREFIX = "__"


def side_dir_name(name: str) -> str:
    """The folder name of side table ``name`` (``rejects`` -> ``__rejects``)."""
    return name if name.startswith(SIDE_PREFIX) else SIDE_PREFIX + name


REJECTS_DIR = side_dir_name("rejects")
