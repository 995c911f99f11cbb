"""The ARM NEON kernels, on any machine: tests/hashindex/native/neon_harness.c (the NEON kernels
against the portable C loops and a plain recount of the limits, on random cases) is
cross-compiled for aarch64 and run under qemu-user, and the whole extension is compiled for
aarch64 (syntax only: no ARM Python here). Skipped, saying so, where the Debian packages
gcc-aarch64-linux-gnu and qemu-user (`make system-deps`) are missing. On an ARM machine the
kernel tests of test_fastscan*.py run the NEON kernel itself (fixture fastscan_kernel)."""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GCC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
MISSING = [tool for tool in (GCC, QEMU) if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not installed: apt-get install gcc-aarch64-linux-gnu "
    "qemu-user (make system-deps)",
)


def test_neon_kernels_equal_the_portable_ones_under_qemu(tmp_path):
    exe = tmp_path / "neon_harness"
    build = subprocess.run(
        [GCC, "-O2", "-static", "-Wall", "-Werror", f"-I{ROOT / 'hashindex'}",
         str(ROOT / "tests/hashindex/native/neon_harness.c"), "-o", str(exe)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    result = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    cases, kept = int(summary.split()[0]), int(summary.split()[2])
    assert summary.endswith(" 0 failures") and cases > 500 and kept > 0, summary


def test_the_extension_compiles_for_aarch64():
    """The binding with the x86 kernels left out and the NEON ones in (this host's Python
    headers stand in for an ARM Python's: the code uses nothing that differs between them)."""
    build = subprocess.run(
        [GCC, "-fsyntax-only", "-O2", "-Wall", "-Werror", f"-I{sysconfig.get_paths()['include']}",
         f"-I{ROOT / 'hashindex'}", str(ROOT / "hashindex/_fastscan.c")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
