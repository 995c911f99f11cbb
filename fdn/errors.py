"""The exceptions of the `fdn` package.

Each message names the file (or case), what was expected, what was found, and how to fix it.
"""


class FdnError(Exception):
    """Base class of every error raised on purpose by `fdn`."""


class ArchiveError(FdnError):
    """An archive, a case or one of its files is missing, unreadable or inconsistent."""


class ModelError(FdnError):
    """A model directory or checkpoint is missing, corrupt or incompatible."""


class IndexDirError(FdnError):
    """An index directory is missing, incomplete, corrupt or built by another model/version."""
