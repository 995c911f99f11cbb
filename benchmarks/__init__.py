"""Benchmarks of fdn-index (not tests): ``python -m benchmarks.speed`` writes
``benchmarks/results/<name>/`` (report.md, results.json, figures); see `benchmarks.report`.

OpenMP wait policy. Numba's kernels run on the system libgomp and faiss on the libgomp its wheel
bundles: two OpenMP runtimes in one process. With the default (active) wait policy the idle
threads of one runtime spin while the other works; on this 2-core machine that made a LUT query
3-4x and a FAISS query 10-25x slower. Passive waiting must be chosen before either runtime
starts, hence here, before anything imports faiss or numba. An explicit setting wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
