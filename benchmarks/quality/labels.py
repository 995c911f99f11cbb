"""Names of the quality benchmark's modes, distances, metrics and oracles, shared by its
measurement, figures and report."""

MODES = ("normal", "abnormal", "sum", "sum-normalized")
DISTANCES = ("euclidean", "angular", "hamming")
DISTANCE_NAMES = {"euclidean": "D_E", "angular": "D_A", "hamming": "D_H"}
MODE_NAMES = {
    "normal": "S_normal",
    "abnormal": "S_abnormal",
    "sum": "S_sum",
    "sum-normalized": "S_sum (normalised)",
}
# the Dice each mode is judged on (4.4.6) and the oracle that maximises it
METRIC_OF_MODE = {"normal": "normal", "abnormal": "lesion", "sum": "sum", "sum-normalized": "sum"}
ORACLE_OF_MODE = {
    "normal": "oracle/normal",
    "abnormal": "oracle/abnormal",
    "sum": "oracle/sum",
    "sum-normalized": "oracle/sum",
}
METRICS = ("normal", "lesion", "sum")
# retrieval baselines scored beside the code distances (`benchmarks.quality.baselines`)
BASELINES = ("raw-pixel", "model-seg", "grid-truth", "random", "same-level")
DRAWN = ("random", "same-level")  # methods scored as the mean over random draws
