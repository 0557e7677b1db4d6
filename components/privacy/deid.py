"""De-identification: salted pseudonyms and a DICOM header scrubber.

`deid_dicom` applies a subset of the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile with the Retain Patient Characteristics option (sex, age capped at 90,
size, weight kept). It works on header attributes only: text burned into the pixels is NOT
removed, which is why ingest refuses images whose BurnedInAnnotation is YES.

Pseudonyms are HMAC-SHA256 keyed by a secret salt, so they are stable for one salt (patients can be
linked across ingests) and unlinkable without it. The salt is passed in; nothing here reads the
environment.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

DEID_METHOD = "medgate PS3.15 basic profile subset"

# Attributes removed outright (X in the Basic Profile), where present, at any depth.
_REMOVE = frozenset({
    "AcquisitionComments", "AdditionalPatientHistory", "AdmittingDiagnosesDescription",
    "Allergies", "BranchOfService", "ContentCreatorName", "CountryOfResidence", "CurrentPatientLocation",
    "DerivationDescription", "DetectorID", "DeviceSerialNumber", "ImageComments",
    "InstitutionAddress", "InstitutionName", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "IssuerOfPatientID", "MedicalAlerts", "MedicalRecordLocator", "MilitaryRank",
    "NameOfPhysiciansReadingStudy",
    "Occupation", "OperatorsName", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientAddress", "PatientBirthName", "PatientBirthTime", "PatientComments",
    "PatientInsurancePlanCodeSequence", "PatientMotherBirthName", "PatientReligiousPreference",
    "PatientTelephoneNumbers", "PerformedProcedureStepDescription", "PerformingPhysicianName",
    "PhysiciansOfRecord", "PhysiciansReadingStudyIdentificationSequence", "ProtocolName",
    "ReferencedPatientSequence", "ReferencedStudySequence", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "RegionOfResidence", "RequestAttributesSequence",
    "RequestedProcedureDescription", "RequestingPhysician", "RequestingService",
    "ScheduledProcedureStepDescription", "SeriesDescription", "StationName", "StudyDescription",
    "TextComments", "PerformedStationName", "PerformedLocation", "ResponsiblePerson",
    "ResponsibleOrganization", "EthnicGroup",
})
# Attributes kept but emptied (Z): type 2 in most IODs, so they must stay present.
_EMPTY = frozenset({"AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")


def pseudonym(value: str, salt: str, length: int = 16) -> str:
    """First `length` hex digits of HMAC-SHA256(key=salt, message=value)."""
    return hmac.new(salt.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()[:length]


def pseudonymous_uid(uid: str, salt: str) -> str:
    """A replacement UID under the 2.25 (UUID-derived) root, stable for one salt."""
    return "2.25." + str(int(pseudonym(uid, salt, 32), 16))


def deid_dicom(ds: Dataset, salt: str) -> Dataset:
    """A de-identified copy of a DICOM dataset (the input is left untouched).

    Removes private tags and the identifying attributes above at any depth, empties names (every PN
    value), dates and times, replaces PatientID/PatientName by the patient pseudonym and every
    non-standard UID (study, series, instance, frame of reference, file meta) by a salted 2.25 UID
    so that references inside the dataset stay consistent. Sex, age (capped at 90Y), modality,
    vendor and acquisition parameters are retained. Marks PatientIdentityRemoved = YES.

    Args:
        ds: the dataset as read (FileDataset or Dataset).
        salt: the secret pseudonymisation key.

    Returns:
        A new dataset; pixel data unchanged.
    """
    out = copy.deepcopy(ds)
    patient = str(out.get("PatientID", "") or "")
    out.remove_private_tags()
    out.walk(lambda d, e: _scrub(d, e, salt))
    meta = getattr(out, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = pseudonymous_uid(str(meta.MediaStorageSOPInstanceUID), salt)
    pid = pseudonym(patient, salt) if patient else ""
    out.PatientID = pid
    out.PatientName = pid
    age = _AGE.match(str(out.get("PatientAge", "") or ""))
    if age and age.group(2) == "Y" and int(age.group(1)) > 89:
        out.PatientAge = "090Y"  # HIPAA Safe Harbor: ages over 89 are aggregated
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEID_METHOD
    codes = []
    for value, meaning in (("113100", "Basic Application Confidentiality Profile"),
                           ("113108", "Retain Patient Characteristics Option")):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(codes)
    if hasattr(out, "filename"):
        out.filename = None  # a source path can itself carry a name
    return out


def _scrub(ds: Dataset, elem: DataElement, salt: str) -> None:
    keyword = elem.keyword
    if keyword in _REMOVE:
        del ds[elem.tag]
    elif keyword in _EMPTY or elem.VR == "PN" or elem.VR in _DATE_VRS:
        elem.value = None if elem.VR == "SQ" else ""
    elif elem.VR == "UI" and elem.value:
        if elem.VM > 1:
            elem.value = [_replace_uid(str(v), salt) for v in elem.value]
        else:
            elem.value = _replace_uid(str(elem.value), salt)


def _replace_uid(uid: str, salt: str) -> str:
    # Well-known UIDs (SOP classes, transfer syntaxes, coding schemes) identify nobody.
    return uid if uid in UID_dictionary else pseudonymous_uid(uid, salt)
