"""De-identification: pseudonyms, identifying header values, and the PS3.15 basic profile.

One home for what counts as identifying in a DICOM header (used by the importer to keep
identifiers out of every output and message, and by any DICOM writer of cardioclr):

* :data:`PHI_KEYWORDS`: attributes whose *values* identify the patient (never written, never
  logged); :func:`phi_values` collects them from a dataset and :func:`scrub` removes them from a
  text (a library error message quoting a header value, a series description).
* :func:`apply_basic_profile`: the DICOM PS3.15 Annex E *Basic Application Level
  Confidentiality Profile* applied to a dataset cardioclr writes (e.g. a DICOM SEG): identifying
  attributes removed or emptied, PatientName/PatientID replaced by the pseudonym, private tags
  and overlays removed, UIDs replaced consistently through ``uid_map`` (or kept with the *Retain
  UIDs Option*, so the object still references the hospital's images), and the result recorded
  in PatientIdentityRemoved, DeidentificationMethod and DeidentificationMethodCodeSequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Attributes whose values identify a patient (PS3.15 Table E.1-1, patient/institution part).
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
    "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "AccessionNumber", "ReferringPhysicianName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "OperatorsName", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "MedicalRecordLocator", "StudyID",
    "ResponsiblePerson", "ResponsibleOrganization", "DeviceSerialNumber",
)

# PS3.15 Annex E basic profile actions for the attributes cardioclr may copy into its objects.
# Z: replace with a zero-length value (type 2 attributes must stay present); X: remove.
_EMPTY = ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
          "StudyID", "StudyDate", "StudyTime", "ContentCreatorName")
_REMOVE = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthTime",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "PatientAge", "PatientSize", "PatientWeight", "MilitaryRank", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "MedicalRecordLocator", "ResponsiblePerson",
    "ResponsibleOrganization", "CountryOfResidence", "RegionOfResidence",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "OperatorsName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "RequestingPhysician", "DeviceSerialNumber",
    "StudyDescription", "SeriesDescription", "ImageComments", "RequestAttributesSequence",
    "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "ProtocolName",
    "ReferencedPatientSequence", "ReferencedStudySequence", "AdmittingDiagnosesDescription",
)
# U: UIDs replaced consistently (same original -> same replacement within one uid_map).
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
         "ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID", "MediaStorageSOPInstanceUID")

#: Shortest identifying value :func:`scrub` removes from texts.
MIN_SECRET_LENGTH = 3
METHOD = "cardioclr: PS3.15 Annex E Basic Profile"  # LO: at most 64 characters
_CODES = {"basic": ("113100", "Basic Application Confidentiality Profile"),
          "retain_uids": ("113110", "Retain UIDs Option")}


def phi_values(ds: Any) -> list[str]:
    """The identifying strings present in a dataset (values of :data:`PHI_KEYWORDS`, and the
    name components of person names), for :func:`scrub`. Corrupt elements are skipped."""
    out: list[str] = []
    for key in PHI_KEYWORDS:
        try:
            value = getattr(ds, key, None)
        except Exception:  # a corrupt element raises on access
            continue
        if value is None:
            continue
        text = str(value).strip()
        if text:
            out.append(text)
            out.extend(part for part in text.replace("^", " ").split() if len(part) > 2)
    return out


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (longest first) replaced by ``<redacted>``, ignoring case.

    Secrets shorter than :data:`MIN_SECRET_LENGTH` characters are not searched for: a one- or
    two-character value (a StudyID "1", an initial) would redact every digit or letter pair.
    """
    import re

    for s in sorted(set(secrets), key=len, reverse=True):
        if len(s) >= MIN_SECRET_LENGTH:
            text = re.sub(re.escape(s), "<redacted>", text, flags=re.IGNORECASE)
    return text


def apply_basic_profile(ds: Any, pseudonym: str, uid_map: dict[str, str] | None = None) -> Any:
    """De-identify ``ds`` in place by the PS3.15 Annex E basic profile; returns ``ds``.

    PatientName and PatientID become ``pseudonym``; the attributes above are emptied or removed
    (also inside sequences); private tags and overlay/curve groups are removed. With
    ``uid_map`` every UID listed in ``_UIDS`` is replaced by a new one (the same original always
    maps to the same replacement; the dict is filled as it goes); without it UIDs are kept and the
    *Retain UIDs Option* (DCM 113110) is recorded: use that for objects that must reference the
    hospital's own images (a DICOM SEG to open over its source series).
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    def clean(d: Dataset) -> None:
        for key in _REMOVE:
            if key in d:
                delattr(d, key)
        for key in _EMPTY:
            if key in d:
                d[key].value = ""
        if uid_map is not None:
            for key in _UIDS:
                if key in d and d[key].value:
                    old = str(d[key].value)
                    d[key].value = uid_map.setdefault(old, generate_uid())
        for group in {tag.group for tag in d.keys() if 0x6000 <= tag.group <= 0x60FF}:
            for tag in [t for t in d.keys() if t.group == group]:
                del d[tag]  # overlays can carry burned-in-like text
        for elem in list(d):
            if elem.VR == "SQ":
                for item in elem.value:
                    clean(item)

    ds.remove_private_tags()
    clean(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and uid_map is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = pseudonym
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD + ("" if uid_map is not None else ", Retain UIDs")
    codes = [_CODES["basic"]] + ([] if uid_map is not None else [_CODES["retain_uids"]])
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    return ds
