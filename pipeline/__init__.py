"""tokenmill: declarative, resumable Ray pipelines from raw text to training-ready token arrays."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenmill")
except PackageNotFoundError:  # running from a source checkout that is not installed
    __version__ = "0.1.0+source"

__all__ = ["__version__"]
