"""Sync MR studies from a PACS over DICOMweb (`fdn-index import-dicom --pacs URL ARCHIVE`).

QIDO-RS lists the studies (``GET URL/studies``), WADO-RS fetches each one
(``GET URL/studies/UID``), both through dicomweb-client. A study goes through the same plan,
checks and atomic write as a file import (`fdn.dicom.importer`):

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
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import requests

from fdn.dicom.archive_writer import archive_lock, clean_partial
from fdn.dicom.failures import mark_known
from fdn.dicom.importer import ImportReport, import_studies, no_progress, scan
from fdn.dicom.provenance import imported_studies
from fdn.errors import DicomImportError

log = logging.getLogger(__name__)

ENV_USERNAME, ENV_PASSWORD, ENV_TOKEN = "FDN_PACS_USERNAME", "FDN_PACS_PASSWORD", "FDN_PACS_TOKEN"
STUDY_UID, MODALITIES, PATIENT_ID = "0020000D", "00080061", "00100020"


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


def make_client(
    url: str, auth: requests.auth.AuthBase | None = None, *, timeout: float = 60, attempts: int = 3
):
    """A dicomweb-client for `url` with `auth` on its session.

    A failed request (connection error, HTTP 408/429/503/504) is tried `attempts` times in
    all, with exponential back-off from 1 s.
    """
    from dicomweb_client import DICOMwebClient

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DicomImportError(
            f"--pacs {safe_url(url)} is not an http(s) DICOMweb URL, e.g. "
            "http://pacs.example.org/dicom-web"
        )
    if parts.username or parts.password:
        raise DicomImportError(
            f"--pacs {safe_url(url)}: put credentials in --auth-file or the "
            f"environment ({ENV_USERNAME}/{ENV_PASSWORD}, {ENV_TOKEN}), not "
            "in the URL"
        )
    session = requests.Session()
    session.auth = auth
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    client.set_http_retry_params(
        retry=attempts > 1, max_attempts=max(attempts, 1), wait_exponential_multiplier=500
    )
    return client


def safe_url(url: str) -> str:
    """`url` without any user or password in it."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


def _value(record: dict, tag: str) -> list:
    return list((record.get(tag) or {}).get("Value") or [])


def list_studies(client, url: str) -> list[dict]:
    """QIDO-RS: every study as {"study_uid", "patient_id", "modalities"}."""
    try:
        records = client.search_for_studies(
            fields=["StudyInstanceUID", "PatientID", "ModalitiesInStudy"], get_remaining=True
        )
    except requests.RequestException as error:
        raise DicomImportError(
            f"cannot list the studies of {safe_url(url)} "
            f"({type(error).__name__}: {_no_secrets(error)}); check the "
            "URL (it ends in the DICOMweb root, e.g. /dicom-web) and the "
            "credentials"
        ) from None
    studies = []
    for record in records:
        uid = _value(record, STUDY_UID)
        if uid:
            patient = _value(record, PATIENT_ID)
            studies.append(
                {
                    "study_uid": str(uid[0]),
                    "patient_id": str(patient[0]) if patient else "",
                    "modalities": [str(m) for m in _value(record, MODALITIES)],
                }
            )
    return studies


def _no_secrets(error: Exception) -> str:
    """An HTTP error's text, with the status only (never request headers)."""
    response = getattr(error, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return str(error).split("\n")[0][:200]


def fetch_study(client, study_uid: str) -> list:
    """WADO-RS: every instance of a study, as pydicom Datasets in memory."""
    return list(client.iter_study(study_uid))


def sync_pacs(
    url: str, archive: str | Path, *, mapping=None, auth=None, progress=None, client=None
) -> ImportReport:
    """Import every MR study of the DICOMweb server at `url` not yet in `archive`.

    Returns the report (imported, already there, skipped with reasons). Raises
    DicomImportError when the server cannot be listed.
    """
    archive = Path(archive)
    client = client or make_client(url, auth)
    with archive_lock(archive):
        clean_partial(archive)
        return _sync(url, client, archive, mapping, progress or no_progress)


def _sync(url, client, archive: Path, mapping, progress) -> ImportReport:
    report = ImportReport(archive=str(archive))
    done = imported_studies(archive)
    new = []
    for study in list_studies(client, url):
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
    log.info("%s: %d studies, %d new", safe_url(url), len(report.already) + len(new), len(new))
    for uid in progress(new, desc="sync", unit="study"):
        try:
            instances = fetch_study(client, uid)
        except Exception as error:  # requests' errors, or a part pydicom cannot parse
            report.skipped.append(
                {
                    "study_uid": uid,
                    "series_uid": None,
                    "file": None,
                    "reason": f"WADO-RS retrieve failed "
                    f"({type(error).__name__}: "
                    f"{_no_secrets(error)}); run the sync again",
                    "transient": True,
                }
            )
            continue
        studies, bad = scan(instances)
        report.bad_files.extend(bad)
        log.debug("fetched study %s: %d instances", uid, len(instances))
        import_studies(studies, archive, report, mapping, source=safe_url(url))
        del instances, studies
    mark_known(archive, report)
    return report
