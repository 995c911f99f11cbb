"""Inputs that once led nowhere: an empty mode list read as the default, a negative slice
answered by a bare 404, --port 0 hiding its port, and --skip-bad suggested where no command
takes it."""

import re
import shutil
import urllib.request

from click.testing import CliRunner

from cli.main import main
from tests.service.conftest import ServeProcess


def test_a_mode_list_without_a_mode_is_refused_not_read_as_sum(client, service):
    case = next(iter(service.catalog))
    for mode in (",", "normal,", " "):
        response = client.get("/api/query", params={"case": case, "mode": mode})
        assert response.status_code == 400, (mode, response.text)
        assert "mode must be one of" in response.json()["error"]
    assert list(client.get("/api/query", params={"case": case}).json()["results"]) == ["sum"]


def test_a_slice_that_is_not_a_whole_number_gets_a_message(client, service):
    case = next(iter(service.catalog))
    for text in ("-1", "1.5", "x"):
        response = client.get(f"/api/cases/{case}/slices/{text}.png")
        assert response.status_code == 400, (text, response.text)
        assert response.json()["error"] == f"slice must be a whole number from 0; got {text!r}"
    assert client.get(f"/api/cases/{case}/slices/0.png").status_code == 200


def test_serve_on_port_0_prints_the_port_it_got(built_index):
    with ServeProcess("--index", str(built_index)) as server:  # ServeProcess passes --port 0
        assert "--port" in server.args and server.args[server.args.index("--port") + 1] == "0"
        assert re.search(r"http://127\.0\.0\.1:(\d+)/ ", server.banner), server.banner
        assert server.port != 0, server.banner
        with urllib.request.urlopen(f"{server.url}/api/health", timeout=30) as r:
            assert r.status == 200


def test_skip_bad_is_suggested_only_by_commands_that_take_it(tmp_path, tiny_archive, model_dir):
    archive = tmp_path / "archive"
    shutil.copytree(tiny_archive, archive)
    case = sorted(p.name for p in archive.iterdir() if p.is_dir())[0]
    (archive / case / f"{case}_flair.nii.gz").unlink()
    runner = CliRunner()
    built = runner.invoke(
        main, ["build", str(archive), "--model", str(model_dir), "--index", str(tmp_path / "i")]
    )
    assert built.exit_code != 0
    assert "missing the flair sequence" in built.output
    assert "--skip-bad" in built.output
    queried = runner.invoke(
        main,
        ["query", "--index", str(tmp_path / "none"), "--input", str(archive / case)],
    )
    assert queried.exit_code != 0
    assert "--skip-bad" not in queried.output
