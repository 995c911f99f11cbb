"""Encode an archive into an index directory: `fdn-index build`.

A build runs in two phases so that it can be killed at any point and run again:

1. Encode. Each case of the plan is encoded with the model and written, atomically, to
   `encoded/<case>.npz` (its code grids and slice metadata). A case already there is reused.
2. Assemble. The code arrays, the slice table and the hash indexes are written afresh from the
   encoded cases in plan order; then the manifest, last, says the index is complete.

Because assembly is a pure function of the encoded cases and the plan, a build that was killed
and resumed ends with exactly the files of an uninterrupted one. `add=True` appends new cases
to the plan (existing rows keep their ids) and assembles again.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from fdn import __version__
from fdn.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, model_checksum
from fdn.data import Archive
from fdn.dicom.provenance import read_provenance
from fdn.encode import encode_images
from fdn.errors import ArchiveError, IndexDirError
from fdn.indexdir import (
    CODES,
    ENCODED_DIR,
    MANIFEST,
    MODEL_DIR,
    PLAN,
    SLICES,
    STATUS_BUILDING,
    STATUS_COMPLETE,
    Manifest,
    atomic_write_bytes,
    atomic_write_json,
    read_manifest,
    replace_directory,
    write_manifest,
)
from hashindex import HashIndex

log = logging.getLogger(__name__)

# Rows per Zarr chunk along N: 4096 slices of 8×8 uint16 codes is 512 KiB per chunk.
CHUNK_ROWS = 4096


@dataclass
class BuildReport:
    index_dir: str
    n_cases: int
    n_slices: int
    encoded_now: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    hashindex: dict = field(default_factory=dict)


def build_index(
    archive_root: Path,
    model_dir: Path,
    index_dir: Path,
    *,
    add: bool = False,
    skip_bad: bool = False,
    batch_size: int = 64,
    bit_budget: int | None = None,
    ivf_nlist: int | None = None,
    device: str | None = None,
    on_case: Callable[[str], None] | None = None,
) -> BuildReport:
    """Encode every case of `archive_root` with the model in `model_dir` into `index_dir`.

    on_case, when given, is called with each case id as it is finished (for a progress bar).
    Raises ArchiveError for a bad case (unless skip_bad), IndexDirError when `index_dir`
    belongs to another model or format, ModelError for a bad model directory.
    """
    archive_root, model_dir, index_dir = Path(archive_root), Path(model_dir), Path(index_dir)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config = load_model(model_dir, device=device)
    checksum = model_checksum(model_dir)
    archive = Archive(archive_root)

    plan = _make_plan(index_dir, archive, checksum, config, model_dir, add=add)
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / ENCODED_DIR).mkdir(exist_ok=True)
    atomic_write_json(index_dir / PLAN, plan)
    _mark_building(index_dir)

    report = BuildReport(index_dir=str(index_dir), n_cases=0, n_slices=0)
    skipped = {entry["case"]: entry for entry in plan.get("skipped", [])}
    for case in plan["cases"]:
        if case in skipped:
            continue
        encoded_path = index_dir / ENCODED_DIR / f"{case}.npz"
        if _encoded_is_valid(encoded_path, checksum):
            report.reused.append(case)
        else:
            if case not in archive.case_ids:
                raise IndexDirError(
                    f"{index_dir}: case {case} is planned from {plan['sources'][case]} but is not "
                    f"in {archive_root}. Run the build again with the archive that holds it."
                )
            try:
                volume = archive.load(case, config.image_size)
            except ArchiveError as exc:
                if not skip_bad:
                    raise
                log.warning("skipping bad case %s: %s", case, exc)
                skipped[case] = {"case": case, "fault": str(exc)}
                plan["skipped"] = list(skipped.values())
                atomic_write_json(index_dir / PLAN, plan)
                continue
            normal, abnormal = encode_images(
                model, volume.image, batch_size=batch_size, device=device
            )
            _write_encoded(encoded_path, volume, normal, abnormal, checksum, plan["sources"][case])
            report.encoded_now.append(case)
        if on_case is not None:
            on_case(case)

    report.skipped = list(skipped.values())
    cases = [c for c in plan["cases"] if c not in skipped]
    if not cases:
        raise ArchiveError(f"{archive_root}: no valid case to index (all were skipped as bad).")
    hash_report, n_slices = _assemble(
        index_dir, cases, model, config, checksum, bit_budget=bit_budget, ivf_nlist=ivf_nlist
    )
    _copy_model(model_dir, index_dir / MODEL_DIR)
    manifest = Manifest(
        model_checksum=checksum,
        preset=plan["preset"],
        input_size=int(config.image_size),
        grid=tuple(plan["grid"]),
        n_slices=n_slices,
        n_cases=len(cases),
        status=STATUS_COMPLETE,
        skipped_cases=sorted(skipped),
        archive_roots=_archive_roots(index_dir, archive_root),
        hashindex={"bit_budget": bit_budget, "ivf_nlist": ivf_nlist},
        fdn_index_version=__version__,
    )
    write_manifest(index_dir, manifest)
    report.n_cases, report.n_slices, report.hashindex = len(cases), n_slices, hash_report
    return report


def _make_plan(
    index_dir: Path, archive: Archive, checksum: str, config, model_dir: Path, *, add: bool
) -> dict:
    """The cases of the index in row order, checked against what `index_dir` already holds."""
    # Absolute paths: montages load the hit slices from any working directory later.
    archive_cases = {
        case: str(archive.case_files(case)["t1"].parent.resolve()) for case in archive.case_ids
    }
    old_plan = None
    if (index_dir / PLAN).is_file():
        try:
            old_plan = json.loads((index_dir / PLAN).read_text())
        except ValueError as exc:
            raise IndexDirError(
                f"{index_dir / PLAN}: corrupt ({exc}). Delete {index_dir} and build again."
            ) from exc
    elif index_dir.exists() and any(index_dir.iterdir()):
        raise IndexDirError(
            f"{index_dir}: exists and is not an fdn-index directory. Choose an empty or new --index."
        )
    if (index_dir / MANIFEST).is_file():
        read_manifest(index_dir, require_complete=False)  # refuses another format version
    if old_plan is not None and old_plan.get("model_checksum") != checksum:
        raise IndexDirError(
            f"{index_dir}: built with another model (checksum {old_plan.get('model_checksum', '?')[:12]}…, "
            f"this model is {checksum[:12]}…). An index never mixes models: use a new --index "
            f"directory, or delete this one to rebuild it with this model."
        )
    grid = _grid_of(config)
    plan = {
        "model_checksum": checksum,
        "model_dir": str(model_dir),
        "preset": _preset_of(model_dir),
        "input_size": int(config.image_size),
        "grid": list(grid),
        "cases": sorted(archive_cases),
        "sources": archive_cases,
        "skipped": [],
    }
    if old_plan is None:
        if add:
            raise IndexDirError(f"{index_dir}: no index to add to. Build it first, without --add.")
        return plan
    if add:
        new = [c for c in sorted(archive_cases) if c not in old_plan["sources"]]
        plan["cases"] = old_plan["cases"] + new
        plan["sources"] = {**old_plan["sources"], **{c: archive_cases[c] for c in new}}
        plan["skipped"] = old_plan.get("skipped", [])
        return plan
    if old_plan["cases"] != plan["cases"]:
        raise IndexDirError(
            f"{index_dir}: holds an index of other cases ({len(old_plan['cases'])} cases, this "
            f"archive has {len(plan['cases'])}). Use --add to append new cases, or a new --index."
        )
    plan["skipped"] = old_plan.get("skipped", [])
    return plan


def _archive_roots(index_dir: Path, archive_root: Path) -> list[str]:
    """The archive folders of the index: those of the previous manifest (for --add) and this one."""
    roots = {str(archive_root.resolve())}
    if (index_dir / MANIFEST).is_file():
        roots.update(read_manifest(index_dir, require_complete=False).archive_roots)
    return sorted(roots)


def _preset_of(model_dir: Path) -> str:
    """The preset name recorded in the model's config.json ("" for a custom config)."""
    try:
        return json.loads((model_dir / CONFIG_FILE).read_text()).get("preset") or ""
    except (OSError, ValueError):
        return ""


def _grid_of(config) -> tuple[int, int]:
    side = int(config.latent_size)
    return side, side


def _mark_building(index_dir: Path) -> None:
    """Before any final file changes, make the directory unloadable until the manifest is rewritten."""
    path = index_dir / MANIFEST
    if path.is_file():
        manifest = read_manifest(index_dir, require_complete=False)
        manifest.status = STATUS_BUILDING
        write_manifest(index_dir, manifest)


def _encoded_is_valid(path: Path, checksum: str) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["model_checksum"]) == checksum and data["normal"].shape[0] > 0
    except (OSError, ValueError, KeyError) as exc:
        log.warning("re-encoding %s: unreadable journal entry (%s)", path.name, exc)
        return False


def _write_encoded(
    path: Path, volume, normal: np.ndarray, abnormal: np.ndarray, checksum: str, source: str
) -> None:
    """One case of the build journal: its code grids and per-slice metadata, written atomically."""
    n = normal.shape[0]
    if volume.seg is not None:
        lesion_area = (volume.seg > 0).reshape(n, -1).sum(axis=1).astype(np.int64)
    else:
        lesion_area = np.full(n, -1, dtype=np.int64)
    # DICOM provenance of an imported case (CASE_dicom.json), "" for a NIfTI-only case.
    study_uid, series_uids = read_provenance(source, volume.case)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        normal=normal.astype(np.uint16),
        abnormal=abnormal.astype(np.uint16),
        lesion_area=lesion_area,
        model_checksum=np.array(checksum),
        source=np.array(source),
        study_uid=np.array(study_uid or ""),
        series_uids=np.array(series_uids or ""),
    )
    atomic_write_bytes(path, buffer.getvalue())


def _assemble(
    index_dir: Path, cases: list[str], model, config, checksum: str, *, bit_budget, ivf_nlist
):
    """Write codes.zarr, slices.parquet and the hash indexes from the encoded cases."""
    normals, abnormals, volume_ids, columns = (
        [],
        [],
        [],
        {
            "row": [],
            "case": [],
            "slice": [],
            "volume": [],
            "source": [],
            "lesion_area": [],
            "model_checksum": [],
            "study_uid": [],
            "series_uids": [],
        },
    )
    for volume_id, case in enumerate(cases):
        with np.load(index_dir / ENCODED_DIR / f"{case}.npz", allow_pickle=False) as data:
            normal, abnormal = data["normal"], data["abnormal"]
            lesion_area, source = data["lesion_area"], str(data["source"])
            study_uid = str(data["study_uid"]) if "study_uid" in data.files else ""
            series_uids = str(data["series_uids"]) if "series_uids" in data.files else ""
        n = normal.shape[0]
        start = len(columns["row"])
        normals.append(normal)
        abnormals.append(abnormal)
        volume_ids.append(np.full(n, volume_id, dtype=np.int64))
        columns["row"].extend(range(start, start + n))
        columns["case"].extend([case] * n)
        columns["slice"].extend(range(n))
        columns["volume"].extend([volume_id] * n)
        columns["source"].extend([source] * n)
        columns["lesion_area"].extend(int(a) if a >= 0 else None for a in lesion_area)
        columns["model_checksum"].extend([checksum] * n)
        columns["study_uid"].extend([study_uid or None] * n)
        columns["series_uids"].extend([series_uids or None] * n)
    normal = np.concatenate(normals)
    abnormal = np.concatenate(abnormals)
    volume_ids = np.concatenate(volume_ids)

    tmp_codes = Path(tempfile.mkdtemp(dir=index_dir, prefix=".codes."))
    try:
        group = zarr.open_group(tmp_codes / CODES, mode="w")
        for name, array in (("normal", normal), ("abnormal", abnormal)):
            stored = group.create_array(
                name, shape=array.shape, chunks=(CHUNK_ROWS, *array.shape[1:]), dtype="uint16"
            )
            stored[:] = array
        group.attrs["model_checksum"] = checksum
        replace_directory(tmp_codes / CODES, index_dir / CODES)
    finally:
        shutil.rmtree(tmp_codes, ignore_errors=True)

    table = pa.table(
        {
            "row": pa.array(columns["row"], pa.int64()),
            "case": pa.array(columns["case"], pa.string()),
            "slice": pa.array(columns["slice"], pa.int32()),
            "volume": pa.array(columns["volume"], pa.int64()),
            "source": pa.array(columns["source"], pa.string()),
            "lesion_area": pa.array(columns["lesion_area"], pa.int64()),
            "model_checksum": pa.array(columns["model_checksum"], pa.string()),
            "study_uid": pa.array(columns["study_uid"], pa.string()),
            "series_uids": pa.array(columns["series_uids"], pa.string()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(index_dir / SLICES, sink.getvalue().to_pybytes())

    codebook_normal = model.quantizer_normal.codebook.detach().cpu().numpy().astype(np.float32)
    codebook_abnormal = model.quantizer_abnormal.codebook.detach().cpu().numpy().astype(np.float32)
    hash_index = HashIndex.build(
        codebook_normal, codebook_abnormal, bit_budget=bit_budget, ivf_nlist=ivf_nlist
    )
    hash_index.add(normal, abnormal, volume_ids)
    hash_index.write(index_dir)
    return hash_index.report, int(normal.shape[0])


def _copy_model(model_dir: Path, target: Path) -> None:
    """Copy the model's config and weights (not the optimiser state) into the index, so that
    queries on external images encode with exactly the model that encoded the archive."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".model."))
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(model_dir / name, tmp / name)
    replace_directory(tmp, target)
