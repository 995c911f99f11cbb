"""Reading BraTS-layout archives: discovery, validation, preprocessing and lazy iteration."""

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
