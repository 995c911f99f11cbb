"""Every Python example in README.md runs as written (on the tiny fixtures, laid out as the demo's)."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_library_examples():
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert any("fdn.open_index" in b for b in blocks)
    assert any("HashIndex.build" in b for b in blocks)


def test_readme_examples_run(tmp_path, built_index, tiny_archive, model_dir, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "models").mkdir()
    os.symlink(built_index, tmp_path / "demo" / "index")
    os.symlink(tiny_archive, tmp_path / "demo" / "archive")
    os.symlink(model_dir, tmp_path / "models" / "cpu-64")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in python_blocks():
            exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert printed.count("\n") >= 4  # hits, codes, the hashindex example's volumes and E/E*
