"""Reading BraTS-layout archives: discovery, validation, preprocessing and lazy iteration.

The names below load lazily, so that a module that needs only `fdn.data.labels` (a query, for
its default slice) does not import nibabel and pydicom (~0.5 s).
"""

from typing import TYPE_CHECKING

_EXPORTS = {
    "ANAT_LABELS": "fdn.data.labels",
    "SEG_LABELS": "fdn.data.labels",
    "SEQUENCES": "fdn.data.labels",
    "seg_to_classes": "fdn.data.labels",
    "Archive": "fdn.data.archive",
    "BadCase": "fdn.data.archive",
    "case_files_from_paths": "fdn.data.archive",
    "CaseError": "fdn.data.case",
    "Slice": "fdn.data.case",
    "Volume": "fdn.data.case",
    "load_case_files": "fdn.data.case",
    "read_case": "fdn.data.case",
}

if TYPE_CHECKING:
    from fdn.data.archive import Archive, BadCase, case_files_from_paths
    from fdn.data.case import CaseError, Slice, Volume, load_case_files, read_case
    from fdn.data.labels import ANAT_LABELS, SEG_LABELS, SEQUENCES, seg_to_classes

__all__ = [
    "ANAT_LABELS",
    "SEG_LABELS",
    "SEQUENCES",
    "Archive",
    "BadCase",
    "CaseError",
    "case_files_from_paths",
    "Slice",
    "Volume",
    "load_case_files",
    "read_case",
    "seg_to_classes",
]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fdn.data' has no attribute {name!r}")
