"""Channel order and label sets of the archive format (see README.md, "The archive reader")."""

import numpy as np

SEQUENCES = ("t1", "t1ce", "t2", "flair")  # channel order of every image
SEG_LABELS = (0, 1, 2, 4)  # BraTS: background, NET (necrotic core), ED, ET
ANAT_LABELS = {
    1: "left cerebrum",
    2: "right cerebrum",
    3: "left cerebellum",
    4: "right cerebellum",
    5: "left ventricle",
    6: "right ventricle",
}
OPTIONAL_FILES = ("seg", "anat", "pseudohealthy")

_SEG_TO_CLASS = np.zeros(5, dtype=np.int64)
_SEG_TO_CLASS[[0, 1, 2, 4]] = [0, 1, 2, 3]


def seg_to_classes(seg: np.ndarray) -> np.ndarray:
    """BraTS labels {0, 1, 2, 4} -> class indices {0, 1, 2, 3} (int64; class 3 = ET).

    seg: (...) array of labels (integer, or float holding whole numbers).
    Raises ValueError on any other value.
    """
    seg = np.asarray(seg)
    values = np.unique(seg)
    bad = [v for v in values.tolist() if v not in SEG_LABELS]
    if bad:
        raise ValueError(f"seg labels must be in {SEG_LABELS}, found {bad[:8]}")
    return _SEG_TO_CLASS[seg.astype(np.int64)]


def largest_lesion_slice(areas) -> int:
    """Index of the slice with the largest lesion area (the first on ties), else the middle one.

    areas: (Z,) lesion area per slice; None or NaN where the slice has no label.
    """
    area = np.array([0 if a is None or a != a else a for a in areas], dtype=np.float64)
    if area.size and area.max() > 0:
        return int(np.argmax(area))
    return len(area) // 2
