"""This checkout's cli/ and models/ under their installed names, fdn_index_cli and
fdn_index_models.

setup.py installs the two folders under those names (a wheel copies them; an editable install
maps the names onto the folders of the checkout it was made from). The tests import them from
*this* checkout whatever is installed, as they do `fdn` and `hashindex` (pytest puts the
repository root first on sys.path): `use_checkout()` runs in tests/conftest.py, and a test's
child process starts with CHILD_PRELUDE.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fdn_index_cli": ROOT / "cli", "fdn_index_models": ROOT / "models"}
# The first line of a `python -c` child that imports fdn_index_cli (run from the repository root).
CHILD_PRELUDE = "import tests.checkout; tests.checkout.use_checkout()\n"


def use_checkout() -> None:
    """Import cli/ and models/ of this checkout as fdn_index_cli and fdn_index_models."""
    for name, folder in PACKAGES.items():
        loaded = sys.modules.get(name)
        if loaded is not None and list(getattr(loaded, "__path__", [])) == [str(folder)]:
            continue
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
