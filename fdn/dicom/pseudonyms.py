"""Case ids of imported studies that carry no identifier: keyed hashes, the key kept with the archive.

A case id names a folder and files of the archive and becomes the `case` of every slice of the
index, of every hit of the API and of every montage, so it must not hold the PatientID (it did:
``<PatientID>_<sha1(StudyInstanceUID)[:8]>``). Now it is

    P<HMAC-SHA256(key, "patient:" + PatientID)[:10]>_<HMAC-SHA256(key, "study:" + StudyUID)[:8]>

with a random 256-bit key made on the archive's first import and kept in ``ARCHIVE/.pseudonym-key``
(mode 0600; a build reads case folders only, so it never enters an index). Without the key
nobody can test a guessed PatientID against a case id (a plain hash of a short PatientID can be
reversed by trying them all); with it, the studies of one patient share a prefix, and the same
study always gets the same id, so a re-run finds it again. The way back to the PatientID is the
case's own sidecar in the archive (``CASE/CASE_dicom.json``, `fdn.dicom.provenance`), which
nothing copies into an index.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from crashsafe import atomic_write
from fdn.errors import DicomImportError

KEY_FILE = ".pseudonym-key"
KEY_BYTES = 32


def archive_key(archive: Path) -> bytes:
    """The archive's pseudonym key, made (0600) on its first use; call under the import lock."""
    path = archive / KEY_FILE
    if not path.exists():
        atomic_write(path, secrets.token_hex(KEY_BYTES).encode() + b"\n")
        os.chmod(path, 0o600)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise DicomImportError(
            f"{path}: unreadable pseudonym key ({exc}); restore it from a backup (the case ids "
            "of this archive were made with it), or import into a new archive"
        ) from None
    if len(key) != KEY_BYTES:
        raise DicomImportError(
            f"{path}: the pseudonym key must be {KEY_BYTES} bytes as hex, found {len(key)}; "
            "restore it from a backup, or import into a new archive"
        )
    return key


def pseudonymous_case_id(key: bytes, patient_id: str, study_uid: str) -> str:
    """``P<10 hex>_<8 hex>``: the patient's and the study's keyed hashes."""

    def digest(text: str, length: int) -> str:
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:length]

    return f"P{digest('patient:' + patient_id, 10)}_{digest('study:' + study_uid, 8)}"
