"""A DICOM TID 1500 measurement report of the cardiac volumes, referencing the ED/ES SEG segments.

One Comprehensive 3D SR per patient (highdicom, Imaging Measurement Report, procedure "Magnetic
resonance imaging of heart"), with one volumetric measurement group per measured segment, each
referencing its segment of the ED or ES SEG written by :func:`cardioclr.io.dicom_seg.write_seg`:

=========================  ===============================================  =========
segment (SEG)              measurement (code)                               unit
=========================  ===============================================  =========
LV cavity (ED)             Left Ventricular End Diastolic Volume (LN 18026-5)  mL
                           Left ventricular ejection fraction by MR (LN 8811-2)  %
LV cavity (ES)             Left Ventricular End Systolic Volume (LN 18148-7)    mL
RV cavity (ED), (ES)       Volume (SCT 118565006)                            mL
                           (ED group) Right ventricular ejection fraction by MR (LN 8818-7)  %
LV myocardium (ED)         Mass (SCT 4147007)                                g
=========================  ===============================================  =========

Values come from :func:`cardioclr.clinical.indices.compute_indices` on the same label maps the
SEGs hold (source grid), so report and segmentation agree. Codes are pydicom's (DICOM's own
tables). The report is de-identified like the SEG (:func:`cardioclr.io.deid.apply_basic_profile`,
Retain UIDs) and its type 1 dates get the profile's dummy value. Measurements that are not
finite (a structure absent from the mask) are left out.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY

#: (phase, segment number, tracking label, [(index name, code (value, scheme, meaning), unit)]).
_GROUPS: tuple[tuple[str, int, str, tuple[tuple[str, tuple[str, str, str], str], ...]], ...] = (
    ("ED", LV_CAVITY, "LV cavity ED", (
        ("lv_edv_ml", ("18026-5", "LN", "Left Ventricular End Diastolic Volume"), "mL"),
        ("lv_ef_pct", ("8811-2", "LN", "Left ventricular ejection fraction by MR"), "%"))),
    ("ES", LV_CAVITY, "LV cavity ES", (
        ("lv_esv_ml", ("18148-7", "LN", "Left Ventricular End Systolic Volume"), "mL"),)),
    ("ED", RV_CAVITY, "RV cavity ED", (
        ("rv_edv_ml", ("118565006", "SCT", "Volume"), "mL"),
        ("rv_ef_pct", ("8818-7", "LN", "Right ventricular ejection fraction by MR"), "%"))),
    ("ES", RV_CAVITY, "RV cavity ES", (
        ("rv_esv_ml", ("118565006", "SCT", "Volume"), "mL"),)),
    ("ED", LV_MYOCARDIUM, "LV myocardium ED", (
        ("myo_mass_ed_g", ("4147007", "SCT", "Mass"), "g"),)),
)
_UNITS = {"mL": ("mL", "UCUM", "milliliter"), "g": ("g", "UCUM", "gram"), "%": ("%", "UCUM", "percent")}


def write_measurement_report(segs: Mapping[str, str | os.PathLike[str]], indices: Mapping[str, float],
                             out: str | os.PathLike[str], software_version: str = "") -> Path:
    """Write the TID 1500 report of ``indices`` (:data:`cardioclr.clinical.indices.INDEX_NAMES`
    values) over the SEGs ``segs`` (``{"ED": path, "ES": path}``) to ``out``; returns ``out``.

    Written to a temporary name and renamed.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code
    from pydicom.valuerep import DA, TM

    from cardioclr.atomic import atomic_path
    from cardioclr.io.deid import apply_basic_profile
    from cardioclr.io.dicom_seg import DUMMY_DATE, DUMMY_TIME, MANUFACTURER

    seg_ds = {phase: pydicom.dcmread(p) for phase, p in segs.items()}
    groups: list[Any] = []
    for phase, segment, label, measured in _GROUPS:
        values = [(name, code, unit) for name, code, unit in measured
                  if math.isfinite(float(indices.get(name, math.nan)))]
        if not values:
            continue
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
            referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg_ds[phase], segment),
            measurements=[hd.sr.Measurement(name=Code(*code), value=float(indices[name]),
                                            unit=Code(*_UNITS[unit])) for name, code, unit in values],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="cardioclr", manufacturer_name=MANUFACTURER,
            model_name="cardioclr segment predict"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.MagneticResonanceImagingOfHeart,
        imaging_measurements=groups)
    evidence = list(seg_ds.values()) + _source_evidence(list(seg_ds.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=9003,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            is_final=False, is_verified=False)
    apply_basic_profile(sr, str(evidence[0].PatientID))
    sr.ContentDate, sr.ContentTime = DA(DUMMY_DATE), TM(DUMMY_TIME)
    if software_version:
        sr.SoftwareVersions = software_version
    out = Path(out)
    with atomic_path(out) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return out


def _source_evidence(segs: list[Any]) -> list[Any]:
    """Minimal datasets (UIDs only) of the source images the SEGs reference: the report's
    evidence must list every instance its content references, and the segments' references
    name the source images."""
    from pydicom.dataset import Dataset

    out, seen = [], set()
    for seg in segs:
        for series in seg.ReferencedSeriesSequence:
            for inst in series.ReferencedInstanceSequence:
                if inst.ReferencedSOPInstanceUID in seen:
                    continue
                seen.add(inst.ReferencedSOPInstanceUID)
                ds = Dataset()
                ds.SOPClassUID = inst.ReferencedSOPClassUID
                ds.SOPInstanceUID = inst.ReferencedSOPInstanceUID
                ds.SeriesInstanceUID = series.SeriesInstanceUID
                ds.StudyInstanceUID = seg.StudyInstanceUID
                out.append(ds)
    return out
