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


class ClusterError(FdnError):
    """A Dask cluster cannot be made or reached, or lost a task's workers."""


class QueryError(FdnError, ValueError):
    """A query's inputs are invalid: an unknown option value, case or slice, or an unusable
    external case. The message says what was given, what is allowed, and how to fix it."""


class UnknownCaseError(QueryError):
    """The query names a case that is not in the index."""


class DicomImportError(ArchiveError):
    """A DICOM study, series or file cannot be imported: `study`, `series` and `file` say where
    (None when unknown), `fault` what is wrong and how to fix it."""

    def __init__(
        self,
        fault: str,
        *,
        study: str | None = None,
        series: str | None = None,
        file: str | None = None,
    ):
        self.study, self.series, self.file, self.fault = study, series, file, fault
        where = ", ".join(
            part
            for part in (
                f"study {study}" if study else "",
                f"series {series}" if series else "",
                f"file {file}" if file else "",
            )
            if part
        )
        super().__init__(f"{where}: {fault}" if where else fault)
