"""De-identification: salted pseudonyms and DICOM PS3.15's Basic Application Level Confidentiality Profile.

`deid_dicom` applies the profile's Table E.1-1 as dicom-anonymizer keeps it, machine-read from the
standard (`PROFILE_TABLE`, one action per attribute: X remove, Z empty, D replace, U replace the UID),
at every depth: an attribute the table names is acted on inside any sequence item too
(OriginalAttributesSequence is removed, ContentSequence replaced, a PatientName nested in a kept
sequence emptied). On top of the table: private attributes removed, every person name (PN) emptied,
PatientID/PatientName replaced by the patient pseudonym, UIDs by salted 2.25 UIDs (references stay
consistent), and the Retain Patient Characteristics option for sex, age (capped at 90), size and
weight. It works on header attributes only: text burned into the pixels is NOT removed, which is
why ingest refuses images whose BurnedInAnnotation or RecognizableVisualFeatures is YES
(components.readers.dicom) and images at risk of burned-in text unless the dataset accepts the risk.

`removed_values` lists the original values the profile removes or replaces, for the PHI scan
(components.privacy.phi) to look for in a run's artifacts; nothing keeps them.

Pseudonyms are HMAC-SHA256 keyed by a secret salt, so they are stable for one salt (patients can be
linked across ingests) and unlinkable without it. The salt is passed in; nothing here reads the
environment.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
import warnings
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pydicom

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

PROFILE_TABLE = "dicomfields_2026c"  # dicom-anonymizer's copy of PS3.15 Table E.1-1 (2026c edition)
DEID_METHOD = f"PS3.15 E.1-1 Basic Profile ({PROFILE_TABLE}), Retain Pat Chars"  # LO: 64 characters at most
# The table's categories, each reduced to the one action taken here: removal wherever the standard
# allows it (X/Z, X/D... keep a type 1 or 2 attribute only for IOD conformance of files written out,
# and medgate writes no DICOM file), else emptying or replacing. X/Z/U* sequences hold references:
# kept, their UIDs replaced where the walk meets them (U).
_CATEGORY_ACTION = {
    "X_TAGS": "X", "X_Z_TAGS": "X", "X_D_TAGS": "X", "X_Z_D_TAGS": "X",
    "Z_TAGS": "Z", "Z_D_TAGS": "Z", "D_TAGS": "D", "U_TAGS": "U", "X_Z_U_STAR_TAGS": "K",
}
# X in PS3.15 Table E.1-1 but absent from the 2026c table.
_SUPPLEMENT = {"GroupOfPatientsIdentificationSequence": "X"}
# The Retain Patient Characteristics option (subgroup analysis needs them); age is capped below.
RETAINED = frozenset({"PatientSex", "PatientAge", "PatientSize", "PatientWeight"})
_DUMMY_DATES = {"DA": "19000101", "DT": "19000101000000", "TM": "000000"}
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
# The header values the PHI scan looks for: text and UIDs (dates, times, numbers and codes are too generic).
_SOUGHT_VRS = frozenset(_TEXT_VRS - {"CS"} | {"UI"})
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")


def pseudonym(value: str, salt: str, length: int = 16) -> str:
    """First `length` hex digits of HMAC-SHA256(key=salt, message=value)."""
    return hmac.new(salt.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()[:length]


def pseudonymous_uid(uid: str, salt: str) -> str:
    """A replacement UID under the 2.25 (UUID-derived) root, stable for one salt."""
    return "2.25." + str(int(pseudonym(uid, salt, 32), 16))


@cache
def profile_actions() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """The profile as ({tag: action}, ((group, element, group mask, element mask, action), ...)) for the
    repeating groups (curves, overlays); actions X, Z, D, U or K (keep, nested UIDs replaced)."""
    # Imported here: the service imports `pseudonym` from this module and never de-identifies a
    # header, so a Bento needs no dicom-anonymizer.
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    table = dicom_anonymization_database_selector(PROFILE_TABLE)
    single: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _CATEGORY_ACTION.items():
        for tag in table[category]:
            if len(tag) == 4:
                masked.append((*tag, action))
            else:
                single[tag[0] << 16 | tag[1]] = action
    for keyword, action in _SUPPLEMENT.items():
        single[int(tag_for_keyword(keyword))] = action  # type: ignore[arg-type]
    for keyword in RETAINED:
        single.pop(int(tag_for_keyword(keyword)), None)  # type: ignore[arg-type]
    return single, tuple(masked)


def action_for(tag: BaseTag) -> str | None:
    """The profile's action for an attribute (X, Z, D, U, K), None when it keeps it as it is."""
    single, masked = profile_actions()
    if (action := single.get(int(tag))) is not None:
        return action
    for group, element, group_mask, element_mask, act in masked:
        if tag.group & group_mask == group & group_mask and tag.element & element_mask == element & element_mask:
            return act
    return None


def deid_dicom(ds: Dataset, salt: str) -> Dataset:
    """A de-identified copy of a DICOM dataset (the input is left untouched): see the module docstring.

    Args:
        ds: the dataset as read (FileDataset or Dataset).
        salt: the secret pseudonymisation key.

    Returns:
        A new dataset, marked PatientIdentityRemoved YES with the profile's method codes; pixel data unchanged.
    """
    out = copy.deepcopy(ds)
    patient = str(out.get("PatientID", "") or "")
    out.remove_private_tags()
    meta = getattr(out, "file_meta", None)
    for dataset in (meta, out):
        if dataset is not None:
            dataset.walk(lambda d, e: _apply(d, e, salt))
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


def _apply(ds: Dataset, elem: DataElement, salt: str) -> None:
    action = action_for(elem.tag)
    if action == "X" or (action == "D" and elem.VR not in (*_TEXT_VRS, *_DUMMY_DATES, "UI", "SQ", "IS", "DS")):
        del ds[elem.tag]
    elif action == "Z" or (action is None and elem.VR == "PN") or (action == "D" and elem.VR == "SQ"):
        elem.value = [] if elem.VR == "SQ" else _DUMMY_DATES.get(elem.VR, "")
    elif action == "D":
        elem.value = _dummy(elem, salt)
    elif elem.VR == "UI" and elem.value and action == "U":
        values = elem.value if elem.VM > 1 else [elem.value]
        replaced = [_replace_uid(str(v), salt) for v in values]
        elem.value = replaced if elem.VM > 1 else replaced[0]


def _dummy(elem: DataElement, salt: str) -> str:
    """A non-empty value of the element's VR that names nobody (D)."""
    if elem.VR in _DUMMY_DATES:
        return _DUMMY_DATES[elem.VR]
    if elem.VR in ("IS", "DS"):
        return "0"
    if elem.VR == "UI":
        return pseudonymous_uid(str(elem.value), salt)
    value = pseudonym(str(elem.value), salt, 16)
    return value.upper() if elem.VR == "CS" else value


def _replace_uid(uid: str, salt: str) -> str:
    # Well-known UIDs (SOP classes, transfer syntaxes, coding schemes) identify nobody.
    return uid if uid in UID_dictionary else pseudonymous_uid(uid, salt)


def removed_values(ds: Dataset) -> set[str]:
    """The original text values `deid_dicom` removes or replaces, at any depth and in the file meta:
    person names, IDs, UIDs, addresses, free text (dates, times, numbers, codes and IDs of fewer than
    six digits are too generic to look for, and are left out)."""
    found: set[str] = set()
    meta = getattr(ds, "file_meta", None)
    for dataset in (meta, ds):
        for elem in dataset.iterall() if dataset is not None else ():
            if elem.VR not in _SOUGHT_VRS or elem.tag.is_private or elem.keyword in RETAINED:
                continue
            if action_for(elem.tag) in ("X", "Z", "D", "U") or elem.VR == "PN":
                values = elem.value if elem.VM > 1 else [elem.value]
                found.update(text for v in values if (text := str(v or "").strip()) and text not in UID_dictionary
                             and not (text.isdigit() and len(text) < 6))  # a short number occurs anywhere
    return found


def dicom_identifiers(paths: Iterable[Path]) -> set[str]:
    """`removed_values` of every readable DICOM file among `paths` (headers only; unreadable ones skipped)."""
    found: set[str] = set()
    for path in paths:
        try:
            with warnings.catch_warnings():  # pydicom's warnings can quote header values
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - ingest reports an unreadable file; it stored nothing of it
            continue
        found |= removed_values(ds)
    return found
