"""``python -m benchmarks.quality``: see `benchmarks.quality.run`."""

from benchmarks.quality.cli import main

main()
