"""Removing cases from an index (withdrawn consent): `fdn-index remove`.

    remove_cases("index/", ["SYN_003"])                 # hidden from every query at once
    remove_cases("index/", [], compact=True)            # and now deleted from the folder
    remove_cases("shards/", ["SYN_003"])                # in the shard that holds the case

Removal writes a tombstone (`fdn.archive_index.tombstones`): one atomic write under the
directory's build lock, which every query honours from its next search on, through the row mask
of `hashindex` (`allowed_rows`). Compaction deletes the data: it takes the removed cases out of
the build plan (an atomic write), assembles the index again from the build journal without them
(staged, swapped in under the swap lock, manifest last: `fdn.archive_index.assemble`), then
deletes their journal entries (encoded/<case>.npz). Each step can be killed and run again: a
compaction that finds the plan already without the cases still reassembles when the index on
disk holds one of them, and deletes whatever journal entry of a removed case remains.
`fdn-index build` compacts the same way (`fdn.archive_index.build`). The index keeps no file
derived from a case other than these (queries render images from the archive, in memory).

A shard has no journal of its own (it was assembled from its source index's), so removal from
shards writes tombstones only; compact the source index and split it again to delete the data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from crashsafe import atomic_write_json, fsync_directory
from fdn.archive_index.layout import ENCODED_DIR, MODEL_DIR, PLAN
from fdn.archive_index.locks import build_lock
from fdn.archive_index.tombstones import (
    RemovedCases,
    case_digest,
    drop_removed,
    read_tombstones,
    write_tombstones,
)
from fdn.errors import IndexDirError

log = logging.getLogger(__name__)


def remove_cases(folder: str | Path, cases: list[str], *, compact: bool = False) -> dict:
    """Remove `cases` from the index (or shards) in `folder`, and with ``compact`` delete the
    data of every removed case. Every case is checked before anything is written: a case the
    index never held raises IndexDirError naming it. Returns a report: per index folder the
    cases removed now, those removed before, and whether it was compacted."""
    from fdn.archive_index.shards import is_sharded

    folder = Path(folder)
    if not is_sharded(folder):
        return {"index": str(folder), "indexes": [_remove_in_index(folder, cases, compact)]}
    if compact:
        raise IndexDirError(
            f"{folder}: shards have no build journal to compact from. Remove the cases here "
            "(without --compact) to hide them now, then run `fdn-index remove --compact` on the "
            "index the shards were split from and split it again."
        )
    from fdn.archive_index.shard_listing import read_listing

    listing = read_listing(folder)
    owner = {c: s["path"] for s in listing["shards"] for c in s["cases"]}
    unknown = [c for c in cases if c not in owner]
    if unknown:
        raise IndexDirError(
            f"{folder}: no case {unknown[0]!r} in these shards ({len(owner)} cases); nothing "
            "was removed."
        )
    groups: dict[str, list[str]] = {}
    for case in cases:
        groups.setdefault(owner[case], []).append(case)
    return {
        "index": str(folder),
        "indexes": [
            _remove_in_index(folder / path, group, False) for path, group in groups.items()
        ],
    }


def remove_studies_and_cases(
    archive: str | Path, names: list[str], indexes: Sequence[str | Path]
) -> dict:
    """`import-dicom --remove NAME… --index DIR…`: delete the imported studies ``names`` (case
    ids or StudyInstanceUIDs) from ``archive``, after removing their cases from each index
    directory (or folder of shards) in ``indexes``, all under the archive's import lock
    (`fdn.dicom.archive_removal.removing_studies`). Returns its `removal_report`."""
    from fdn.dicom.archive_removal import removal_report, removing_studies

    with removing_studies(archive, names) as cases:
        reports = [remove_cases(index, list(cases)) for index in indexes]
    return removal_report(archive, cases, reports)


def _remove_in_index(index_dir: Path, cases: list[str], compact: bool) -> dict:
    from fdn.archive_index.retrieval import open_index

    with build_lock(index_dir):
        index = open_index(index_dir, verify=False)
        digests = read_tombstones(index_dir)
        known = set(index.cases)
        removed, before = [], []
        for case in dict.fromkeys(cases):
            if case_digest(case) in digests:
                before.append(case)
            elif case in known:
                removed.append(case)
            else:
                raise IndexDirError(
                    f"{index_dir}: no case {case!r} in this index ({len(known)} cases); "
                    "nothing was removed."
                )
        if removed or digests.unkeyed:  # a version-1 file is keyed by any run
            digests = write_tombstones(index_dir, digests, [case_digest(c) for c in removed])
        if removed:
            log.info("%s: removed %s", index_dir, ", ".join(removed))
        deleted = _compact_locked(index_dir, digests) if compact else None
    return {
        "index": str(index_dir),
        "removed": removed,
        "removed_before": before,
        "compacted": compact,
        "journal_entries_deleted": deleted,
    }


def _compact_locked(index_dir: Path, digests: RemovedCases) -> int:
    """Assemble the index again without the removed cases and delete their journal entries
    (the caller holds the build lock). Returns the number of journal entries deleted."""
    from fdn.archive_index.assemble import assemble_index
    from fdn.archive_index.build_plan import read_plan
    from fdn.archive_index.manifest import read_manifest
    from fdn.archive_index.retrieval import open_index
    from fdn.training.checkpoint import load_model, model_checksum

    if not (index_dir / PLAN).is_file() or not (index_dir / ENCODED_DIR).is_dir():
        raise IndexDirError(
            f"{index_dir}: no build plan or journal ({PLAN}, {ENCODED_DIR}/) to compact from; "
            "the removed cases stay hidden. Compact the index this one was made from."
        )
    plan = read_plan(index_dir / PLAN)
    try:  # what the index on disk holds (none: a compaction killed during its swap)
        on_disk = set(open_index(index_dir, verify=False).cases)
        settings = read_manifest(index_dir).hashindex
    except IndexDirError:
        on_disk, settings = None, {}
    # the hash index settings, kept in the plan so that a rerun without a manifest has them
    settings = plan["hashindex"] = settings if on_disk is not None else plan.get("hashindex", {})
    gone = drop_removed(plan, digests)
    skipped = {e["case"] for e in plan.get("skipped", [])}
    cases = [c for c in plan["cases"] if c not in skipped]
    if not cases:
        raise IndexDirError(
            f"{index_dir}: every case is removed, and an index holds at least one. Delete the "
            "folder instead; the removed cases stay hidden until then."
        )
    atomic_write_json(index_dir / PLAN, plan)
    if on_disk is None or any(case_digest(c) in digests for c in on_disk):
        model_dir = index_dir / MODEL_DIR
        model, config = load_model(model_dir)
        assemble_index(
            index_dir,
            index_dir,
            cases,
            model,
            config,
            model_checksum(model_dir),
            model_dir,
            preset=plan["preset"],
            skipped_cases=sorted(skipped),
            archive_roots=plan["archive_roots"],
            bit_budget=settings.get("bit_budget"),
            ivf_nlist=settings.get("ivf_nlist"),
            precision=plan.get("encoding", {}).get("precision", "fp32"),
        )
        log.info("%s: assembled again without %s", index_dir, ", ".join(gone) or "removed cases")
    return purge_journal(index_dir, digests)


def purge_journal(index_dir: Path, digests: RemovedCases) -> int:
    """Delete the build-journal entries (encoded/<case>.npz) of removed cases; their count."""
    journal = Path(index_dir) / ENCODED_DIR
    deleted = 0
    for path in sorted(journal.glob("*.npz")) if journal.is_dir() else []:
        if case_digest(path.name[: -len(".npz")]) in digests:
            path.unlink()
            deleted += 1
    if deleted:
        fsync_directory(journal)
    return deleted
