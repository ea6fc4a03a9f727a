"""Where files live: local (or shared-filesystem) paths, or filesystem URIs (inputs and outputs).

A ``kind: files`` input, an artifact input and the pipeline's ``output`` may name
``s3://bucket/prefix/...``, ``gs://...``, ``hdfs://...``, ``abfs://...`` or ``file://...``: pyarrow's
own filesystems serve them (no extra package; credentials from the usual environment variables,
instance roles or the URI's query string, as pyarrow reads them). Any other scheme goes through
``fsspec`` when the matching fsspec package is installed.

Every :class:`Location` carries its (picklable) filesystem, so a Ray worker on another machine opens
or writes the very object the driver named, without a shared disk. Local paths go through
:mod:`pathlib` and ``os.replace`` exactly as before filesystems were added (the fast path).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
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
class Location:
    """A file or folder: a path on ``fs`` (``None``: the local filesystem, through :mod:`pathlib`).

    Raw inputs, stage outputs and artifacts are all locations, so the same stage code writes to a
    local or shared disk and to an object store. On an object store a written object appears whole
    when its upload completes (no temp name needed); folders are key prefixes (``mkdir`` is a no-op).
    Code that needs a real local file (memmaps, ``np.save``) goes through :meth:`writing`,
    :meth:`writing_dir`, :meth:`local_file` and :meth:`local_dir`.
    """

    path: str  # a POSIX path (tokenmill runs where os.path is posixpath), or the path in ``fs``
    fs: pafs.FileSystem | None = None
    scheme: str = ""

    @classmethod
    def of(cls, location: Location | Path | str) -> Location:
        return location if isinstance(location, Location) else cls(os.fspath(location))

    @classmethod
    def parse(cls, location: str, base_dir: Path) -> Location:
        """A path (relative to ``base_dir``), ``file://`` path, or filesystem URI (see :func:`expand`)."""
        if location.startswith("file://"):
            location = location.removeprefix("file://")
        if is_uri(location):
            parts = urlsplit(location)
            fs, path = _filesystem(location)
            return cls(path.rstrip("/"), fs, parts.scheme)
        p = Path(location).expanduser()
        return cls(str((p if p.is_absolute() else base_dir / p).resolve()))

    # ------------------------------------------------------------------------------ naming

    @property
    def is_local(self) -> bool:
        return self.fs is None

    @property
    def local(self) -> Path:
        """The local path (only for local locations)."""
        if self.fs is not None:
            raise TypeError(f"{self.uri} is not a local path")
        return Path(self.path)

    def __fspath__(self) -> str:
        return str(self.local)

    def __truediv__(self, part: str) -> Location:
        return replace(self, path=posixpath.join(self.path, part))

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> Location:
        return replace(self, path=posixpath.dirname(self.path))

    @property
    def uri(self) -> str:
        """A name without credentials: the local path, or ``scheme://path``."""
        return f"{self.scheme}://{self.path}" if self.fs is not None else self.path

    def relative_to(self, base: Path) -> str:
        """How rows and rejects name the file: relative to the spec for local files, else the URI."""
        if self.fs is not None:
            return self.uri
        return posixpath.relpath(self.path, base) if Path(self.path).is_absolute() else self.path

    # ------------------------------------------------------------------------------ queries

    def _info(self) -> pafs.FileInfo:
        assert self.fs is not None
        return self.fs.get_file_info(self.path)

    def info(self) -> tuple[int, int]:
        """(size in bytes, modification time in ns), the pair that fingerprints the file."""
        if self.fs is None:
            st = Path(self.path).stat()
            return st.st_size, st.st_mtime_ns
        fi = self._info()
        if fi.type == pafs.FileType.NotFound:
            raise FileNotFoundError(self.uri)
        return int(fi.size or 0), int(fi.mtime_ns or 0)

    def size(self) -> int:
        return self.info()[0]

    def exists(self) -> bool:
        return Path(self.path).exists() if self.fs is None else self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return Path(self.path).is_file() if self.fs is None else self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return Path(self.path).is_dir() if self.fs is None else self._info().type == pafs.FileType.Directory

    def iterdir(self) -> list[Location]:
        """Children (files and folders), sorted by name; empty when the folder does not exist."""
        if self.fs is None:
            p = Path(self.path)
            return [Location(str(c)) for c in sorted(p.iterdir())] if p.is_dir() else []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        return sorted((replace(self, path=i.path) for i in infos), key=lambda loc: loc.path)

    def glob(self, pattern: str) -> list[Location]:
        """Children whose name matches ``pattern`` (one level, ``fnmatch`` rules), sorted."""
        if self.fs is None:
            return [Location(str(c)) for c in sorted(Path(self.path).glob(pattern))]
        return [c for c in self.iterdir() if fnmatch.fnmatchcase(c.name, pattern)]

    def files(self) -> list[Location]:
        """Every file below this folder, recursively, sorted by path."""
        return [f for f, _, _ in self.listing()]

    def file_sizes(self) -> list[tuple[Location, int]]:
        """Every file below this folder with its size, sorted."""
        return [(f, size) for f, size, _ in self.listing()]

    def listing(self) -> list[tuple[Location, int, int]]:
        """Every file below this folder with its size and mtime in ns (one listing on an object store)."""
        if self.fs is None:
            stats = [(p, p.stat()) for p in sorted(Path(self.path).rglob("*")) if p.is_file()]
            return [(Location(str(p)), st.st_size, st.st_mtime_ns) for p, st in stats]
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        found = [(replace(self, path=i.path), int(i.size or 0), int(i.mtime_ns or 0))
                 for i in infos if i.type == pafs.FileType.File]
        return sorted(found, key=lambda entry: entry[0].path)

    def relpath(self, base: Location) -> str:
        """This location's path below ``base`` (``/``-separated)."""
        return posixpath.relpath(self.path, base.path)

    # ------------------------------------------------------------------------------ reading

    def open(self) -> BinaryIO:
        """A seekable binary stream (never decompressed by extension)."""
        if self.fs is None:
            return open(self.path, "rb")
        return self.fs.open_input_file(self.path)  # type: ignore[return-value]

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def download(self, dest: Path) -> None:
        """Copy this file to a local path, streaming."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open() as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)

    def local_file(self) -> Path:
        """A local copy to memory-map or hand to a library that wants a path.

        Local files are themselves; objects are downloaded once per process into a cache keyed by
        their URI, size and mtime (so a rewritten object is fetched again)."""
        if self.fs is None:
            return Path(self.path)
        size, mtime = self.info()
        key = hashlib.sha256(f"{self.uri}|{size}|{mtime}".encode()).hexdigest()[:24]
        dest = _cache_dir() / key / self.name
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            self.download(tmp)
            os.replace(tmp, dest)
        return dest

    def local_dir(self) -> Path:
        """A local copy of a folder (see :meth:`local_file`)."""
        if self.fs is None:
            return Path(self.path)
        listing = self.listing()
        key = hashlib.sha256(repr((self.uri, [(f.relpath(self), size, mtime) for f, size, mtime in listing]))
                             .encode()).hexdigest()[:24]
        dest = _cache_dir() / key / self.name
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            for f, _, _ in listing:
                f.download(tmp / f.relpath(self))
            tmp.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, dest)
            except OSError:  # another worker on this node finished the same download first
                if not dest.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ------------------------------------------------------------------------------ writing

    def mkdir(self) -> None:
        """Create the folder and its parents (object stores have no folders: nothing to do)."""
        if self.fs is None:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def open_output(self) -> BinaryIO:
        """A write stream to the final name (objects appear when closed). Prefer :meth:`write_bytes`."""
        if self.fs is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "wb")
        return self.fs.open_output_stream(self.path, compression=None)  # type: ignore[return-value]

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically: a hidden temp file renamed into place, or one upload."""
        if self.fs is None:
            with self.writing() as tmp:
                tmp.write_bytes(data)
            return
        with self.open_output() as f:  # one upload: no local temp file
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """A local path to write this file through; it appears here (renamed or uploaded) on success."""
        if self.fs is None:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                yield tmp
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with tempfile.TemporaryDirectory(prefix="tokenmill-") as d:
            tmp = Path(d) / self.name
            yield tmp
            self.upload(tmp)

    @contextmanager
    def writing_dir(self) -> Iterator[Path]:
        """A local folder to write this folder's files into (writers that need real files: memmaps).

        Locally that is the folder itself; for an object store a temp folder uploaded on success."""
        if self.fs is None:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="tokenmill-") as d:
            yield Path(d)
            for p in sorted(Path(d).rglob("*")):
                if p.is_file():
                    (self / p.relative_to(d).as_posix()).upload(p)

    def upload(self, source: Path) -> None:
        with open(source, "rb") as src, self.open_output() as dst:
            shutil.copyfileobj(src, dst, _CHUNK)

    def copy_to(self, dest: Location) -> None:
        """Copy a file (server side when both are on the same filesystem)."""
        if self.fs is None and dest.fs is None:
            Path(dest.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path, dest.path)
        elif self.fs is not None and dest.fs is self.fs:
            self.fs.copy_file(self.path, dest.path)
        else:
            with self.open() as src, dest.open_output() as dst:
                shutil.copyfileobj(src, dst, _CHUNK)

    def unlink(self) -> None:
        if self.fs is None:
            Path(self.path).unlink(missing_ok=True)
        elif self.is_file():
            self.fs.delete_file(self.path)

    def rmtree(self) -> None:
        """Delete a folder and everything below it; nothing happens when it does not exist."""
        if self.fs is None:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.files():
            self.fs.delete_dir_contents(self.path, missing_dir_ok=True)
            with suppress(OSError):
                self.fs.delete_dir(self.path)

    def copy_tree(self, dest: Location, skip: Sequence[str] = ()) -> None:
        """Copy every file below this folder to ``dest`` (but those below the subfolders ``skip``);
        in parallel, since on an object store each copy is one server-side request."""
        pairs = []
        for f in self.files():
            rel = f.relpath(self)
            if not any(rel.startswith(s + "/") for s in skip):
                pairs.append((f, dest / rel))
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda pair: pair[0].copy_to(pair[1]), pairs))

    def move_to(self, dest: Location) -> None:
        """Move a folder: a rename locally; on an object store a copy of every object, then a delete."""
        if self.fs is None:
            os.replace(self.path, dest.path)
            return
        self.copy_tree(dest)
        self.rmtree()


_CHUNK = 8 << 20


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"tokenmill-cache-{os.getuid()}"


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


def expand_uri(pattern: str) -> list[Location]:
    """Files matching a URI or URI glob (``*``, ``**``, ``[...]``; ``?`` starts the URI's query)."""
    parts = urlsplit(pattern)
    path = parts.path
    magic = _MAGIC.search(path)
    base_path = path if magic is None else path[: path.rfind("/", 0, magic.start()) + 1]
    fs, fs_base = _filesystem(urlunsplit((parts.scheme, parts.netloc, base_path, parts.query, "")))
    scheme = parts.scheme
    if magic is None:
        info = fs.get_file_info(fs_base)
        return [Location(fs_base, fs, scheme)] if info.type == pafs.FileType.File else []
    fs_base = fs_base.rstrip("/")
    rest = path[len(base_path):]
    regex = _pattern_regex(rest)
    selector = pafs.FileSelector(fs_base, recursive="/" in rest or "**" in rest, allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        rel = info.path[len(fs_base):].lstrip("/")
        if info.type == pafs.FileType.File and regex.match(rel):
            found.append(Location(info.path, fs, scheme))
    return found


def expand(pattern: str, base_dir: Path) -> list[Location]:
    """Files matching a local path/glob (relative to ``base_dir``) or a filesystem URI/glob."""
    if is_uri(pattern):
        return expand_uri(pattern)
    p = Path(pattern).expanduser()
    resolved = str(p if p.is_absolute() else base_dir / p)
    matches = sorted(glob.glob(resolved, recursive=True)) if glob.has_magic(resolved) else [resolved]
    return [Location(m) for m in matches if Path(m).is_file()]


def expand_paths(patterns: Sequence[str], base_dir: Path, *, allow_empty: bool = False) -> list[Location]:
    """Sorted, de-duplicated files matching an input's paths, globs and URIs.

    A path or glob that matches no file (a typo) is an error naming it, unless the input says
    ``allow_empty``; so is a directory: a silently skipped input would be data lost without a word.
    """
    files: dict[str, Location] = {}
    for pattern in patterns:
        try:
            found = expand(pattern, base_dir)
            is_dir = not found and Location.parse(pattern, base_dir).is_dir()
        except (LocationError, OSError) as exc:
            raise LocationError(f"cannot list {pattern!r}: {exc}") from None
        if is_dir:
            glob_hint = f"{pattern.rstrip('/')}/*.jsonl"
            raise LocationError(f"{pattern!r} is a directory, not a file (a glob such as '{glob_hint}' reads it)")
        if not found and not allow_empty:
            raise LocationError(f"{pattern!r} matches no file (allow_empty: true lets it match nothing)")
        for f in found:
            files.setdefault(f.uri, f)
    return [files[k] for k in sorted(files)]
