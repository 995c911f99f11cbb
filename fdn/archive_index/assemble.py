"""Assembly of an index directory from build-journal entries, and the swap that publishes it.

`assemble_index` writes `codes.zarr`, `slices.parquet` (and `slice_arrays.npz`, its columns that
a query reads), the hash index files and a copy of the model into a staging folder, then
`_swap_in` renames them into place under the swap lock and writes the manifest, listing every
file with its sha256, last (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec

from crashsafe import TEMP_SUFFIX, atomic_write, fsync_directory, sha256_hex
from fdn import __version__
from fdn.archive_index.brain_area import JOURNAL_KEY as BRAIN_KEY
from fdn.archive_index.brain_area import MIN_BRAIN_PERCENT, brain_file_bytes
from fdn.archive_index.layout import (
    BRAIN_PERCENT,
    CODES,
    ENCODED_DIR,
    FAISS_AUTO_LIMIT_GIB,
    MANIFEST,
    MODEL_DIR,
    SLICE_ARRAYS,
    SLICES,
    STATUS_COMPLETE,
)
from fdn.archive_index.locks import build_lock, swap_lock
from fdn.archive_index.manifest import (
    Manifest,
    file_entries,
    read_listed,
    read_manifest,
    write_manifest,
)
from fdn.archive_index.metadata import metadata_columns
from fdn.archive_index.slice_arrays import (
    derive_slice_arrays,
    load_slice_arrays,
    slice_arrays_source,
)
from fdn.archive_index.slice_table import read_slice_table
from fdn.errors import IndexDirError
from fdn.training.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from hashindex import HashIndex, index_files
from hashindex.checked_files import NUMPY_HEADER_LOCK

log = logging.getLogger(__name__)


# Rows per Zarr chunk along N: 4096 slices of 8×8 uint16 codes is 512 KiB per chunk.
CHUNK_ROWS = 4096


def assemble_index(
    journal_dir: Path,
    target: Path,
    cases: list[str],
    model,
    config,
    checksum: str,
    model_dir: Path,
    *,
    preset: str,
    skipped_cases: list[str],
    archive_roots: list[str],
    bit_budget: int | None,
    ivf_nlist: int | None,
    faiss_indexes: str = "auto",
    precision: str = "fp32",
    stages: dict[str, float] | None = None,
) -> tuple[dict, int]:
    """Write a complete index of `cases` (in this row order) into `target` from the journal
    entries in `journal_dir` (the build's own folder, or another index's for a shard).

    The files are staged, then swapped in under the swap lock with the manifest last
    (`_swap_in`). Returns the hash index's report and the number of slices. `stages`, when
    given, receives the seconds each step took (`assemble_<step>_s`).
    """
    clock = _StageClock(stages)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".assemble.", suffix=TEMP_SUFFIX))
    try:
        hash_report, n_slices = _assemble(
            journal_dir,
            staging,
            cases,
            model,
            config,
            checksum,
            bit_budget=bit_budget,
            ivf_nlist=ivf_nlist,
            faiss_indexes=faiss_indexes,
            clock=clock,
        )
        _copy_model(model_dir, staging / MODEL_DIR, checksum)
        manifest = Manifest(
            model_checksum=checksum,
            preset=preset,
            input_size=int(config.image_size),
            grid=grid_of(config),
            n_slices=n_slices,
            n_cases=len(cases),
            status=STATUS_COMPLETE,
            skipped_cases=skipped_cases,
            archive_roots=sorted(archive_roots),
            hashindex={
                "bit_budget": bit_budget,
                "ivf_nlist": ivf_nlist,
                "faiss_indexes": faiss_indexes,
            },
            encoding_precision=precision,
            min_brain_percent=MIN_BRAIN_PERCENT if (staging / BRAIN_PERCENT).is_file() else None,
            files=file_entries(staging),
            fdn_index_version=__version__,
        )
        clock.lap("checksums")
        _swap_in(target, staging, manifest)
        clock.lap("swap")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return hash_report, n_slices


def _assemble(
    index_dir: Path,
    staging: Path,
    cases: list[str],
    model,
    config,
    checksum: str,
    *,
    bit_budget,
    ivf_nlist,
    faiss_indexes: str,
    clock: _StageClock,
):
    """Write codes.zarr, slices.parquet and the hash indexes into `staging` from the encoded
    cases of `index_dir`."""
    # Per case, not per slice: a 10M-slice table built from Python lists of every slice's values
    # took gigabytes and minutes; strings repeated per slice come from one copy per case.
    normals: list[np.ndarray] = []
    abnormals: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    per_case: dict[str, list[str]] = {"source": [], "study_uid": [], "series_uids": []}
    metadata: list[dict] = []  # each case's metadata (`fdn.archive_index.metadata`)
    brains: list[np.ndarray | None] = []  # each case's brain percent per slice, if recorded
    for case in cases:
        path = index_dir / ENCODED_DIR / f"{case}.npz"
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:  # checked moments ago: changed since by someone else
            raise IndexDirError(
                f"{path}: unreadable ({type(exc).__name__}). Run the build again."
            ) from None
        with NUMPY_HEADER_LOCK, data:
            normals.append(data["normal"])
            abnormals.append(data["abnormal"])
            areas.append(data["lesion_area"])
            for key, values in per_case.items():
                values.append(str(data[key]) if key in data.files else "")
            meta = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
            brains.append(data[BRAIN_KEY] if BRAIN_KEY in data.files else None)
        metadata.append(meta if isinstance(meta, dict) else {})
    sizes = np.array([len(n) for n in normals], dtype=np.int64)
    normal = np.concatenate(normals)
    del normals
    abnormal = np.concatenate(abnormals)
    del abnormals
    volume_ids = np.repeat(np.arange(len(cases), dtype=np.int64), sizes)
    lesion_area = np.concatenate(areas)
    n_rows = int(sizes.sum())
    first_row = np.repeat(np.cumsum(sizes) - sizes, sizes)
    clock.lap("read")

    _write_codes(staging / CODES, normal, abnormal, checksum)
    clock.lap("codes")

    def repeated(values: list[str], empty_is_null: bool = False) -> pa.Array:
        """A string column holding values[volume] on each row."""
        dictionary = pa.array([(v or None) if empty_is_null else v for v in values], pa.string())
        indices = pa.array(volume_ids.astype(np.int32))
        return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())

    table = pa.table(
        {
            "row": pa.array(np.arange(n_rows, dtype=np.int64)),
            "case": repeated(cases),
            "slice": pa.array((np.arange(n_rows, dtype=np.int64) - first_row).astype(np.int32)),
            "volume": pa.array(volume_ids),
            "source": repeated(per_case["source"]),
            "lesion_area": pa.array(lesion_area, pa.int64(), mask=lesion_area < 0),
            "model_checksum": repeated([checksum] * len(cases)),
            "study_uid": repeated(per_case["study_uid"], empty_is_null=True),
            "series_uids": repeated(per_case["series_uids"], empty_is_null=True),
            **_metadata_arrays(metadata, volume_ids),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    parquet = sink.getvalue().to_pybytes()
    atomic_write(staging / SLICES, parquet)
    _write_slice_arrays(staging, parquet, n_rows, len(cases), checksum)
    known = [b for b in brains if b is not None]
    if len(known) == len(brains):  # journals written before it lack some
        atomic_write(staging / BRAIN_PERCENT, brain_file_bytes(np.concatenate(known)))
    clock.lap("table")

    codebook_normal = model.quantizer_normal.codebook.detach().cpu().numpy().astype(np.float32)
    codebook_abnormal = model.quantizer_abnormal.codebook.detach().cpu().numpy().astype(np.float32)
    hash_index = HashIndex.build(
        codebook_normal, codebook_abnormal, bit_budget=bit_budget, ivf_nlist=ivf_nlist
    )
    faiss_bytes = hash_index.faiss_bytes(normal.shape[0], normal.shape[1] * normal.shape[2])
    # an IVF was asked for by name: auto keeps the FAISS files it lives in
    too_large = ivf_nlist is None and faiss_bytes > FAISS_AUTO_LIMIT_GIB * 2**30
    if faiss_indexes == "never" or (faiss_indexes == "auto" and too_large):
        if faiss_indexes == "auto":
            log.info(
                "FAISS files left out: they would take %.1f GiB (> %d GiB); engines faiss-flat "
                "and faiss-ivf need --faiss-indexes always",
                faiss_bytes / 2**30,
                FAISS_AUTO_LIMIT_GIB,
            )
        hash_index.skip_faiss()
    hash_index.add(normal, abnormal, volume_ids)
    clock.lap("hash")
    hash_index.write(staging)
    clock.lap("hash_write")
    return hash_index.report, int(normal.shape[0])


class _StageClock:
    """Seconds per assembly step, added into a build report's stages (`assemble_<step>_s`)."""

    def __init__(self, stages: dict[str, float] | None):
        self.stages = stages
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        if self.stages is not None:
            key = f"assemble_{step}_s"
            self.stages[key] = self.stages.get(key, 0.0) + now - self.last
        self.last = now


def _metadata_arrays(per_case: list[dict], volume_ids: np.ndarray) -> dict:
    """The slice table's metadata columns: each case's value on every row of its volume."""
    types = {"number": pa.float64(), "date": pa.date32(), "text": pa.string()}
    rows = pa.array(volume_ids)
    return {
        name: pa.array(values, types[kind]).take(rows)
        for name, (kind, values) in metadata_columns(per_case).items()
    }


def _write_slice_arrays(
    folder: Path, parquet: bytes, n_rows: int, n_cases: int, checksum: str
) -> bytes | None:
    """Write slice_arrays.npz, the columns a query reads, derived from `parquet` (the bytes of
    slices.parquet) as a reader reads them; returns its bytes, or None where the table does not
    fit its layout (queries then read slices.parquet)."""
    table = read_slice_table(
        parquet,
        folder / SLICES,
        n_rows=n_rows,
        n_cases=n_cases,
        model_checksum=checksum,
    )
    data = derive_slice_arrays(table, sha256_hex(parquet))
    if data is None:
        log.warning("%s: not written (the slice table does not fit it)", SLICE_ARRAYS)
        return None
    atomic_write(folder / SLICE_ARRAYS, data)
    return data


def add_slice_arrays(index_dir: str | Path) -> bool:
    """Give an index built before slice_arrays.npz existed (or whose copy is stale) a current
    one, listed in its manifest, so that its queries read no Parquet. Holds the build lock,
    and writes the file and the manifest under the swap lock. Returns whether it wrote one."""
    index_dir = Path(index_dir)
    with build_lock(index_dir):
        manifest = read_manifest(index_dir)
        parquet = read_listed(index_dir, manifest, SLICES, verify=True)
        listed = manifest.files.get(SLICE_ARRAYS)
        if listed is not None:
            arrays = load_slice_arrays(
                read_listed(index_dir, manifest, SLICE_ARRAYS, verify=True),
                index_dir / SLICE_ARRAYS,
            )
            if slice_arrays_source(arrays) == manifest.files[SLICES]["sha256"]:
                return False
        with swap_lock(index_dir, shared=False):
            data = _write_slice_arrays(
                index_dir, parquet, manifest.n_slices, manifest.n_cases, manifest.model_checksum
            )
            if data is None:
                return False
            manifest.files[SLICE_ARRAYS] = {"sha256": sha256_hex(data), "size": len(data)}
            write_manifest(index_dir, manifest)
    return True


def _write_codes(target: Path, normal: np.ndarray, abnormal: np.ndarray, checksum: str) -> None:
    """codes.zarr, encoded in memory, then every file of it written with `atomic_write`.

    Every chunk is written, even one of zeros (write_empty_chunks): a reader can then tell a
    missing chunk from a chunk of code 0.
    """
    files: dict = {}
    group = zarr.open_group(zarr.storage.MemoryStore(files), mode="w")
    for name, array in (("normal", normal), ("abnormal", abnormal)):
        stored = group.create_array(
            name,
            shape=array.shape,
            chunks=(CHUNK_ROWS, *array.shape[1:]),
            dtype="uint16",
            # lz4 on byte-shuffled codes: as small as zstd here, 3x faster to open (1M slices)
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            config={"write_empty_chunks": True},
        )
        stored[:] = array
    group.attrs["model_checksum"] = checksum
    for key in sorted(files):
        path = target / key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, files[key].to_bytes())


def _copy_model(model_dir: Path, target: Path, checksum: str) -> None:
    """Copy the model's config and weights (not the optimiser state) into the index, so that
    queries on external images encode with exactly the model that encoded the archive."""
    target.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        data = (model_dir / name).read_bytes()
        if name == WEIGHTS_FILE and sha256_hex(data) != checksum:
            raise IndexDirError(
                f"{model_dir / name}: changed during the build (sha256 differs from the one the "
                f"cases were encoded with). Run the build again once the model is final."
            )
        atomic_write(target / name, data)


def _swap_in(index_dir: Path, staging: Path, manifest: Manifest) -> None:
    """Rename the staged files into place and write the manifest last, under the swap lock.

    Readers wait for the swap (they take the lock shared), so they see the previous complete
    index or the new one. Killed during the swap, the directory has no manifest (an interrupted
    build) and the next build assembles it again from the journal.
    """
    with swap_lock(index_dir, shared=False):
        (index_dir / MANIFEST).unlink(missing_ok=True)
        fsync_directory(index_dir)
        staged = sorted(p.name for p in staging.iterdir())
        for name in staged:
            source, target = staging / name, index_dir / name
            if source.is_dir():
                old = None
                if target.exists() or target.is_symlink():
                    old = Path(
                        tempfile.mkdtemp(dir=index_dir, prefix=f".{name}.old.", suffix=TEMP_SUFFIX)
                    )
                    os.replace(target, old / name)
                os.replace(source, target)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(source, target)
        for name in (*index_files().names, SLICE_ARRAYS):  # e.g. the IVF files of a previous build
            if name not in staged:
                (index_dir / name).unlink(missing_ok=True)
        fsync_directory(index_dir)
        write_manifest(index_dir, manifest)


def grid_of(config) -> tuple[int, int]:
    side = int(config.latent_size)
    return side, side
