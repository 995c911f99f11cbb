"""Sync MR studies from a PACS over DICOMweb (`fdn-index import-dicom --pacs URL ARCHIVE`).

QIDO-RS lists the studies (``GET URL/studies``, page by page), WADO-RS fetches each one
(``GET URL/studies/UID``, through dicomweb-client), both under a deadline (`--timeout`) that a
slow or endless answer cannot outlast (`fdn.dicom.dicomweb`). A study goes through the same
plan, checks and atomic write as a file import (`fdn.dicom.importer`):

* **Records are checked.** A listed record that is not a JSON object with a StudyInstanceUID of
  DICOM UID grammar is skipped with the reason (and the UID is percent-quoted in the fetch URL
  all the same), so no answer of the server can point a request elsewhere on it.

* **Incremental.** Studies whose StudyInstanceUID is already in ARCHIVE (its
  ``CASE_dicom.json``) are not fetched again; studies that QIDO-RS says hold no MR series
  (ModalitiesInStudy) are listed and not fetched at all.
* **Resumable, never half-written.** A fetched study is held in memory (one at a time), and
  its case is written to a temporary folder inside ARCHIVE and renamed into place; an
  interrupted sync leaves whole cases (and at most a temporary folder, which the next run
  deletes) and the next run fetches what is still missing.
* **Credentials** come from ``--auth-file FILE`` (JSON ``{"username": …, "password": …}`` or
  ``{"token": …}``) or from the environment (``FDN_PACS_USERNAME`` and ``FDN_PACS_PASSWORD``,
  or ``FDN_PACS_TOKEN``). They travel only in the Authorization header, which requests adds
  after dicomweb-client has logged the request, and a URL with a user or password in it is
  refused, so they never reach a log or a message.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import requests

from fdn.dicom.archive_writer import archive_lock, clean_partial
from fdn.dicom.dicomweb import DEFAULT_TIMEOUT_S, DeadlineExceeded, DicomWebServer, no_secrets
from fdn.dicom.failures import mark_known
from fdn.dicom.importer import ImportReport, import_studies, no_progress, scan
from fdn.dicom.provenance import imported_studies
from fdn.errors import DicomImportError

log = logging.getLogger(__name__)

ENV_USERNAME, ENV_PASSWORD, ENV_TOKEN = "FDN_PACS_USERNAME", "FDN_PACS_PASSWORD", "FDN_PACS_TOKEN"
STUDY_UID, MODALITIES, PATIENT_ID = "0020000D", "00080061", "00100020"
UID_GRAMMAR = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_CHARS = 64


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer TOKEN``, added when the request is prepared."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(***)"


def load_credentials(
    auth_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> requests.auth.AuthBase | None:
    """HTTP auth from `auth_file`, else the environment, else None (no authentication)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if auth_file is not None:
        path = Path(auth_file)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DicomImportError(
                f"auth file {path} is unreadable ({type(error).__name__}); "
                'it must be JSON: {"username": …, "password": …} or '
                '{"token": …}'
            ) from None
        if isinstance(data, dict) and isinstance(data.get("token"), str):
            return BearerAuth(data["token"])
        if (
            isinstance(data, dict)
            and isinstance(data.get("username"), str)
            and isinstance(data.get("password"), str)
        ):
            return requests.auth.HTTPBasicAuth(data["username"], data["password"])
        raise DicomImportError(
            f'auth file {path} must hold "username" and "password", or "token" (strings)'
        )
    if env.get(ENV_TOKEN):
        return BearerAuth(env[ENV_TOKEN])
    if env.get(ENV_USERNAME):
        if ENV_PASSWORD not in env:
            raise DicomImportError(f"{ENV_USERNAME} is set but {ENV_PASSWORD} is not; set both")
        return requests.auth.HTTPBasicAuth(env[ENV_USERNAME], env[ENV_PASSWORD])
    return None


def study_records(records: list) -> tuple[list[dict], list[dict]]:
    """QIDO-RS records → (studies as {"study_uid", "patient_id", "modalities"}, skipped
    records with reasons). A record must be a JSON object whose StudyInstanceUID is a DICOM UID
    (digits and dots, at most 64 characters): anything else is named and left out, never
    fetched. A study listed twice is kept once. A reason names the record by its content, not
    its place in the list, so that the next run finds it "known" (`fdn.dicom.failures`)."""
    studies: dict[str, dict] = {}
    rejected = []
    for record in records:
        fault = _record_fault(record)
        if fault is not None:
            rejected.append(
                {
                    "study_uid": None,
                    "series_uid": None,
                    "file": None,
                    "reason": f"QIDO-RS record {fault}; not fetched",
                }
            )
            continue
        uid = _value(record, STUDY_UID)[0]
        patient = _value(record, PATIENT_ID)
        studies.setdefault(
            uid,
            {
                "study_uid": uid,
                "patient_id": str(patient[0]) if patient else "",
                "modalities": [str(m) for m in _value(record, MODALITIES)],
            },
        )
    return list(studies.values()), rejected


def _value(record: dict, tag: str) -> list:
    element = record.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    return list(value) if isinstance(value, list) else []


def _record_fault(record) -> str | None:
    """Why a QIDO-RS record cannot be fetched, or None."""
    if not isinstance(record, dict):
        return f"is not a JSON object but {type(record).__name__} {_shown(record)}"
    uids = _value(record, STUDY_UID)
    if not uids:
        return "has no StudyInstanceUID (0020000D)"
    uid = uids[0]
    if not isinstance(uid, str) or not UID_GRAMMAR.fullmatch(uid) or len(uid) > MAX_UID_CHARS:
        return (
            f"has StudyInstanceUID {_shown(uid)}, not a DICOM UID (digits and dots, at most "
            f"{MAX_UID_CHARS} characters)"
        )
    return None


def _shown(value) -> str:
    """A value from the server, printable and short."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def sync_pacs(
    url: str,
    archive: str | Path,
    *,
    mapping=None,
    auth=None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress=None,
    server: DicomWebServer | None = None,
) -> ImportReport:
    """Import every MR study of the DICOMweb server at `url` not yet in `archive`.

    timeout: seconds for the listing, and for each study's fetch (`DicomWebServer`).
    Returns the report (imported, already there, skipped with reasons). Raises
    DicomImportError when the server cannot be listed; nothing is written then.
    """
    archive = Path(archive)
    server = server or DicomWebServer(url, auth, timeout=timeout)
    with archive_lock(archive):
        clean_partial(archive)
        return _sync(server, archive, mapping, progress or no_progress)


def _sync(server: DicomWebServer, archive: Path, mapping, progress) -> ImportReport:
    report = ImportReport(archive=str(archive))
    done = imported_studies(archive)
    listed, report.skipped = study_records(server.list_studies())
    new = []
    for study in listed:
        uid = study["study_uid"]
        if uid in done:
            report.already.append({"study_uid": uid, "case": done[uid]})
        elif study["modalities"] and "MR" not in study["modalities"]:
            report.skipped.append(
                {
                    "study_uid": uid,
                    "series_uid": None,
                    "file": None,
                    "reason": f"modality {', '.join(study['modalities'])}, not MR (not fetched)",
                }
            )
        else:
            new.append(uid)
    log.info("%s: %d studies, %d new", server, len(report.already) + len(new), len(new))
    for uid in progress(new, desc="sync", unit="study"):
        try:
            instances = server.fetch_study(uid)
        except Exception as error:  # the deadline, requests' errors, a part pydicom cannot parse
            report.skipped.append(
                {
                    "study_uid": uid,
                    "series_uid": None,
                    "file": None,
                    "reason": f"WADO-RS retrieve failed "
                    f"({type(error).__name__}: {no_secrets(error)}); run the sync again"
                    + (" or raise --timeout" if isinstance(error, DeadlineExceeded) else ""),
                    "transient": True,
                }
            )
            continue
        studies, bad = scan(instances)
        report.bad_files.extend(bad)
        log.debug("fetched study %s: %d instances", uid, len(instances))
        import_studies(studies, archive, report, mapping, source=str(server))
        del instances, studies
    mark_known(archive, report)
    return report
