"""An index directory's manifest: what it says, how it is checked, and the files it lists.

Trust. A reader trusts nothing but the manifest: every file it lists is checked for its size,
and for its sha256 before it is used (the slice table, slice_arrays.npz and hashindex.json
when the index is opened; the FAISS files, the model weights and codes.zarr on first use, as
only some queries need them). hashindex.json, itself checked so, records the checksums by
which `HashIndex.read` checks the hash index's files (a fast `sum64` for its large row arrays).
Names come from a fixed list (`is_index_file`), never from a file's content, so no file can
send a reader out of the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crashsafe import (
    CheckedReadError,
    atomic_write_json,
    checked_read,
    read_checked,
    sha256_hex,
)
from fdn.archive_index.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_FILES,
    PLAN,
    REQUIRED_FILES,
    STATUS_BUILDING,
    STATUS_COMPLETE,
    fix_for,
    is_index_file,
)
from fdn.errors import IndexDirError
from hashindex import index_files

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass
class Manifest:
    """What `manifest.json` says about an index directory."""

    model_checksum: str
    preset: str
    input_size: int
    grid: tuple[int, int]
    n_slices: int
    n_cases: int
    status: str = STATUS_BUILDING
    skipped_cases: list[str] = field(default_factory=list)
    # The archive folders (absolute) the cases were read from: readers of source images (the
    # montage) stay inside them, whatever the slice table names.
    archive_roots: list[str] = field(default_factory=list)
    hashindex: dict = field(default_factory=dict)
    # the encoder's arithmetic ("fp32" or "bf16", `fdn.archive_index.encode`): external queries
    # are encoded the same way; manifests written before it were fp32
    encoding_precision: str = "fp32"
    # lesion queries leave out slices with less brain than this, in percent (brain_percent.npy);
    # None: the index has no such file (built before it) and leaves nothing out
    min_brain_percent: int | None = None
    # name (relative to the index directory) -> {"sha256": hex digest, "size": bytes}
    files: dict[str, dict] = field(default_factory=dict)
    fdn_index_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _valid_files(value) -> bool:
    return isinstance(value, dict) and all(
        is_index_file(name)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and _SHA256.match(entry["sha256"]) is not None
        and _is_int(entry.get("size"))
        and entry["size"] >= 0
        for name, entry in value.items()
    )


# field -> (required, check, what it should be)
_FIELDS = {
    "model_checksum": (
        True,
        lambda v: isinstance(v, str) and _SHA256.match(v),
        "a sha256 hex digest",
    ),
    "preset": (True, lambda v: isinstance(v, str), "a string"),
    "input_size": (True, lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "grid": (
        True,
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(s) and s >= 1 for s in v),
        "a list of two positive integers",
    ),
    "n_slices": (True, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "n_cases": (True, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "status": (True, lambda v: v in (STATUS_BUILDING, STATUS_COMPLETE), "'building' or 'complete'"),
    "skipped_cases": (False, _is_str_list, "a list of case ids"),
    "archive_roots": (False, _is_str_list, "a list of folders"),
    "hashindex": (False, lambda v: isinstance(v, dict), "an object"),
    "encoding_precision": (False, lambda v: v in ("fp32", "bf16"), "'fp32' or 'bf16'"),
    "min_brain_percent": (
        False,
        lambda v: v is None or (_is_int(v) and 0 <= v <= 100),
        "null or a percentage 0..100",
    ),
    "files": (True, _valid_files, "an object mapping index file names to {sha256, size}"),
    "fdn_index_version": (False, lambda v: isinstance(v, str), "a string"),
}


def parse_manifest(data, path: Path) -> Manifest:
    """The Manifest a decoded `manifest.json` describes; IndexDirError for anything else."""
    fix = fix_for(path.parent)
    if not isinstance(data, dict):
        raise IndexDirError(
            f"{path}: expected a JSON object (an fdn-index manifest), found a JSON "
            f"{type(data).__name__}. {fix}."
        )
    if data.get("format") != FORMAT_NAME:
        raise IndexDirError(
            f"{path}: not an fdn-index manifest (format={str(data.get('format'))[:40]!r}, "
            f"expected {FORMAT_NAME!r}). Pass the directory written by `fdn-index build`."
        )
    if data.get("format_version") != FORMAT_VERSION or not _is_int(data.get("format_version")):
        raise IndexDirError(
            f"{path}: index format version {str(data.get('format_version'))[:20]}, this fdn-index "
            f"reads version {FORMAT_VERSION}. Rebuild the index with this version of fdn-index "
            f"(a new --index directory, or delete this one first)."
        )
    values = {}
    for name, (required, check, what) in _FIELDS.items():
        if name not in data:
            if required:
                raise IndexDirError(f"{path}: the manifest has no {name!r} ({what}). {fix}.")
            continue
        if not check(data[name]):
            raise IndexDirError(
                f"{path}: {name!r} should be {what}, found {str(data[name])[:60]!r}. {fix}."
            )
        values[name] = data[name]
    values["grid"] = tuple(values["grid"])
    manifest = Manifest(**values)
    if manifest.status == STATUS_COMPLETE:
        missing = [name for name in REQUIRED_FILES if name not in manifest.files]
        if missing and set(missing) <= set(index_files().rows):
            raise IndexDirError(
                f"{path}: an index written before the hash index stored its rows (it lists no "
                f"{', '.join(missing)}); this version opens it without reading codes.zarr. "
                f"{fix}."
            )
        if missing:
            raise IndexDirError(
                f"{path}: the manifest lists no {', '.join(missing)}; a complete index lists "
                f"every file with its checksum. {fix}."
            )
        weights = manifest.files[MODEL_FILES[1]]["sha256"]
        if weights != manifest.model_checksum:
            raise IndexDirError(
                f"{path}: model_checksum {manifest.model_checksum[:12]}… but the listed "
                f"{MODEL_FILES[1]} has sha256 {weights[:12]}…. {fix}."
            )
    return manifest


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    data["grid"] = list(manifest.grid)
    atomic_write_json(Path(index_dir) / MANIFEST, data)


def looks_like_archive(folder: Path) -> bool:
    """Whether `folder` holds case folders of NIfTI files (an archive, not an index)."""
    try:
        for sub in list(folder.iterdir())[:50]:
            if sub.is_dir() and any(sub.glob(f"{sub.name}_*.nii*")):
                return True
    except OSError:
        return False
    return False


def read_manifest(index_dir: Path, *, require_complete: bool = True) -> Manifest:
    """Read and check `manifest.json`; raise IndexDirError saying what is wrong and the fix."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir():
        raise IndexDirError(
            f"{index_dir}: no index directory here. Build one with `fdn-index build ARCHIVE "
            f"--index {index_dir}`."
        )
    if not path.is_file():
        if looks_like_archive(index_dir):
            raise IndexDirError(
                f"{index_dir}: looks like an image archive (case folders of NIfTI files), not "
                f"an index. Build an index of it with `fdn-index build {index_dir} --index "
                f"INDEX_DIR` and pass --index INDEX_DIR."
            )
        if not (index_dir / PLAN).is_file():
            raise IndexDirError(
                f"{index_dir}: not an fdn-index directory (no {MANIFEST}, no {PLAN}). Pass the "
                f"directory written by `fdn-index build ARCHIVE --index DIR`."
            )
        raise IndexDirError(
            f"{path}: missing. {index_dir} is not a finished index (an interrupted build?). "
            f"Run `fdn-index build` again with the same arguments to resume it."
        )
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexDirError(
            f"{path}: unreadable JSON ({type(exc).__name__}: {str(exc)[:80]}). "
            f"{fix_for(index_dir)}."
        ) from None
    manifest = parse_manifest(data, path)
    if require_complete and manifest.status != STATUS_COMPLETE:
        raise IndexDirError(
            f"{path}: status is {manifest.status!r}, the build did not finish. Run `fdn-index "
            f"build` again with the same arguments to resume it."
        )
    return manifest


def file_entries(folder: Path, prefix: str = "") -> dict[str, dict]:
    """{relative name: {sha256, size}} of every regular file under `folder` (sorted)."""
    entries = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            name = prefix + path.relative_to(folder).as_posix()
            entries[name] = {"sha256": sha256_hex(data), "size": len(data)}
    return entries


def read_listed(index_dir: Path, manifest: Manifest, name: str, *, verify: bool) -> bytes:
    """The content of the listed file `name`, checked against the manifest (its size before
    it is read, and with ``verify`` its sha256); IndexDirError naming the fault and the fix."""
    path = index_dir / name
    entry = manifest.files.get(name)
    fix = fix_for(index_dir)
    if entry is None:
        raise IndexDirError(f"{index_dir / MANIFEST}: does not list {name}. {fix}.")
    try:
        return read_checked(path, entry["size"], entry["sha256"] if verify else None)
    except CheckedReadError as exc:
        raise IndexDirError(_listed_fault(exc, entry, fix)) from None


def _listed_fault(exc: CheckedReadError, entry: dict, fix: str) -> str:
    path = exc.path
    if exc.fault == checked_read.MISSING:
        return f"{path}: missing; the manifest lists it ({entry['size']} bytes). {fix}."
    if exc.fault == checked_read.UNREADABLE:
        return f"{path}: cannot read it ({exc.found}). {fix}."
    if exc.fault == checked_read.NOT_REGULAR:
        return f"{path}: not a regular file. {fix}."
    if exc.fault == checked_read.SIZE:
        return (
            f"{path}: {exc.found} bytes, the manifest records {exc.expected}; the file was "
            f"truncated or changed after the build. {fix}."
        )
    return (
        f"{path}: sha256 {exc.found[:16]}…, the manifest records {exc.expected[:16]}…; "
        f"the file was damaged or changed after the build. {fix}."
    )
