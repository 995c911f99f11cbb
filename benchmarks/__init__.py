"""Benchmarks of fdn-index (not tests): ``python -m benchmarks.speed`` and
``python -m benchmarks.quality`` write ``benchmarks/results/<name>/`` (report.md, results.json,
figures); see `benchmarks.report`.

Importing `hashindex` first chooses the passive OpenMP wait policy before faiss or numba load
(see hashindex/__init__.py: two OpenMP runtimes in one process spin against each other).
"""

import hashindex  # noqa: F401
