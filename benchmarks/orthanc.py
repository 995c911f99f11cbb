"""A real Orthanc PACS on 127.0.0.1 with its own storage folder, for the benchmarks and tests.

Debian's `orthanc` and `orthanc-dicomweb` packages provide it (`make system-deps`). The server
binds 127.0.0.1 on free ports, refuses remote access, and keeps everything in the given folder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
MISSING = (
    "Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc and "
    "orthanc-dicomweb; `make system-deps` installs them) and could not be installed here"
)


def available() -> bool:
    return ORTHANC.exists() and DICOMWEB_PLUGIN.exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancServer:
    """A running Orthanc on 127.0.0.1 with its own storage folder; `url` is its REST root."""

    def __init__(self, folder: Path, users: dict | None = None):
        if not available():
            raise FileNotFoundError(MISSING)
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.auth = None
        config = {
            "Name": "fdn-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "Plugins": [str(ORTHANC_PLUGINS)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if users:
            config["RegisteredUsers"] = users
            self.auth = next(iter(users.items()))
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(folder / "orthanc.json")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.1)

    def upload(self, folder: Path) -> int:
        """POST every file under `folder` to /instances; the number uploaded."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        for path in files:
            response = requests.post(
                f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=30
            )
            response.raise_for_status()
        return len(files)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a second: its storage is a temporary folder anyway."""
        self.process.terminate()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
