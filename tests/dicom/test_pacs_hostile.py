"""`import-dicom --pacs` against servers that answer wrongly, slowly or with hostile records
(issue 25, findings 5 and 10): a local HTTP server on 127.0.0.1 plays each one, and a real
Orthanc plays the PACS whose DICOMweb root was left out of the URL."""

import json
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from benchmarks.orthanc import free_port
from fdn.dicom.archive_writer import archive_lock
from fdn.dicom.dicomweb import DicomWebServer
from fdn.errors import DicomImportError
from fdn_index_cli.main import main
from tests.dicom.conftest import case_dirs

DRIP_S = 0.2  # one byte every DRIP_S: no socket read ever waits long enough to time out
TIMEOUT_S = 1.5
# the timer fires at TIMEOUT_S and unblocks the read at once; allow scheduling and teardown
CUT_OFF_S = TIMEOUT_S + 1.0


def record(uid, modalities=("MR",), patient="P1"):
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": [patient]},
        "00080061": {"vr": "CS", "Value": list(modalities)},
    }


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up (the deadline at work) is no news; keep stderr clean


class LocalServer:
    """An HTTP server on 127.0.0.1 whose every GET is answered by `answer(handler)`; it
    records the raw request paths."""

    def __init__(self, answer, tls=None):
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.paths.append(self.path)
                try:
                    answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on us: what the deadline is for

            def log_message(self, *_):
                pass

        self.httpd = QuietServer(("127.0.0.1", free_port()), Handler)
        scheme = "http"
        if tls is not None:  # (certificate, key) files
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def studies_requests(self) -> list[str]:
        return [p for p in self.paths if p.split("?")[0].endswith("/studies")]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def send_json(handler, data, status=200, content_type="application/dicom+json"):
    body = json.dumps(data).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def serve():
    servers = []

    def start(answer, tls=None):
        servers.append(LocalServer(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def sync(url, archive, *options):
    return CliRunner().invoke(main, ["import-dicom", "--pacs", url, str(archive), *options])


def assert_lock_free_and_nothing_written(archive):
    assert case_dirs(archive) == []
    with archive_lock(archive):  # a second run can start: the failed one let go of the lock
        pass


# ----------------------------------------------------------------- 5: paging that ends


def test_the_orthanc_rest_root_instead_of_dicomweb_fails_at_once(orthanc, one_study, tmp_path):
    """`--pacs http://HOST:PORT/`: Orthanc's REST API answers GET /studies with a list of its
    own ids whatever the offset; it used to be paged through for ever."""
    orthanc.upload(one_study.folder)
    archive = tmp_path / "archive"
    started = time.monotonic()
    result = sync(orthanc.url + "/", archive)
    assert time.monotonic() - started < 20
    assert result.exit_code != 0
    assert f"{orthanc.url}/studies" in result.output
    assert "did not answer with DICOM JSON" in result.output
    assert "list of str" in result.output and "/dicom-web" in result.output
    assert_lock_free_and_nothing_written(archive)


def test_a_page_of_strings_is_refused_after_one_request(serve, tmp_path):
    server = serve(lambda h: send_json(h, ["0a1b2c", "3d4e5f"], content_type="application/json"))
    with pytest.raises(DicomImportError, match="did not answer with DICOM JSON"):
        DicomWebServer(server.dicomweb).list_studies()
    assert len(server.studies_requests()) == 1


def test_a_server_that_ignores_the_offset_is_listed_once(serve, tmp_path):
    """Every page the same two (CT) studies: the second page repeats the first, which ends
    the listing; nothing is fetched."""
    server = serve(lambda h: send_json(h, [record("1.2.3", ["CT"]), record("1.2.4", ["CT"])]))
    result = sync(server.dicomweb, tmp_path / "archive", "--json")
    report = json.loads(result.output.split("\nError:")[0])
    assert sorted(s["study_uid"] for s in report["skipped"]) == ["1.2.3", "1.2.4"]
    assert len(server.studies_requests()) == 2
    assert "offset=0" in server.studies_requests()[0]
    assert "offset=2" in server.studies_requests()[1]
    assert server.paths == server.studies_requests()  # no study was fetched


def test_paging_goes_on_until_an_empty_page(serve):
    pages = {0: [record("1.2.1"), record("1.2.2")], 2: [record("1.2.3")]}

    def answer(handler):
        offset = int(handler.path.split("offset=")[1].split("&")[0])
        send_json(handler, pages.get(offset, []))

    server = serve(answer)
    records = DicomWebServer(server.dicomweb).list_studies()
    assert [r["0020000D"]["Value"][0] for r in records] == ["1.2.1", "1.2.2", "1.2.3"]
    assert len(server.studies_requests()) == 3


def endless(handler):
    """A server that lists 100 new studies on every page, for ever."""
    offset = int(handler.path.split("offset=")[1].split("&")[0])
    send_json(handler, [record(f"1.2.{offset + n}") for n in range(100)])


def test_a_listing_that_never_ends_is_cut_off_at_the_timeout(serve, tmp_path):
    server = serve(endless)
    archive = tmp_path / "archive"
    started = time.monotonic()
    result = sync(server.dicomweb, archive, "--timeout", str(TIMEOUT_S))
    assert time.monotonic() - started < CUT_OFF_S
    assert result.exit_code != 0
    assert f"within the timeout of {TIMEOUT_S:g} s" in result.output
    assert_lock_free_and_nothing_written(archive)


def test_a_listing_larger_than_any_pacs_is_refused(serve, monkeypatch):
    from fdn.dicom import dicomweb

    monkeypatch.setattr(dicomweb, "MAX_LISTING_BYTES", 100_000)  # 256 MB takes too long here
    server = serve(endless)
    with pytest.raises(DicomImportError, match="over 100,000 bytes of study records"):
        DicomWebServer(server.dicomweb).list_studies()
    total, expected_pages = 0, 0  # the pages read until their bytes first pass the cap
    while total <= 100_000:
        page = [record(f"1.2.{expected_pages * 100 + n}") for n in range(100)]
        total, expected_pages = total + len(json.dumps(page)), expected_pages + 1
    assert len(server.studies_requests()) == expected_pages


@pytest.mark.parametrize(
    "body,content_type,found",
    [
        (b"<html><body>Orthanc Explorer</body></html>", "text/html", "not JSON"),
        (b'{"Name": "not a study", "Version": 1}', "application/json", None),
        (b"42", "application/json", "JSON int"),
    ],
    ids=["html", "object-without-uid", "number"],
)
def test_an_answer_that_is_not_a_study_list_is_named(serve, body, content_type, found):
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server = serve(answer)
    if found is None:  # a lone object is taken as a one-record page; its record is checked
        assert len(DicomWebServer(server.dicomweb).list_studies()) == 1
        return
    with pytest.raises(DicomImportError, match=found) as caught:
        DicomWebServer(server.dicomweb).list_studies()
    assert f"{server.dicomweb}/studies" in str(caught.value)


# ---------------------------------------------------------------- 5: deadlines that hold


def drip_headers(handler):
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for byte in b"X-Slow: " + b"x" * 1000:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(DRIP_S)


def drip_body(handler, content_type="application/dicom+json"):
    body = json.dumps([record("1.2.3")] * 50).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    for byte in body:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(DRIP_S)


@pytest.mark.parametrize("drip", [drip_headers, drip_body], ids=["headers", "body"])
def test_a_slow_drip_listing_is_cut_off_at_the_timeout(serve, tmp_path, drip):
    server = serve(drip)
    archive = tmp_path / "archive"
    started = time.monotonic()
    result = sync(server.dicomweb, archive, "--timeout", str(TIMEOUT_S))
    elapsed = time.monotonic() - started
    assert elapsed < CUT_OFF_S, f"the listing ran {elapsed:.1f} s under --timeout {TIMEOUT_S}"
    assert result.exit_code != 0
    assert f"cannot list the studies of {server.dicomweb}" in result.output
    assert f"within the timeout of {TIMEOUT_S:g} s" in result.output
    assert_lock_free_and_nothing_written(archive)


def test_a_slow_drip_over_tls_is_cut_off_at_the_timeout(serve, tmp_path, monkeypatch):
    """The deadline shuts the connection down under TLS too (the TLS socket wraps a copy)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # requests trusts it, as a hospital CA
    server = serve(drip_body, tls=(cert, key))
    assert server.dicomweb.startswith("https://")
    started = time.monotonic()
    with pytest.raises(DicomImportError, match=f"within the timeout of {TIMEOUT_S:g} s"):
        DicomWebServer(server.dicomweb, timeout=TIMEOUT_S).list_studies()
    assert time.monotonic() - started < CUT_OFF_S
    assert len(server.studies_requests()) == 1  # the handshake and request went through


def test_a_slow_drip_study_is_skipped_at_the_timeout(serve, tmp_path):
    def answer(handler):
        if handler.path.split("?")[0].endswith("/studies"):
            offset = int(handler.path.split("offset=")[1].split("&")[0])
            send_json(handler, [record("1.2.3")] if offset == 0 else [])
        else:  # a WADO-RS answer that never ends
            drip_body(handler, 'multipart/related; type="application/dicom"; boundary=b')

    server = serve(answer)
    archive = tmp_path / "archive"
    started = time.monotonic()
    result = sync(server.dicomweb, archive, "--timeout", str(TIMEOUT_S), "--json")
    elapsed = time.monotonic() - started
    assert elapsed < CUT_OFF_S + 0.5, f"the sync ran {elapsed:.1f} s under --timeout {TIMEOUT_S}"
    assert result.exit_code != 0
    (skipped,) = json.loads(result.output.split("\nError:")[0])["skipped"]
    assert skipped["study_uid"] == "1.2.3" and skipped["transient"] is True
    assert "did not finish within the timeout of 1.5 s" in skipped["reason"]
    assert "raise --timeout" in skipped["reason"]
    assert_lock_free_and_nothing_written(archive)


def test_timeout_must_be_positive(tmp_path):
    result = sync("http://127.0.0.1:9/dicom-web", tmp_path / "archive", "--timeout", "0")
    assert result.exit_code == 2 and "--timeout" in result.output
    files = CliRunner().invoke(
        main, ["import-dicom", str(tmp_path), str(tmp_path / "archive"), "--timeout", "5"]
    )
    assert files.exit_code == 2 and "--timeout is for --pacs" in files.output


# ------------------------------------------------------------------- 10: hostile records

HOSTILE = [
    ("a string", "is not a JSON object but str 'a string'"),
    (["1.2.3"], "is not a JSON object but list"),
    ({"00100020": {"vr": "LO", "Value": ["P1"]}}, "has no StudyInstanceUID"),
    (record("../../../instances?x="), "has StudyInstanceUID '../../../instances?x=', not a"),
    (record("1." + "2" * 63), "not a DICOM UID (digits and dots, at most 64 characters)"),
    ({"0020000D": {"vr": "UI", "Value": [123]}}, "has StudyInstanceUID 123, not a DICOM UID"),
    ({"0020000D": "1.2.3"}, "has no StudyInstanceUID"),
]


def test_bad_records_are_skipped_with_reasons_and_never_fetched(serve, tmp_path):
    def answer(handler):
        offset = int(handler.path.split("offset=")[1].split("&")[0])
        records = [r for r, _ in HOSTILE] + [record("1.2.840.1", ["CT"])]
        send_json(handler, records if offset == 0 else [])

    server = serve(answer)
    archive = tmp_path / "archive"
    result = sync(server.dicomweb, archive, "--json")
    assert result.exit_code != 0  # only failures, and new ones
    assert "Traceback" not in result.output
    report = json.loads(result.output.split("\nError:")[0])
    reasons = [s["reason"] for s in report["skipped"]]
    assert len(reasons) == len(HOSTILE) + 1
    for (_, expected), reason in zip(HOSTILE, reasons, strict=False):
        assert reason.startswith("QIDO-RS record "), reason
        assert expected in reason, reason
    assert "modality CT, not MR" in reasons[-1]
    assert server.paths == server.studies_requests()  # nothing was fetched
    assert_lock_free_and_nothing_written(archive)
    text = sync(server.dicomweb, tmp_path / "archive-text")
    assert "skipped a listed study: QIDO-RS record is not a JSON object but str" in text.output
    assert "Traceback" not in text.output
    # a nightly re-run that meets the same records pages nobody
    again = sync(server.dicomweb, archive, "--json")
    assert again.exit_code == 0, again.output
    known = [s["known"] for s in json.loads(again.output)["skipped"]]
    assert known == [True] * (len(HOSTILE) + 1)


def test_the_study_uid_is_quoted_in_the_fetch_url(serve):
    def answer(handler):
        send_json(handler, {"error": "no such study"}, status=404)

    server = serve(answer)
    with pytest.raises(Exception, match="404"):
        DicomWebServer(server.dicomweb, attempts=1).fetch_study("1.2/../../instances?x=")
    assert server.paths == ["/dicom-web/studies/1.2%2F..%2F..%2Finstances%3Fx%3D"]


def test_a_failed_retrieve_is_listed_and_retried_next_time(serve, tmp_path):
    def answer(handler):
        if handler.path.split("?")[0].endswith("/studies"):
            offset = int(handler.path.split("offset=")[1].split("&")[0])
            send_json(handler, [record("1.2.3")] if offset == 0 else [])
        else:
            send_json(handler, {"error": "storage offline"}, status=500)

    server = serve(answer)
    archive = tmp_path / "archive"
    for _run in range(2):  # a transient failure is never "known": it fails every run
        result = sync(server.dicomweb, archive, "--json")
        assert result.exit_code != 0
        (skipped,) = json.loads(result.output.split("\nError:")[0])["skipped"]
        assert "WADO-RS retrieve failed (HTTPError: HTTP 500" in skipped["reason"]
        assert skipped["known"] is False
    assert len([p for p in server.paths if "/studies/1.2.3" in p]) == 2
    assert_lock_free_and_nothing_written(archive)
