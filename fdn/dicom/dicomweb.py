"""HTTP to a DICOMweb server under deadlines that hold: the QIDO-RS listing of every study, page
by page, and the WADO-RS retrieval of one study (`fdn.dicom.pacs` decides what to fetch).

requests' timeout bounds each socket read, not a request: a server that sends one byte every
20 s never trips a 60 s read timeout and holds the import (and the archive's lock) for ever. So
every operation here (listing the studies; fetching one study) runs under a `Deadline`: a timer
that, when the operation's time is up, shuts down every socket the operation opened, so that a
read blocked on the server returns at once; the operation then fails with `DeadlineExceeded`,
whatever half an answer it had read. Each request of an operation gets what is left of it.

The listing pages with ``offset`` until a page is empty. A server that ignores ``offset`` (the
Orthanc REST API, when the DICOMweb root was left out of the URL) answers every page alike, so
a page with nothing new ends the listing too; an answer that is not DICOM JSON (a list of
objects) is an error naming the URL, never paged through.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from fdn.errors import DicomImportError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0  # a connection attempt is not cut by the timer: bound it on its own
MAX_PAGE_BYTES = 64 << 20  # one QIDO-RS page; thousands of studies take a few MB
MAX_LISTING_BYTES = 256 << 20  # every page: about a million studies of three fields
RETRY_STATUSES = frozenset({408, 429, 503, 504})
STUDY_FIELDS = ("PatientID", "ModalitiesInStudy")  # StudyInstanceUID comes with every study


class DeadlineExceeded(Exception):
    """An operation did not finish within its deadline; its sockets were shut down."""


class _SocketWatch:
    """The sockets of one operation, so that a timer can shut them all down. It keeps a
    duplicate of each (a TLS wrapper detaches the original), closed when the operation ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.aborted = False

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self.aborted:  # opened after the deadline (a retry): cut at once
                _shutdown(duplicate)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            for sock in self._sockets:
                _shutdown(sock)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
    except OSError:
        pass  # already closed by the other side


def _tracking(base: type, watch: _SocketWatch) -> type:
    class Tracking(base):  # type: ignore[valid-type, misc]
        def _new_conn(self):
            sock = super()._new_conn()
            watch.track(sock)
            return sock

    return Tracking


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections report each socket they open to `watch`."""

    def __init__(self, watch: _SocketWatch):
        self._watch = watch  # before super().__init__, which builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type(
                "Pool",
                (HTTPConnectionPool,),
                {"ConnectionCls": _tracking(HTTPConnection, self._watch)},
            ),
            "https": type(
                "TLSPool",
                (HTTPSConnectionPool,),
                {"ConnectionCls": _tracking(HTTPSConnection, self._watch)},
            ),
        }


class Deadline:
    """One operation's time limit and its HTTP session::

    with Deadline(60, auth) as deadline:
        deadline.session.get(url, timeout=deadline.request_timeout())
    # DeadlineExceeded when 60 s passed, even if the server kept sending a byte now and then
    """

    def __init__(self, seconds: float, auth: requests.auth.AuthBase | None, what: str):
        self.seconds, self.what = seconds, what
        self._watch = _SocketWatch()
        self.session = requests.Session()
        self.session.auth = auth
        adapter = _DeadlineAdapter(self._watch)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._timer = threading.Timer(seconds, self._watch.abort)
        self._timer.daemon = True
        self._end = 0.0

    def __enter__(self) -> Deadline:
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._timer.cancel()
        self.session.close()
        self._watch.close()
        if self.expired and (kind is None or issubclass(kind, Exception)):
            raise DeadlineExceeded(
                f"{self.what} did not finish within the timeout of {self.seconds:g} s"
            ) from None

    def remaining(self) -> float:
        return self._end - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._watch.aborted or self.remaining() <= 0

    def request_timeout(self) -> tuple[float, float]:
        """requests' (connect, read) timeouts: what is left of the operation."""
        left = max(self.remaining(), 0.001)
        return min(CONNECT_TIMEOUT_S, left), left


def check_url(url: str) -> str:
    """`url` without a trailing slash; DicomImportError unless it is http(s) without credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DicomImportError(
            f"--pacs {safe_url(url)} is not an http(s) DICOMweb URL, e.g. "
            "http://pacs.example.org/dicom-web"
        )
    if parts.username or parts.password:
        raise DicomImportError(
            f"--pacs {safe_url(url)}: put credentials in --auth-file or the environment "
            "(FDN_PACS_USERNAME/FDN_PACS_PASSWORD, FDN_PACS_TOKEN), not in the URL"
        )
    return url.rstrip("/")


def safe_url(url: str) -> str:
    """`url` without any user or password in it."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


def no_secrets(error: Exception) -> str:
    """An HTTP error's text, with the status only (never request headers)."""
    response = getattr(error, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return str(error).split("\n")[0][:200]


class DicomWebServer:
    """A DICOMweb server at `url` (its root, e.g. http://pacs:8042/dicom-web).

    timeout: seconds for each operation (listing every study; fetching one study), from the
    first byte sent to the last received. attempts: tries of a request that failed to connect
    or got HTTP 408/429/503/504, within the operation's time.
    """

    def __init__(
        self,
        url: str,
        auth: requests.auth.AuthBase | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        attempts: int = 3,
    ):
        if not timeout > 0:
            raise DicomImportError(f"--timeout must be a positive number of seconds, not {timeout}")
        self.url, self.auth = check_url(url), auth
        self.timeout, self.attempts = float(timeout), max(int(attempts), 1)

    def list_studies(self) -> list:
        """QIDO-RS ``GET URL/studies``: every record the server lists, page after page (the
        records are not checked here). DicomImportError when the server cannot be listed, its
        answer is not DICOM JSON, or the listing outlasts the timeout."""
        studies_url = f"{self.url}/studies"
        records: list = []
        seen: set[str] = set()
        pages = total_bytes = 0
        try:
            with Deadline(self.timeout, self.auth, f"listing the studies of {self}") as deadline:
                offset = 0
                while True:
                    params = {"includefield": list(STUDY_FIELDS), "offset": offset}
                    page, nbytes = self._get_page(deadline, studies_url, params)
                    pages, offset, total_bytes = pages + 1, offset + len(page), total_bytes + nbytes
                    if total_bytes > MAX_LISTING_BYTES:
                        raise DicomImportError(
                            f"cannot list the studies of {self}: over {MAX_LISTING_BYTES:,} bytes "
                            f"of study records in {pages} pages, more than any PACS lists; is "
                            "it a DICOMweb QIDO-RS endpoint?"
                        )
                    keys = [json.dumps(r, sort_keys=True) for r in page]
                    fresh = [r for r, k in zip(page, keys, strict=True) if k not in seen]
                    if not fresh:  # empty, or the server ignored the offset
                        if page:
                            log.warning(
                                "%s answers offset=%d with studies already listed; "
                                "taking the listing as complete",
                                self,
                                len(records),
                            )
                        break
                    seen.update(keys)
                    records.extend(fresh)
        except DeadlineExceeded:
            raise DicomImportError(
                f"cannot list the studies of {self}: not finished within the timeout of "
                f"{self.timeout:g} s ({pages} pages, {len(records)} records read); raise "
                "--timeout if the server is only slow"
            ) from None
        except requests.RequestException as error:
            raise DicomImportError(
                f"cannot list the studies of {self} ({type(error).__name__}: "
                f"{no_secrets(error)}); check the URL (it ends in the DICOMweb root, e.g. "
                "/dicom-web) and the credentials"
            ) from None
        log.info("%s: %d study records in %d pages", self, len(records), pages)
        return records

    def _get_page(self, deadline: Deadline, url: str, params: dict) -> tuple[list, int]:
        """One QIDO-RS page: (a JSON list holding at least one object, or empty; its bytes)."""
        response = self._get(deadline, url, params)
        with response:
            body = bytearray()
            for chunk in response.iter_content(1 << 16):
                body += chunk
                if len(body) > MAX_PAGE_BYTES:
                    raise DicomImportError(
                        f"{self}: a page of the study list (offset {params['offset']}) is over "
                        f"{MAX_PAGE_BYTES >> 20} MB; is {safe_url(url)} a DICOMweb QIDO-RS "
                        "endpoint?"
                    )
        if deadline.expired:  # the body may be cut short
            raise DeadlineExceeded
        if response.status_code == 204 or not body.strip():
            return [], len(body)
        try:
            page = json.loads(bytes(body))
        except (ValueError, RecursionError):
            page = None
        if isinstance(page, dict):  # some servers send a lone study as an object
            page = [page]
        if not isinstance(page, list) or (page and not any(isinstance(r, dict) for r in page)):
            found = "not JSON" if page is None else f"JSON {_json_kind(page)}"
            raise DicomImportError(
                f"{safe_url(url)} (offset {params['offset']}) did not answer with DICOM JSON "
                f"(a list of study objects) but with {found} "
                f"({response.headers.get('Content-Type', 'no Content-Type')}); the --pacs URL "
                "must be the DICOMweb root, e.g. http://pacs:8042/dicom-web"
            )
        return page, len(body)

    def _get(self, deadline: Deadline, url: str, params: dict) -> requests.Response:
        """GET with retries inside the deadline; the response is streamed (read it)."""
        attempt = 1
        while True:
            try:
                response = deadline.session.get(
                    url,
                    params=params,
                    headers={"Accept": "application/dicom+json, application/json"},
                    timeout=deadline.request_timeout(),
                    stream=True,
                )
                if response.status_code in RETRY_STATUSES:
                    response.close()
                response.raise_for_status()
                return response
            except requests.RequestException as error:
                retriable = not isinstance(error, requests.HTTPError) or (
                    error.response is not None and error.response.status_code in RETRY_STATUSES
                )
                wait = 2.0 ** (attempt - 1)
                if not retriable or attempt >= self.attempts or deadline.remaining() <= wait:
                    raise
            attempt += 1
            time.sleep(wait)

    def fetch_study(self, study_uid: str) -> list:
        """WADO-RS ``GET URL/studies/UID`` (the UID percent-quoted): every instance of the
        study, as pydicom Datasets in memory. DeadlineExceeded past the timeout."""
        from dicomweb_client import DICOMwebClient

        with Deadline(self.timeout, self.auth, f"fetching study {study_uid}") as deadline:
            client = DICOMwebClient(
                self.url, session=deadline.session, timeout=deadline.request_timeout()
            )
            client.set_http_retry_params(
                retry=self.attempts > 1,
                max_attempts=self.attempts,
                wait_exponential_multiplier=500,
            )
            try:
                return list(client.iter_study(quote(study_uid, safe="")))
            except Exception:
                if deadline.expired:  # a cut socket surfaces as any error; say why
                    raise DeadlineExceeded(
                        f"fetching study {study_uid} did not finish within the timeout of "
                        f"{self.timeout:g} s"
                    ) from None
                raise

    def __str__(self) -> str:
        return safe_url(self.url)


def _json_kind(value) -> str:
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"list of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__
