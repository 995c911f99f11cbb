"""The C extension and the package list; everything else is in pyproject.toml.

Two packages install under names other than their folders' (no top-level `cli` or `models` in
site-packages): the command line `cli/` as `fdn_index_cli`, and the shipped models `models/` as
`fdn_index_models` (package data, found through importlib.resources). The weights stay in
models/ only; the wheel copies them at build time.
"""

from setuptools import Extension, find_namespace_packages, setup

setup(
    packages=[
        # Namespace packages too: fdn.service.static holds the viewer's page, no __init__.py.
        *find_namespace_packages(
            include=["fdn", "fdn.*", "hashindex", "hashindex.*", "crashsafe", "crashsafe.*"],
            exclude=["*.__pycache__"],
        ),
        "fdn_index_cli",
        "fdn_index_models",
    ],
    package_dir={"fdn_index_cli": "cli", "fdn_index_models": "models"},
    ext_modules=[
        # 8-bit look-up-table lower bounds (AVX-512 VBMI, AVX2 or ARM NEON, with a portable
        # fallback, chosen at run time), compiled at install so that nothing compiles at query
        # time. The headers hold the Python-free core (tests/hashindex/native builds it alone).
        Extension(
            "hashindex._fastscan",
            sources=["hashindex/_fastscan.c"],
            depends=[
                "hashindex/fastscan_scan.h",
                "hashindex/fastscan_x86.h",
                "hashindex/fastscan_neon.h",
            ],
            extra_compile_args=["-O3"],
        ),
    ],
)
