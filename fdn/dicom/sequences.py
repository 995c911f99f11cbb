"""Which of the four sequences (t1, t1ce, t2, flair) an MR series is, from its header.

Rules, tried in this order; the first that decides wins:

1. **The user's mapping file** (``--mapping FILE``), a JSON object from a sequence name, or
   ``"ignore"``, to a list of regular expressions::

       {"t1ce": ["AX T1 POST", "^mprage_gd"], "flair": ["DARK FLUID"], "ignore": ["T2 STAR"]}

   Each expression is searched, case-insensitively, in SeriesDescription and in ProtocolName
   (each on its own, so ``^…$`` anchors work), and may also be a SeriesInstanceUID (matched
   exactly). Keys are tried in file order, then the expressions of each key in order.
2. **Not an anatomical series**: ImageType holds LOCALIZER, or the text names a localizer,
   scout, survey, calibration, diffusion (dwi, adc, trace, dti), perfusion or susceptibility
   (T2*, SWI) series → ignored.
3. **The text** (SeriesDescription | ProtocolName, lower case):
   ``flair``, ``dark fluid``, ``tirm`` → flair; a T1 name (``t1``, ``mprage``, ``spgr``,
   ``tfl``, ``bravo``) with a contrast word (``ce``, ``c``, ``gd``, ``gad…``, ``post``,
   ``contrast``, ``+c``) or with ContrastBolusAgent set → t1ce; a T1 name → t1; ``t2`` → t2.
4. **The sequence attributes**, when the text says nothing:
   InversionTime ≥ 1500 ms → flair; EchoTime ≥ 60 ms and RepetitionTime ≥ 2000 ms → t2;
   EchoTime < 30 ms and RepetitionTime < 1200 ms (or an inversion time < 1500 ms with a short
   echo, as in MPRAGE) → t1, or t1ce when ContrastBolusAgent is set.
5. Otherwise the series is unidentified and left out (listed in the report).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

from fdn.data.labels import SEQUENCES
from fdn.errors import DicomImportError

IGNORE = "ignore"

_NOT_ANATOMY = re.compile(
    r"locali[sz]er|scout|survey|calibration|\bdwi\b|\badc\b|\btrace\b|"
    r"\bdti\b|diffusion|perfusion|\bpwi\b|t2\s*\*|t2\s*star|\bswi\b|"
    r"susceptibility"
)
_FLAIR = re.compile(r"flair|dark[\s_-]*fluid|tirm")
_T1 = re.compile(r"t1|mprage|spgr|\btfl|bravo")
_CONTRAST = re.compile(r"t1[\s-]*(ce|c|gd)\b|\bgd\b|gad|\bpost\b|contrast|\+\s*c\b|\+\s*gd")
_T2 = re.compile(r"t2")


class Identified(NamedTuple):
    """A series' sequence (one of SEQUENCES, or None when not one of them) and the reason."""

    sequence: str | None
    reason: str


def load_mapping(path: str | Path) -> list[tuple[str, re.Pattern, str]]:
    """Read a mapping file: [(sequence or "ignore", compiled pattern, pattern text), ...].

    Raises DicomImportError naming the file and the fault.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DicomImportError(
            f"mapping file {path} is unreadable ({error}); it must be a "
            'JSON object such as {"t1ce": ["AX T1 POST"]}'
        ) from None
    if not isinstance(data, dict):
        raise DicomImportError(
            f"mapping file {path} must hold a JSON object from a sequence "
            f"({', '.join(SEQUENCES)} or {IGNORE}) to a list of patterns"
        )
    rules = []
    for key, patterns in data.items():
        if key not in (*SEQUENCES, IGNORE):
            raise DicomImportError(
                f"mapping file {path}: unknown key {key!r}; use one of "
                f"{', '.join(SEQUENCES)}, {IGNORE}"
            )
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise DicomImportError(
                f"mapping file {path}: {key!r} must map to a list of strings (regular expressions)"
            )
        for text in patterns:
            try:
                rules.append((key, re.compile(text, re.IGNORECASE), text))
            except re.error as error:
                raise DicomImportError(
                    f"mapping file {path}: {text!r} is not a regular expression ({error})"
                ) from None
    return rules


def _number(header, name: str) -> float | None:
    value = header.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(header) -> str:
    return f"{header.get('SeriesDescription', '') or ''} | {header.get('ProtocolName', '') or ''}"


def identify(header, mapping: list | None = None) -> Identified:
    """The sequence of one series, from its first instance's header (a pydicom Dataset)."""
    text = _text(header)
    uid = str(header.get("SeriesInstanceUID", ""))
    names = [str(header.get(n, "") or "") for n in ("SeriesDescription", "ProtocolName")]
    for key, pattern, source in mapping or []:
        if source == uid or any(pattern.search(name) for name in names):
            sequence = None if key == IGNORE else key
            return Identified(sequence, f"mapping file: {source!r} → {key}")
    lower = text.lower().replace("_", " ")  # "t1_post" → "t1 post", so \b sees the words
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return Identified(None, "ImageType LOCALIZER")
    if match := _NOT_ANATOMY.search(lower):
        return Identified(None, f"description names a {match.group(0)} series")
    agent = str(header.get("ContrastBolusAgent", "") or "").strip()
    if _FLAIR.search(lower):
        return Identified("flair", f"description {text!r} names FLAIR")
    if _T1.search(lower):
        if _CONTRAST.search(lower):
            return Identified("t1ce", f"description {text!r} names a contrast T1")
        if agent:
            return Identified(
                "t1ce", f"description {text!r} names T1, ContrastBolusAgent {agent!r}"
            )
        return Identified("t1", f"description {text!r} names T1")
    if _T2.search(lower):
        return Identified("t2", f"description {text!r} names T2")
    te, tr, ti = (_number(header, n) for n in ("EchoTime", "RepetitionTime", "InversionTime"))
    if ti is not None and ti >= 1500:
        return Identified("flair", f"InversionTime {ti:g} ms ≥ 1500")
    if te is not None and tr is not None:
        if te >= 60 and tr >= 2000:
            return Identified("t2", f"EchoTime {te:g} ms ≥ 60, RepetitionTime {tr:g} ms ≥ 2000")
        if te < 30 and (tr < 1200 or ti is not None):
            sequence = "t1ce" if agent else "t1"
            return Identified(
                sequence,
                f"EchoTime {te:g} ms < 30, RepetitionTime {tr:g} ms"
                + (f", ContrastBolusAgent {agent!r}" if agent else ""),
            )
    return Identified(
        None,
        f"no rule matches {text!r} (EchoTime {te}, RepetitionTime {tr}, "
        f"InversionTime {ti}); name it in a --mapping file",
    )
