"""The wheel, as a user gets it: `python -m build`, installed into a fresh venv outside the
repository, then synth → build → query → serve from a folder outside the repository, with the
shipped model found inside the installed package.

The venv is fresh (no fdn, fdn_index_cli or fdn_index_models of its own but the wheel's); the
heavy dependencies (torch, faiss, …) are those of the environment running the tests, made
visible through a .pth file, so the test installs the wheel alone (`--no-deps`) and downloads
nothing but the build backend (setuptools, in `python -m build`'s isolated environment). The
test environment's own editable install stays invisible: its finder is installed by a .pth file
of that environment's site-packages, which a path added by a .pth file does not run.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("config.json", "weights.pt", "metrics.jsonl", "TRAIN_COMMAND.txt")


def run(*args, cwd, env, timeout=600) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`python -m build` of this checkout: the sdist, then the wheel built from it."""
    try:
        import build  # noqa: F401  (the dev extra `build`)
    except ImportError:
        pytest.fail("python -m build is not installed: `make install` installs the dev extras")
    dist = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=dist, env=env)
    (found,) = dist.glob("fdn_index-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> tuple[Path, dict]:
    """A fresh venv outside the repository with the wheel installed; (its bin/, environment)."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    assert not root.is_relative_to(ROOT)
    subprocess.run([sys.executable, "-m", "venv", root], check=True)
    python = root / "bin" / "python"
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root, env={}
    ).strip()
    # The test environment's installed dependencies, after the venv's own site-packages.
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (Path(purelib) / "test-dependencies.pth").write_text("\n".join(deps) + "\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--ignore-installed",
        wheel,
        cwd=root,
        env=env,
    )
    return root / "bin", env


def test_the_wheel_holds_the_extension_the_shipped_models_and_no_top_level_cli(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"fdn", "hashindex", "crashsafe", "fdn_index_cli", "fdn_index_models"} <= tops
    assert not tops & {"cli", "models", "tests", "benchmarks"}
    assert any(n.startswith("hashindex/_fastscan.") and n.endswith(".so") for n in names)
    for file in SHIPPED:
        assert f"fdn_index_models/cpu-64-null/{file}" in names
    assert not [n for n in names if "samples/" in n or n.endswith("checkpoint.pt")]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fdn-index = fdn_index_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_venv_imports_the_wheel_not_the_repository(venv, tmp_path):
    bin_dir, env = venv
    code = (
        "import json, fdn, fdn_index_cli, fdn_index_models, hashindex._fastscan as f;"
        "from fdn.shipped_models import shipped_model_path;"
        "print(json.dumps([m.__file__ for m in (fdn, fdn_index_cli, fdn_index_models, f)]"
        " + [str(shipped_model_path('cpu-64-null'))]))"
    )
    paths = json.loads(run(bin_dir / "python", "-c", code, cwd=tmp_path, env=env))
    venv_root = bin_dir.parent.resolve()
    for path in paths:
        assert Path(path).resolve().is_relative_to(venv_root), paths
    done = subprocess.run(
        [bin_dir / "python", "-c", "import cli"], cwd=tmp_path, env=env, capture_output=True
    )
    assert done.returncode != 0  # no top-level `cli` installed


def test_synth_build_query_serve_from_a_folder_outside_the_repository(venv, tmp_path):
    bin_dir, env = venv
    fdn_index = bin_dir / "fdn-index"
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)

    models = json.loads(run(fdn_index, "models", "--json", cwd=work, env=env))
    assert [m["name"] for m in models if m["default"]] == ["cpu-64-null"]
    assert all(Path(m["path"]).resolve().is_relative_to(bin_dir.parent.resolve()) for m in models)

    run(fdn_index, "synth", "archive", "--cases", 3, "--size", 64, "--seed", 7, cwd=work, env=env)
    # The README's two commands, exactly: the shipped model, ./index, the largest-lesion slice.
    built = run(fdn_index, "build", "archive/", cwd=work, env=env)
    assert "Index index: 3 cases" in built
    answer = run(fdn_index, "query", "--mode", "sum", "--topq", 10, cwd=work, env=env)
    assert "mode sum" in answer and "rank" in answer
    port = free_port()
    server = subprocess.Popen(
        [fdn_index, "serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "serve did not answer in 120 s"
                time.sleep(0.5)
        assert info["n_cases"] == 3 and info["preset"] == "cpu-64-null", info
        url = f"http://127.0.0.1:{port}/api/query?case=SYN_000&mode=sum&topq=2"
        with urllib.request.urlopen(url, timeout=60) as r:
            result = json.loads(r.read())
        assert result["results"]["sum"]["hits"], result
    finally:
        server.terminate()
        server.wait(timeout=30)
