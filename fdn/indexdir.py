"""The index directory: its file names, its manifest, and how its files are written safely.

An index directory (the output of `fdn-index build`) holds, by the names DESIGN.md fixes:

    manifest.json           format name and version, build status, model checksum, counts
    model/                  the model's config.json and weights, so queries encode with the same model
    codes.zarr/             arrays `normal` and `abnormal`, (N, h, w) uint16, chunked along N
    slices.parquet          row i describes row i of the code arrays
    codebook_*.npy, bits_*.npz, hashindex.json, faiss_*.index   written by `hashindex`
    encoded/<case>.npz      the build journal: one file per encoded case (see `fdn.build`)
    build_plan.json         the cases of this index in row order, and the model they are encoded with

The manifest is written last and atomically; a directory whose manifest is missing or says
"building" is an interrupted build, which loads nowhere and which `build` resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fdn.errors import IndexDirError

FORMAT_NAME = "fdn-index"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
PLAN = "build_plan.json"
CODES = "codes.zarr"
SLICES = "slices.parquet"
MODEL_DIR = "model"
ENCODED_DIR = "encoded"

STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"


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
    fdn_index_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def replace_directory(tmp_dir: Path, final_dir: Path) -> None:
    """Put a fully written `tmp_dir` in place of `final_dir` (which may exist)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    data["grid"] = list(manifest.grid)
    atomic_write_json(Path(index_dir) / MANIFEST, data)


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
        raise IndexDirError(
            f"{path}: missing. {index_dir} is not a finished index (an interrupted build?). "
            f"Run `fdn-index build` again with the same arguments to resume it."
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexDirError(f"{path}: unreadable JSON ({exc}). Rebuild the index.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise IndexDirError(f"{path}: not an fdn-index manifest (format={data.get('format')!r}).")
    if data.get("format_version") != FORMAT_VERSION:
        raise IndexDirError(
            f"{path}: index format version {data.get('format_version')}, this fdn-index reads "
            f"version {FORMAT_VERSION}. Rebuild the index with this version of fdn-index."
        )
    try:
        data["grid"] = tuple(data["grid"])
        manifest = Manifest(**data)
    except (KeyError, TypeError) as exc:
        raise IndexDirError(f"{path}: malformed manifest ({exc}). Rebuild the index.") from exc
    if require_complete and manifest.status != STATUS_COMPLETE:
        raise IndexDirError(
            f"{path}: status is {manifest.status!r}, the build did not finish. Run `fdn-index "
            f"build` again with the same arguments to resume it."
        )
    return manifest
