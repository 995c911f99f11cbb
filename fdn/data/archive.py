"""An archive of cases in the BraTS layout: discovery, validation and lazy iteration.

Layout (README.md, "The archive reader"): one folder per case, ``CASE/CASE_t1.nii.gz``, ``_t1ce``, ``_t2``,
``_flair``; optional ``_seg``, ``_anat``, ``_pseudohealthy``. ``.nii`` files are accepted too.
Nothing is read at construction; every method that reads holds at most one case in memory.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from fdn.data.case import (
    CaseError,
    Slice,
    Volume,
    load_case_files,
    preprocess,
    read_case,
    volume_slices,
)
from fdn.data.labels import OPTIONAL_FILES, SEQUENCES
from fdn.errors import ArchiveError

log = logging.getLogger(__name__)

FILE_KEYS = SEQUENCES + OPTIONAL_FILES
EXTENSIONS = (".nii.gz", ".nii")


_FILE_NAME = re.compile(r"^(?P<case>.+)_(?P<key>" + "|".join(FILE_KEYS) + r")(?:\.nii\.gz|\.nii)$")


class BadCase(NamedTuple):
    """A case left out: its id, the faulty file (None when no single file), the fault."""

    case: str
    file: Path | None
    fault: str


def case_files_in(folder: Path, case_id: str) -> dict[str, Path]:
    """The files of a case folder that follow the BraTS names, keyed by sequence / label.

    Only regular files count (symlinks to them too); see `unreadable_name` for the rest.
    """
    found = {}
    for key in FILE_KEYS:
        for extension in EXTENSIONS:
            path = folder / f"{case_id}_{key}{extension}"
            if path.is_file():
                found[key] = path
                break
    return found


def unreadable_name(folder: Path, case_id: str, key: str) -> Path | None:
    """A BraTS name of `key` that exists in `folder` but is no readable regular file (a
    dangling link, a symlink loop, a folder, a FIFO), or None."""
    for extension in EXTENSIONS:
        path = folder / f"{case_id}_{key}{extension}"
        if os.path.lexists(path) and not path.is_file():
            return path
    return None


def case_files_inside(
    source: str | os.PathLike, case_id: str, roots: list[str] | list[Path]
) -> dict[str, Path]:
    """The files of case `case_id` in its folder `source` (as an index's slice table names
    it), each resolved (symlinks followed) and checked to lie inside one of the archive folders
    `roots` (as the index's manifest records them).

    Raises ArchiveError for a source outside every root, with `..` in it, relative, missing,
    or a case file that points outside. A name read from a file never leads a reader out of the
    archive the index was built from.
    """
    resolved_roots = []
    for root in roots:
        root = Path(root)
        if root.is_absolute():
            try:
                resolved_roots.append(root.resolve(strict=True))
            except (OSError, RuntimeError):
                continue  # an archive that is gone holds nothing to read
    if not resolved_roots:
        raise ArchiveError(
            "the index records no archive folder that exists here, so no source "
            f"image of case {case_id!r} may be read; restore the archive, or "
            "rebuild the index with this version of fdn-index"
        )

    def inside(path: Path) -> bool:
        return any(path != root and path.is_relative_to(root) for root in resolved_roots)

    source = Path(source)
    if (
        not source.is_absolute()
        or ".." in source.parts
        or "/" in case_id
        or case_id in ("", ".", "..")
    ):
        raise ArchiveError(
            f"case {case_id!r}: its source folder {str(source)!r} is not an "
            "absolute path without '..'; refused (the slice table is damaged)"
        )
    try:
        folder = source.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ArchiveError(
            f"case {case_id!r}: its source folder {source} is missing or "
            "unreadable; restore the archive"
        ) from None
    if not folder.is_dir() or not inside(folder):
        raise ArchiveError(
            f"case {case_id!r}: its source folder {source} lies outside the "
            f"archive folders of the index ({', '.join(map(str, roots))}); "
            "refused"
        )
    files = {}
    for key, path in case_files_in(folder, case_id).items():
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not inside(resolved):
            raise ArchiveError(
                f"case {case_id!r}: {path} points outside the archive folders of the index; refused"
            )
        files[key] = resolved
    return files


def case_files_from_paths(paths: list[Path]) -> tuple[str, dict[str, Path]]:
    """The case id and files of an external case given as one folder or as loose NIfTI files.

    A folder is read like an archive case folder (CASE/CASE_t1.nii.gz, …); when its name is
    not the files' prefix, the one prefix its BraTS-named files share is the case id. Loose
    files must be named PREFIX_<t1|t1ce|t2|flair|seg|anat|pseudohealthy>.nii[.gz] with one
    shared PREFIX. Missing sequences are reported later, by `read_case`.

    Raises ArchiveError when no file is recognised, names clash, or prefixes differ.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ArchiveError("no input given: pass a case folder or its NIfTI files")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = case_files_in(folder, folder.name)
        if files:
            return folder.name, files
        paths = sorted(p for p in folder.iterdir() if p.is_file() and _FILE_NAME.match(p.name))
        if not paths:
            raise ArchiveError(
                f"{folder} holds no NIfTI file named CASE_t1.nii.gz, "
                "CASE_t1ce.nii.gz, CASE_t2.nii.gz, CASE_flair.nii.gz"
            )
    cases, files = set(), {}
    for path in paths:
        match = _FILE_NAME.match(path.name)
        if match is not None and os.path.lexists(path) and not path.is_file():
            raise ArchiveError(
                f"{path} is not a readable regular file (a symlink loop, a "
                "dangling link, a folder or a special file); pass the file itself"
            )
        if match is None or not path.is_file():
            raise ArchiveError(
                f"{path} is not a NIfTI file named CASE_<sequence>.nii.gz "
                f"(sequence one of {', '.join(FILE_KEYS)}); rename it"
            )
        key = match["key"]
        if key in files:
            raise ArchiveError(f"two {key} files given: {files[key]} and {path}; pass one")
        cases.add(match["case"])
        files[key] = path
    if len(cases) > 1:
        raise ArchiveError(
            f"the files belong to different cases {sorted(cases)}; pass the files of one case"
        )
    return cases.pop(), files


class Archive:
    """The cases under `root`, one folder each, sorted by id.

    Raises ArchiveError if `root` is missing or holds no case folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ArchiveError(
                f"archive folder {self.root} does not exist or is not a folder; "
                "pass the folder that holds one sub-folder per case"
            )
        self._files = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = case_files_in(folder, folder.name)
            if files:
                self._files[folder.name] = files
        if not self._files:
            raise ArchiveError(
                f"archive folder {self.root} holds no case: expected sub-folders CASE/ with "
                "CASE_t1.nii.gz, CASE_t1ce.nii.gz, CASE_t2.nii.gz, CASE_flair.nii.gz"
            )
        self.bad: list[BadCase] = []

    def __repr__(self) -> str:
        return f"Archive({str(self.root)!r}, {len(self._files)} cases)"

    def __len__(self) -> int:
        return len(self._files)

    @property
    def case_ids(self) -> list[str]:
        """Case ids, sorted."""
        return list(self._files)

    def case_dir(self, case_id: str) -> Path:
        """The absolute folder of a case (symlinks resolved), whatever files it holds."""
        if case_id not in self._files:
            raise ArchiveError(f"case {case_id!r} is not in archive {self.root}")
        return (self.root / case_id).resolve()

    def case_files(self, case_id: str) -> dict[str, Path]:
        """Files of a case: keys are the sequences present plus seg/anat/pseudohealthy."""
        if case_id not in self._files:
            raise ArchiveError(f"case {case_id!r} is not in archive {self.root}")
        return dict(self._files[case_id])

    def _checked_files(self, case_id: str) -> dict[str, Path]:
        files = self.case_files(case_id)
        for key in SEQUENCES:
            if key not in files:
                broken = unreadable_name(self.root / case_id, case_id, key)
                if broken is not None:
                    raise CaseError(
                        case_id,
                        broken,
                        f"missing the {key} sequence: the name exists but is not a "
                        "readable regular file (a symlink loop, a dangling link, a "
                        "folder or a special file); replace it",
                    )
                expected = self.root / case_id / f"{case_id}_{key}.nii.gz"
                raise CaseError(case_id, expected, f"missing the {key} sequence; add it")
        return files

    def load(
        self,
        case_id: str,
        size: int,
        timings: dict | None = None,
        extras: tuple[str, ...] = ("seg", "anat", "pseudohealthy"),
    ) -> Volume:
        """Validate and preprocess one case; raises ArchiveError naming case, file and fault.

        timings, when given, receives the seconds spent reading ("read_s") and preprocessing
        ("preprocess_s"), for the build's per-stage figures. extras: the optional files read
        beside the sequences (a build needs only seg: a synthetic case's 4-channel
        pseudo-healthy volume alone is as much to inflate and resize as the sequences).
        """
        files = {
            key: path
            for key, path in self._checked_files(case_id).items()
            if key in SEQUENCES or key in extras
        }
        if timings is None:
            return load_case_files(files, size, case_id)
        t0 = time.perf_counter()
        raw = read_case(files, case_id)
        t1 = time.perf_counter()
        volume = preprocess(raw, size)
        timings.update(read_s=t1 - t0, preprocess_s=time.perf_counter() - t1)
        return volume

    def _record(self, error: CaseError) -> None:
        bad = BadCase(error.case, error.file, error.fault)
        log.warning("skipping bad case: %s", error)
        if all(b.case != bad.case for b in self.bad):
            self.bad.append(bad)

    def validate(self, skip_bad: bool = False) -> list[BadCase]:
        """Read every case once (one at a time) and check it.

        skip_bad=False raises on the first bad case; True returns the bad cases (also kept in
        `self.bad`).
        """
        found = []
        for case_id in self.case_ids:
            try:
                read_case(self._checked_files(case_id), case_id)
            except CaseError as error:
                if not skip_bad:
                    raise
                self._record(error)
                found.append(BadCase(error.case, error.file, error.fault))
        return found

    def iter_volumes(self, size: int, skip_bad: bool = False) -> Iterator[Volume]:
        """Preprocessed volumes, one case at a time (lazy). Bad cases raise, or with
        skip_bad are logged, appended to `self.bad` and left out."""
        for case_id in self.case_ids:
            try:
                volume = self.load(case_id, size)
            except CaseError as error:
                if not skip_bad:
                    raise
                self._record(error)
                continue
            yield volume

    def iter_slices(self, size: int, skip_bad: bool = False) -> Iterator[Slice]:
        """Axial slices of every case in order (case by case, slice by slice)."""
        for volume in self.iter_volumes(size, skip_bad=skip_bad):
            yield from volume_slices(volume)
