"""Channel order and label sets of the archive format (see DESIGN.md, "Archive format")."""

import numpy as np

SEQUENCES = ("t1", "t1ce", "t2", "flair")  # channel order of every image
SEG_LABELS = (0, 1, 2, 4)                  # BraTS: background, NET (necrotic core), ED, ET
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

    seg: (...) integer array. Raises ValueError on any other label.
    """
    seg = np.asarray(seg)
    if seg.size and (not np.issubdtype(seg.dtype, np.integer) or seg.min() < 0 or seg.max() > 4
                     or np.any(seg == 3)):
        found = sorted(set(np.unique(seg).tolist()) - set(SEG_LABELS))
        raise ValueError(f"seg labels must be in {SEG_LABELS}, found {found}")
    return _SEG_TO_CLASS[seg]
