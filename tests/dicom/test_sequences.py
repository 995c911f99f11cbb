"""Sequence identification: the documented default rules and the user's mapping file."""

import json

import pytest
from pydicom.dataset import Dataset

from fdn.dicom.sequences import identify, load_mapping
from fdn.errors import DicomImportError


def series(description="", protocol="", uid="1.2.3.99", **attributes):
    ds = Dataset()
    ds.SeriesDescription, ds.ProtocolName = description, protocol
    ds.SeriesInstanceUID = uid
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    "header, expected",
    [
        # by name (real-world descriptions of Siemens, GE and Philips protocols)
        (series("AX FLAIR"), "flair"),
        (series("t2_tirm_tra_dark-fluid"), "flair"),
        (series("", "T2W_FLAIR_SENSE"), "flair"),
        (series("T1 AX POST GD"), "t1ce"),
        (series("t1_mprage_sag_p2_iso", ContrastBolusAgent="Gadovist"), "t1ce"),
        (series("AX T1+C"), "t1ce"),
        (series("T1CE"), "t1ce"),
        (series("sT1W_3D_TFE"), "t1"),
        (series("t1_se_tra"), "t1"),
        (series("Ax T2 FSE"), "t2"),
        # by sequence attributes, when the name says nothing
        (series("SERIES 7", InversionTime="2500", EchoTime="120", RepetitionTime="9000"), "flair"),
        (series("SERIES 3", EchoTime="100", RepetitionTime="5000"), "t2"),
        (series("SERIES 2", EchoTime="10", RepetitionTime="500"), "t1"),
        (series("SERIES 5", EchoTime="10", RepetitionTime="500", ContrastBolusAgent="Gd"), "t1ce"),
        (series("SERIES 4", EchoTime="3", RepetitionTime="2300", InversionTime="900"), "t1"),
        # not one of the four
        (series("3-plane localizer"), None),
        (series("T1 AX", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), None),
        (series("ep2d_diff_3scan_trace"), None),
        (series("Apparent Diffusion Coefficient (mm2/s)"), None),
        (series("AX T2* GRE"), None),
        (series("SWI_Images"), None),
        (series("SERIES 9", EchoTime="30", RepetitionTime="1500"), None),
    ],
)
def test_default_rules(header, expected):
    assert identify(header).sequence == expected


def test_mapping_file_overrides_the_defaults(tmp_path):
    path = tmp_path / "mapping.json"
    path.write_text(
        json.dumps({"t1ce": ["^AX T1 SPECIAL$"], "ignore": ["T2 STAR"], "t2": ["1.2.3.4"]})
    )
    rules = load_mapping(path)
    assert identify(series("ax t1 special"), rules).sequence == "t1ce"
    assert identify(series("T2 STAR GRE"), rules).sequence is None
    assert identify(series("AX FLAIR", uid="1.2.3.4"), rules).sequence == "t2"  # by UID
    assert "mapping file" in identify(series("AX FLAIR", uid="1.2.3.4"), rules).reason
    assert identify(series("AX FLAIR"), rules).sequence == "flair"  # no rule: the defaults


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "unreadable"),
        ('["t1"]', "JSON object"),
        ('{"pd": ["x"]}', "unknown key 'pd'"),
        ('{"t1": [3]}', "list of strings"),
        ('{"t1": ["("]}', "not a regular expression"),
    ],
)
def test_bad_mapping_files_are_refused(tmp_path, content, message):
    path = tmp_path / "mapping.json"
    path.write_text(content)
    with pytest.raises(DicomImportError, match=message):
        load_mapping(path)
