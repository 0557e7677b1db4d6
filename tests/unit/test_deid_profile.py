"""deid_dicom against the PS3.15 Basic Profile's own table: every attribute it names, at the top level
and nested in a sequence the profile keeps, is gone, emptied or replaced after de-identification."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from components.privacy.deid import RETAINED, action_for, deid_dicom, profile_actions, removed_values

pytestmark = pytest.mark.unit
SALT = "profile-salt"
HOLDER = "ReferencedSeriesSequence"  # a sequence the profile keeps: what it holds is de-identified item by item
_DATES = {"DA": "20200314", "DT": "20200314101500", "TM": "101500"}


def _sample(tag: int, vr: str, n: int) -> object:
    """A value of `vr` unique to this attribute, so that the test can tell it apart anywhere."""
    if vr in _DATES:
        return _DATES[vr]
    if vr == "UI":
        return f"1.2.826.0.1.3680043.9.7777.{n}"
    if vr in ("IS", "DS"):
        return str(900000 + n)
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"):
        return 900000 % 30000 + n if vr in ("US", "SS") else 900000 + n
    if vr == "AS":
        return "045Y"
    if vr == "AT":
        return Tag(0x0010, 0x0010)
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return f"SECRETBYTES{n:06d}".encode()
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"Nested^Secret{n}"
        return Sequence([item])
    if vr == "CS":
        return f"SECRET{n}"[:16]
    return f"http://example.org/secret{n}" if vr == "UR" else f"Secret value {n}"


def _profile_elements() -> list[tuple[int, str, object]]:
    """(tag, VR, value) of every single attribute the profile's table acts on, outside the file meta
    and command groups, that pydicom's dictionary knows."""
    single, _ = profile_actions()
    out = []
    for n, tag in enumerate(sorted(single)):
        if tag >> 16 in (0x0000, 0x0002):
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        out.append((tag, vr, _sample(tag, vr, n)))
    return out


def _dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.424242"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    nested = Dataset()
    for tag, vr, value in _profile_elements():
        ds.add_new(tag, vr, value)
        nested.add_new(tag, vr, value)
    ds.ReferencedSeriesSequence = Sequence([nested])
    return ds


def _check(ds: Dataset, original: Dataset, where: str) -> list[str]:
    wrong = []
    for tag, vr, value in _profile_elements():
        keyword = keyword_for_tag(tag) or hex(tag)
        action = action_for(Tag(tag))
        if keyword in RETAINED or action == "K":
            continue
        if action == "X":
            if tag in ds:
                wrong.append(f"{where} {keyword}: X but present")
        elif tag in ds and ds[tag].value == original[tag].value and ds[tag].value not in ("", None, []):
            wrong.append(f"{where} {keyword}: {action} but unchanged")
    return wrong


def test_every_attribute_of_the_profile_is_removed_or_replaced_at_any_depth() -> None:
    assert action_for(Tag(0x00081115)) is None, f"{HOLDER} must be one the profile keeps"
    ds = _dataset()
    clean = deid_dicom(ds, SALT)
    wrong = _check(clean, ds, "top")
    wrong += _check(clean.ReferencedSeriesSequence[0], ds.ReferencedSeriesSequence[0], f"in {HOLDER}")
    assert wrong == []
    assert clean.file_meta.MediaStorageSOPInstanceUID != ds.file_meta.MediaStorageSOPInstanceUID
    text = str(clean) + str(clean.file_meta)
    assert "Secret value" not in text and "example.org/secret" not in text and "Nested^Secret" not in text and "SECRET" not in text
    assert "3680043.9.7777" not in text  # every original UID replaced
    assert len(_profile_elements()) > 500  # the table, not a hand list


def test_attributes_the_hand_list_missed() -> None:
    ds = Dataset()
    ds.PatientID, ds.PatientName = "MRN-778899", "Doe^Jane"
    ds.AdmissionID = "ADM-20331"
    ds.ReasonForStudy = "follow-up of Jane Doe's fall"
    ds.RequestedProcedureID = "RP-99812"
    original = Dataset()
    original.PatientName, original.OtherPatientIDs = "Doe^Janet", "OLD-4411"
    modified = Dataset()
    modified.OriginalAttributesSequence = Sequence([Dataset()])
    modified.OriginalAttributesSequence[0].ModifiedAttributesSequence = Sequence([original])
    ds.OriginalAttributesSequence = Sequence([modified])
    group = Dataset()
    group.PatientID, group.SubjectRelativePositionInImage = "GRP-3321", [1, 2, 3]
    ds.GroupOfPatientsIdentificationSequence = Sequence([group])
    note = Dataset()
    note.ValueType, note.TextValue = "TEXT", "Patient Jane Doe, MRN-778899, seen at home"
    ds.ContentSequence = Sequence([note])
    clean = deid_dicom(ds, SALT)
    for keyword in ("AdmissionID", "ReasonForStudy", "RequestedProcedureID", "OriginalAttributesSequence",
                    "GroupOfPatientsIdentificationSequence"):
        assert keyword not in clean or not clean[keyword].value or clean[keyword].value != ds[keyword].value, keyword
    text = str(clean)
    for value in ("778899", "Doe", "ADM-20331", "RP-99812", "OLD-4411", "GRP-3321", "seen at home"):
        assert value not in text, value
    buf = io.BytesIO()
    clean.is_little_endian, clean.is_implicit_VR = True, False
    pydicom.dcmwrite(buf, clean)


def test_removed_values_are_what_deid_takes_out() -> None:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientSex = "Doe^John", "123456", "M"
    ds.InstitutionName, ds.Manufacturer = "Saint Elsewhere", "ACME"
    ds.AdmissionID = "ADM-1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7777.5"
    item = Dataset()
    item.PatientName = "Roe^Richard"
    ds.OriginalAttributesSequence = Sequence([item])
    values = removed_values(ds)
    assert {"Doe^John", "123456", "Saint Elsewhere", "ADM-1", "1.2.826.0.1.3680043.9.7777.5", "Roe^Richard"} <= values
    assert not values & {"M", "ACME", "1.2.840.10008.5.1.4.1.1.2"}  # kept, and a well-known UID
