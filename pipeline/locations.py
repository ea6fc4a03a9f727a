"""Where raw input files live: local (or shared-filesystem) paths, or filesystem URIs.

A ``kind: files`` input may name ``s3://bucket/prefix/*.jsonl.zst``, ``gs://...``, ``hdfs://...``,
``abfs://...`` or ``file://...``: pyarrow's own filesystems serve them (no extra package; credentials
from the usual environment variables, instance roles or the URI's query string, as pyarrow reads
them). Any other scheme goes through ``fsspec`` when the matching fsspec package is installed.

The driver expands globs once; every :class:`InputFile` carries its (picklable) filesystem, so a Ray
worker on another machine opens the very object the driver listed, without a shared disk.
"""

from __future__ import annotations

import glob
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAGIC = re.compile(r"[*\[]")


class LocationError(ValueError):
    """A URI that names no filesystem tokenmill can open."""


def is_uri(location: str) -> bool:
    return bool(_URI.match(location))


@dataclass(frozen=True)
class InputFile:
    """One raw input file: a path in ``fs`` (``None``: the local filesystem) and its display name."""

    path: str
    fs: pafs.FileSystem | None = None
    scheme: str = ""

    @classmethod
    def of(cls, location: InputFile | Path | str) -> InputFile:
        return location if isinstance(location, InputFile) else cls(str(location))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def uri(self) -> str:
        """A name without credentials: the local path, or ``scheme://path``."""
        return f"{self.scheme}://{self.path}" if self.fs is not None else self.path

    def relative_to(self, base: Path) -> str:
        """How rows and rejects name the file: relative to the spec for local files, else the URI."""
        if self.fs is not None:
            return self.uri
        return posixpath.relpath(self.path, base) if Path(self.path).is_absolute() else self.path

    def info(self) -> tuple[int, int]:
        """(size in bytes, modification time in ns), the pair that fingerprints the file."""
        if self.fs is None:
            st = Path(self.path).stat()
            return st.st_size, st.st_mtime_ns
        fi = self.fs.get_file_info(self.path)
        return int(fi.size or 0), int(fi.mtime_ns or 0)

    def size(self) -> int:
        return self.info()[0]

    def open(self) -> BinaryIO:
        """A seekable binary stream."""
        if self.fs is None:
            return open(self.path, "rb")
        return self.fs.open_input_file(self.path)  # type: ignore[return-value]

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as arrow_exc:  # pyarrow raises ArrowInvalid or ValueError for unknown schemes
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
        except Exception as exc:
            raise LocationError(
                f"{_safe(uri)}: no filesystem for this URI ({arrow_exc}; fsspec: {exc}). Use a local or shared "
                "path, or a URI pyarrow reads (s3://, gs://, hdfs://, abfs://, file://), or install the fsspec "
                "package for the scheme."
            ) from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _safe(uri: str) -> str:
    """The URI without user info (access keys) or query (which may carry secrets)."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Glob to regex with ``glob.glob(recursive=True)`` semantics: ``**`` spans folders, ``*`` does not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def expand_uri(pattern: str) -> list[InputFile]:
    """Files matching a URI or URI glob (``*``, ``**``, ``[...]``; ``?`` starts the URI's query)."""
    parts = urlsplit(pattern)
    path = parts.path
    magic = _MAGIC.search(path)
    base_path = path if magic is None else path[: path.rfind("/", 0, magic.start()) + 1]
    fs, fs_base = _filesystem(urlunsplit((parts.scheme, parts.netloc, base_path, parts.query, "")))
    scheme = parts.scheme
    if magic is None:
        info = fs.get_file_info(fs_base)
        return [InputFile(fs_base, fs, scheme)] if info.type == pafs.FileType.File else []
    fs_base = fs_base.rstrip("/")
    rest = path[len(base_path):]
    regex = _pattern_regex(rest)
    selector = pafs.FileSelector(fs_base, recursive="/" in rest or "**" in rest, allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        rel = info.path[len(fs_base):].lstrip("/")
        if info.type == pafs.FileType.File and regex.match(rel):
            found.append(InputFile(info.path, fs, scheme))
    return found


def expand(pattern: str, base_dir: Path) -> list[InputFile]:
    """Files matching a local path/glob (relative to ``base_dir``) or a filesystem URI/glob."""
    if is_uri(pattern):
        return expand_uri(pattern)
    p = Path(pattern).expanduser()
    resolved = str(p if p.is_absolute() else base_dir / p)
    matches = sorted(glob.glob(resolved, recursive=True)) if glob.has_magic(resolved) else [resolved]
    return [InputFile(m) for m in matches if Path(m).is_file()]
