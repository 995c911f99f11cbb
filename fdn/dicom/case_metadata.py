"""The case metadata of an imported study, from one of its DICOM headers, without direct
identifiers: no name, no ID, no birth date (only the age it gives), no accession number.

    sex               PatientSex (F, M or O)
    age               years at the study: PatientAge (065Y, 018M, 010W, 030D), else computed
                      from PatientBirthDate and StudyDate (completed years)
    study_date        StudyDate as YYYY-MM-DD
    manufacturer, manufacturer_model, field_strength (tesla), institution
                      Manufacturer, ManufacturerModelName, MagneticFieldStrength, InstitutionName

`fdn-index import-dicom` stores them in the case's sidecar (``metadata``), and the build puts
them in the slice table (`fdn.archive_index.metadata`). Reads only the header's values: no
pydicom import here.
"""

from __future__ import annotations

import datetime
import re

_AGE = re.compile(r"(\d{1,3})([DWMY])\Z")
_PER_YEAR = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def _text(header, keyword: str) -> str:
    value = header.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _date(text: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def age_years(header) -> float | None:
    """Age at the study in years (PatientAge, else birth and study dates), or None."""
    match = _AGE.match(_text(header, "PatientAge").upper())
    if match:
        value = int(match.group(1)) / _PER_YEAR[match.group(2)]
        return float(round(value, 2))
    born, seen = _date(_text(header, "PatientBirthDate")), _date(_text(header, "StudyDate"))
    if born is None or seen is None or seen < born:
        return None
    return float(seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day)))


def study_metadata(header) -> dict:
    """{column: value} of one study from a header (a pydicom Dataset or anything with .get);
    columns without a value are left out."""
    meta: dict = {}
    sex = _text(header, "PatientSex").upper()
    if sex in ("F", "M", "O"):
        meta["sex"] = sex
    age = age_years(header)
    if age is not None:
        meta["age"] = age
    study = _date(_text(header, "StudyDate"))
    if study is not None:
        meta["study_date"] = study.isoformat()
    for column, keyword in (
        ("manufacturer", "Manufacturer"),
        ("manufacturer_model", "ManufacturerModelName"),
        ("institution", "InstitutionName"),
    ):
        if _text(header, keyword):
            meta[column] = _text(header, keyword)
    try:
        strength = float(_text(header, "MagneticFieldStrength"))
    except ValueError:
        strength = None
    if strength is not None and strength > 0:
        meta["field_strength"] = strength
    return meta
