"""Encode an archive into an index directory: `fdn-index build`.

A build runs in two phases so that it can be killed at any point and run again:

1. Encode. Each case of the plan is encoded with the model and written, atomically, to
   `encoded/<case>.npz` (its code grids, slice metadata, and the size and mtime of each of its
   input files). An entry is reused only when it is whole (every key, shape and dtype checked)
   and its case's files are unchanged; otherwise the case is encoded again. A case skipped as
   bad (--skip-bad) is retried once its files change.
2. Assemble. The code arrays, the slice table, the hash indexes and a copy of the model are
   written afresh from the encoded cases in plan order, into a staging folder. Then, holding the
   swap lock (see `fdn.archive_index.locks`), they are renamed into place and the manifest,
   listing every file with its sha256, is written last.

Because assembly is a pure function of the encoded cases and the plan, a build that was killed
and resumed ends with exactly the files of an uninterrupted one. `add=True` appends new cases
to the plan (existing rows keep their ids) and assembles again; until its swap, readers keep
the previous index. A build holds the directory's build lock throughout: a second build of the
same directory fails at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crashsafe import atomic_write_json, remove_stale_temporaries
from fdn.archive_index.assemble import assemble_index, grid_of
from fdn.archive_index.build_plan import read_plan
from fdn.archive_index.distributed import _MODELS, CaseTask, encode_cases
from fdn.archive_index.encode import encode_arithmetic
from fdn.archive_index.journal import encoded_is_valid
from fdn.archive_index.layout import (
    BUILD_LOCK,
    CODES,
    ENCODED_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_DIR,
    PLAN,
    SWAP_LOCK,
)
from fdn.archive_index.locks import build_lock
from fdn.archive_index.manifest import looks_like_archive
from fdn.archive_index.metadata import case_metadata
from fdn.archive_index.removal import purge_journal
from fdn.archive_index.tombstones import case_digest, drop_removed, read_tombstones
from fdn.data import Archive
from fdn.data.case import CaseError
from fdn.device import resolve_device
from fdn.errors import ArchiveError, IndexDirError
from fdn.model.config import encoding_settings
from fdn.training.checkpoint import CONFIG_FILE, load_model, model_checksum

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    index_dir: str
    n_cases: int
    n_slices: int
    encoded_now: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    hashindex: dict = field(default_factory=dict)
    # seconds per stage summed over the cases encoded now (model, read, preprocess, encode,
    # write; "slices" counts their slices), cases per worker, and the assembly
    stages: dict = field(default_factory=dict)
    workers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOptions:
    """How `build_index` builds; `fdn-index build` fills one from its options.

    add: append the archive's new cases to an existing index. skip_bad: leave out the cases
    that fail validation (listed in the report) instead of stopping. batch_size: slices per
    forward pass. bit_budget: bits kept per grid position for the packed FAISS codes (None:
    Algorithm A.1's length). ivf_nlist: also build a FAISS IndexBinaryIVF with this many lists.
    faiss_indexes: "auto", "always" or "never" write the FAISS files (`layout.FAISS_POLICIES`).
    device: where the encoder runs (None: CUDA when present, else the CPU). precision: the
    encoder's arithmetic, "fp32" (IEEE float32: a GPU gives the CPU's codes; see
    `fdn.archive_index.encode`) or "bf16" (CUDA only, faster, other codes); recorded in the
    build plan and the manifest, and an index never mixes the two.
    """

    add: bool = False
    skip_bad: bool = False
    batch_size: int = 64
    bit_budget: int | None = None
    ivf_nlist: int | None = None
    faiss_indexes: str = "auto"
    device: str | None = None
    precision: str = "fp32"


@dataclass(frozen=True)
class _Encoder:
    """The model a build encodes with, loaded once: its weights' checksum names the index."""

    model: Any
    config: Any
    checksum: str
    model_dir: Path
    device: Any  # the resolved torch.device


def build_index(
    archive_root: Path,
    model_dir: Path,
    index_dir: Path,
    options: BuildOptions | None = None,
    *,
    on_case: Callable[[str], None] | None = None,
    client=None,
) -> BuildReport:
    """Encode every case of `archive_root` with the model in `model_dir` into `index_dir`.

    options: how (`BuildOptions`; None for the defaults). on_case, when given, is called with
    each case id as it is finished (for a progress bar).
    client: a `dask.distributed` client to encode one task per case on its workers, which must
    reach the archive, the model and the index folder by the same paths
    (`fdn.archive_index.distributed`).
    Raises ArchiveError for a bad case (unless skip_bad), IndexDirError when `index_dir`
    belongs to another model or format, ModelError for a bad model directory.
    """
    archive_root, model_dir, index_dir = Path(archive_root), Path(model_dir), Path(index_dir)
    options = options or BuildOptions()
    import torch  # here: a query that imports this package never needs it

    device = resolve_device(options.device)
    encode_arithmetic(torch.device(device), options.precision)  # refuses bf16 off CUDA, early
    model, config = load_model(model_dir, device=device)
    encoder = _Encoder(model, config, model_checksum(model_dir), model_dir, device)
    archive = Archive(archive_root)
    _check_target(index_dir, archive_root)
    index_dir.mkdir(parents=True, exist_ok=True)
    with build_lock(index_dir):
        return _build_locked(archive, encoder, index_dir, options, on_case, client)


def _build_locked(
    archive: Archive,
    encoder: _Encoder,
    index_dir: Path,
    options: BuildOptions,
    on_case: Callable[[str], None] | None,
    client,
) -> BuildReport:
    """`build_index` once the build lock is held."""
    archive_root = archive.root
    model, config, checksum, model_dir, device = (
        encoder.model,
        encoder.config,
        encoder.checksum,
        encoder.model_dir,
        encoder.device,
    )
    _remove_leftovers(index_dir)
    plan = _make_plan(
        index_dir,
        archive,
        checksum,
        config,
        model_dir,
        add=options.add,
        precision=options.precision,
    )
    (index_dir / ENCODED_DIR).mkdir(exist_ok=True)
    atomic_write_json(index_dir / PLAN, plan)

    report = BuildReport(index_dir=str(index_dir), n_cases=0, n_slices=0)
    # A task names its files by absolute path: a worker of a real cluster runs in a folder of
    # its own, where the paths the command line was given (archive/, model/) mean nothing.
    model_path, encoded_dir = model_dir.resolve(), (index_dir / ENCODED_DIR).resolve()
    skipped = {entry["case"]: entry for entry in plan.get("skipped", [])}
    todo = []
    for case in plan["cases"]:
        inputs = _fingerprint(archive, case) if case in archive.case_ids else None
        if case in skipped:
            if inputs is None or skipped[case].get("inputs") == inputs:
                continue
            log.info("retrying %s: its files changed since it was skipped as bad", case)
            del skipped[case]
            plan["skipped"] = list(skipped.values())
            atomic_write_json(index_dir / PLAN, plan)
        encoded_path = index_dir / ENCODED_DIR / f"{case}.npz"
        if encoded_is_valid(encoded_path, checksum, config, inputs):
            report.reused.append(case)
            if on_case is not None:
                on_case(case)
            continue
        if case not in archive.case_ids:
            raise IndexDirError(
                f"{index_dir}: case {case} is planned from {plan['sources'][case]} but is not "
                f"in {archive_root}. Run the build again with the archive that holds it."
            )
        todo.append(
            CaseTask(
                str(archive.root.resolve()),
                case,
                str(model_path),
                checksum,
                str(encoded_dir / encoded_path.name),
                plan["sources"][case],
                inputs,
                options.batch_size,
                device if client is None else None,
                options.precision,
            )
        )
    # Encode here, or one task per case on a Dask cluster (`fdn.archive_index.distributed`); either way each
    # case ends as a journal entry, and assembly below reads only the journal.
    if client is None:
        _MODELS[(str(model_path), checksum, device)] = model  # the model loaded above
    for result in encode_cases(todo, client):
        if result.fault is not None:
            if not options.skip_bad:
                raise CaseError.from_report(result.case, result.fault)
            log.warning("skipping bad case %s: %s", result.case, result.fault)
            inputs = next(t.inputs for t in todo if t.case == result.case)
            skipped[result.case] = {"case": result.case, "fault": result.fault, "inputs": inputs}
            plan["skipped"] = list(skipped.values())
            atomic_write_json(index_dir / PLAN, plan)
            continue
        report.encoded_now.append(result.case)
        for stage, seconds in result.stages.items():
            report.stages[stage] = report.stages.get(stage, 0) + seconds
        report.workers[result.worker] = report.workers.get(result.worker, 0) + 1
        if on_case is not None:
            on_case(result.case)
    report.encoded_now.sort(key=plan["cases"].index)

    report.skipped = [{k: v for k, v in e.items() if k != "inputs"} for e in skipped.values()]
    cases = [c for c in plan["cases"] if c not in skipped]
    if not cases:
        raise ArchiveError(f"{archive_root}: no valid case to index (all were skipped as bad).")
    assemble_started = time.perf_counter()
    hash_report, n_slices = assemble_index(
        index_dir,
        index_dir,
        cases,
        model,
        config,
        checksum,
        model_dir,
        preset=plan["preset"],
        skipped_cases=sorted(skipped),
        archive_roots=plan["archive_roots"],
        bit_budget=options.bit_budget,
        ivf_nlist=options.ivf_nlist,
        faiss_indexes=options.faiss_indexes,
        precision=plan["encoding"]["precision"],
        stages=report.stages,
    )
    report.stages["assemble_s"] = time.perf_counter() - assemble_started
    report.n_cases, report.n_slices, report.hashindex = len(cases), n_slices, hash_report
    # the removed cases were left out of the plan: now their journal entries go too
    purge_journal(index_dir, read_tombstones(index_dir))
    return report


def _check_target(index_dir: Path, archive_root: Path) -> None:
    """Refuse an --index that is not ours (before the lock file is put into it)."""
    if not index_dir.exists() or (index_dir / PLAN).is_file():
        return
    if not index_dir.is_dir():
        raise IndexDirError(f"{index_dir}: exists and is not a folder. Choose a new --index.")
    ours = {BUILD_LOCK, SWAP_LOCK}
    if any(p.name not in ours for p in index_dir.iterdir()):
        if index_dir.resolve() == archive_root.resolve() or looks_like_archive(index_dir):
            raise IndexDirError(
                f"{index_dir}: looks like an image archive, not an index directory. Pass a new "
                f"or empty folder as --index."
            )
        raise IndexDirError(
            f"{index_dir}: exists and is not an fdn-index directory. Choose an empty or new --index."
        )


def _remove_leftovers(index_dir: Path) -> None:
    """Delete the temporaries a killed build left (only while holding the build lock)."""
    folders = [index_dir, index_dir / ENCODED_DIR, index_dir / MODEL_DIR]
    codes = index_dir / CODES
    if codes.is_dir() and not codes.is_symlink():
        folders += [codes] + [p for p in codes.rglob("*") if p.is_dir() and not p.is_symlink()]
    for folder in folders:
        for path in remove_stale_temporaries(folder):
            log.info("removed %s, left by an interrupted build", path)


def _fingerprint(archive: Archive, case: str) -> dict:
    """The input files of a case as {key: [name, size, mtime_ns]}: a change re-encodes it."""
    prints = {}
    for key, path in sorted(archive.case_files(case).items()):
        try:
            st = path.stat()
            prints[key] = [path.name, st.st_size, st.st_mtime_ns]
        except OSError as exc:
            prints[key] = [path.name, -1, str(exc.strerror)]
    # changed metadata (metadata.csv, the DICOM sidecar) make the entry be written again
    metadata = case_metadata(archive.root / case, case)
    if metadata:
        prints["metadata"] = [json.dumps(metadata, sort_keys=True)]
    return prints


def _make_plan(
    index_dir: Path,
    archive: Archive,
    checksum: str,
    config,
    model_dir: Path,
    *,
    add: bool,
    precision: str = "fp32",
) -> dict:
    """The cases of the index in row order, checked against what `index_dir` already holds."""
    # Absolute paths: montages load the hit slices from any working directory later.
    archive_cases = {case: str((archive.root / case).resolve()) for case in archive.case_ids}
    # cases removed by `fdn-index remove` are never indexed again (the build compacts them)
    removed = read_tombstones(index_dir)
    archive_cases = {c: s for c, s in archive_cases.items() if case_digest(c) not in removed}
    old_plan = None
    if (index_dir / PLAN).is_file():
        old_plan = read_plan(index_dir / PLAN)
        drop_removed(old_plan, removed)
    _check_format_version(index_dir / MANIFEST)
    if old_plan is not None and old_plan.get("model_checksum") != checksum:
        raise IndexDirError(
            f"{index_dir}: built with another model (checksum {old_plan.get('model_checksum', '?')[:12]}…, "
            f"this model is {checksum[:12]}…). An index never mixes models: use a new --index "
            f"directory, or delete this one to rebuild it with this model."
        )
    encoding = {**encoding_settings(config), "precision": precision}
    if old_plan is not None:
        # A plan without "encoding" predates gate_to_fixed_point, so it was off; whether that
        # build gated at all was not recorded, and is taken as unchanged. A plan without
        # "precision" predates the choice: builds then ran in fp32 (GPU builds autocast to bf16,
        # but no GPU build is known to have been made).
        old_encoding = {
            "precision": "fp32",
            **old_plan.get("encoding", {**encoding, "gate_to_fixed_point": False}),
        }
        changed = [k for k in encoding if old_encoding.get(k) != encoding[k]]
        if "precision" in changed:
            raise IndexDirError(
                f"{index_dir}: encoded in {old_encoding['precision']}, and this build asks for "
                f"{precision}; the same weights then give other codes, and an index never mixes "
                f"them. Build with --precision {old_encoding['precision']}, or use a new --index "
                "directory."
            )
        if changed:
            was = ", ".join(f"{k}={old_encoding.get(k)}" for k in changed)
            now = ", ".join(f"{k}={encoding[k]}" for k in changed)
            raise IndexDirError(
                f"{index_dir}: encoded with {was}, but {model_dir / CONFIG_FILE} now says {now}; "
                "the same weights then give other codes, and an index never mixes them. Use a "
                "new --index directory, or set the field back in config.json."
            )
    grid = grid_of(config)
    plan: dict[str, Any] = {
        "model_checksum": checksum,
        "encoding": encoding,
        "model_dir": str(model_dir),
        "preset": _preset_of(model_dir),
        "input_size": int(config.image_size),
        "grid": list(grid),
        "cases": sorted(archive_cases),
        "sources": archive_cases,
        "skipped": [],
        "archive_roots": [str(archive.root.resolve())],
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
        plan["archive_roots"] = sorted(set(old_plan["archive_roots"]) | set(plan["archive_roots"]))
        return plan
    if old_plan["cases"] != plan["cases"]:
        raise IndexDirError(
            f"{index_dir}: holds an index of other cases ({len(old_plan['cases'])} cases, this "
            f"archive has {len(plan['cases'])}). Use --add to append new cases, or a new --index."
        )
    plan["skipped"] = old_plan.get("skipped", [])
    plan["archive_roots"] = sorted(set(old_plan["archive_roots"]) | set(plan["archive_roots"]))
    return plan


def _check_format_version(path: Path) -> None:
    """Refuse to build over an index of another format version (a damaged manifest is rewritten)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexDirError(
                f"{path}: index format version {str(version)[:20]}, this fdn-index writes version "
                f"{FORMAT_VERSION}. Rebuild the index with this version of fdn-index in a new "
                f"--index directory (or delete this one first)."
            )


def _preset_of(model_dir: Path) -> str:
    """The preset name recorded in the model's config.json ("" for a custom config)."""
    try:
        return json.loads((model_dir / CONFIG_FILE).read_text()).get("preset") or ""
    except (OSError, ValueError):
        return ""
