"""Only the C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # 8-bit look-up-table lower bounds (AVX-512 VBMI with a portable fallback chosen at run
        # time), compiled at install so that nothing compiles at query time.
        Extension("hashindex._fastscan", sources=["hashindex/_fastscan.c"],
                  extra_compile_args=["-O3"]),
    ]
)
