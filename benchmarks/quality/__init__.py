"""Retrieval quality against the brute-force Dice oracle (paper 4.4.6, Table 2).

``python -m benchmarks.quality --model MODEL_DIR`` runs it (``--help`` for options);
``python -m benchmarks.quality.ablation RUN ...`` tabulates several runs. The modules, in the
order one run uses them (each imports only those above it):

- `labels`: names of modes, distances, metrics, oracles and baselines;
- `config`: `QualityConfig`, everything one run depends on;
- `dice`, `baselines`: the Dice of label maps, the oracle's top-Q and the baselines' hits;
- `inputs`: training and test archives, the test index's ground truth, the queries;
- `retrieval`, `scores`: every method's hits, their Dice, the table rows and targets;
- `binarization`, `leakiness`, `models`: codebook figures and timings, the leakiness
  classifier, the per-model figures;
- `figures`, `markdown_cells`, `markdown_retrieval`, `markdown_model`, `markdown`: the PNGs
  and report.md;
- `run`: `run_quality`, the whole benchmark; `cli`: its command line.
"""
