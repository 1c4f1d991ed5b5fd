"""Built-in synthetic cohort: ACDC-layout cine-MRI phantoms with a known diagnosis.

:func:`write_synthetic_cohort` writes a folder laid out exactly like the ACDC challenge data
(Bernard et al., IEEE TMI 2018)::

    OUT/README.txt                                    what this is (not patient data)
    OUT/synthetic_cohort.csv                          per patient: group, BSA, measured indices
    OUT/training/patientNNN/Info.cfg                  ED, ES, Group, Height, NbFrame, Weight
    OUT/training/patientNNN/patientNNN_frameEE.nii.gz     ED image (x, y, z)
    OUT/training/patientNNN/patientNNN_frameEE_gt.nii.gz  ED labels, uint8
    OUT/training/patientNNN/patientNNN_frameSS.nii.gz     ES image
    OUT/training/patientNNN/patientNNN_frameSS_gt.nii.gz  ES labels
    OUT/training/patientNNN/patientNNN_4d.nii.gz          optional cine (x, y, z, t)
    OUT/testing/patientNNN/...                            same layout, numbered after training

Labels follow ACDC: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary muscles
inside the cavity label, as the ACDC experts drew them).

The phantom is built in millimetres and rasterised directly at the target grid:

* **Heart.** The LV cavity is a truncated prolate ellipsoid (apex at distance ``d = 0`` along the
  long axis, base at ``d = d_base``) with an elliptic cross-section; the wall is a shell of
  angle- and level-dependent thickness (thinner toward the apex, with an apical cap). The RV
  cavity is a crescent wrapped around the septal side of the LV epicardium whose depth shrinks
  toward the RV apex. Every boundary is a polar radius ``r(phi)`` around the LV long axis, so
  volumes used to *design* a patient (``0.5 * sum r^2 dphi`` per slice times the slice spacing)
  match the voxel counts of the rasterised masks to within the pixelisation error.
* **Contraction.** At ES the base descends toward the (fixed) apex by the longitudinal factor
  ``c`` (slice ``d`` shows the ED material from ``d / c``), the endocardium moves inward by a
  radial factor ``k`` and the epicardium follows from conservation of myocardial area per
  angular sector (so the wall thickens). An infarct sector keeps ``k = 1`` (akinesia).
* **Surroundings.** Body outline, subcutaneous fat, chest-wall muscle, lungs with vessels, liver
  (apical slices), stomach, spine with canal and paraspinal muscles, descending aorta, sternum,
  epicardial fat, pericardium, atria above the base; SSFP-like contrast (blood and fat bright,
  myocardium and muscle dark, lungs black).
* **Scanner nuisance.** Matrix, field of view, in-plane spacing, slice count and spacing, heart
  position/rotation/tilt, per-slice breath-hold jitter, tissue contrasts, gamma, smooth coil bias,
  slight blur, Rician noise, intensity scale and stored dtype (int16, float32 or uint8).

The five groups follow the ACDC diagnostic criteria, checked on the *written masks* by
:func:`~.measure.phantom_indices` and :func:`cardioclr.clinical.criteria.diagnose` (a
patient whose masks do not meet its group's criteria is re-drawn): NOR, DCM (LV EDV > 100
mL/m2 and LVEF < 40 %), HCM (LV mass > 110 g/m2, wall > 15 mm, LVEF > 55 %), MINF (LVEF <
40 % with a thin, akinetic sector) and RV (RV EDV > 110 mL/m2 or RVEF < 40 %). Scanner and
body parameters are drawn independently of the group, so the diagnosis is carried by anatomy
and function only.

The package, in the order the generator works (each module imports only those before it):
:mod:`.anatomy` (patient description, polar boundary tables), :mod:`.sampling` (drawing a
patient), :mod:`.raster` (label volumes), :mod:`.measure` (indices on the masks),
:mod:`.render` (the MR image), :mod:`.cohort` (one patient end to end, the cohort writer).
Labels come from :mod:`cardioclr.clinical.labels`, the group criteria from
:mod:`cardioclr.clinical.criteria`.
"""

from __future__ import annotations

from cardioclr.data.synthetic.anatomy import Heart, PatientSpec
from cardioclr.data.synthetic.cohort import (
    GENERATOR_VERSION,
    README_MARKER,
    assign_cohort,
    generate_patient,
    write_synthetic_cohort,
)
from cardioclr.data.synthetic.measure import phantom_indices, read_patient_indices

__all__ = ["GENERATOR_VERSION", "README_MARKER", "Heart", "PatientSpec", "assign_cohort",
           "generate_patient", "phantom_indices", "read_patient_indices", "write_synthetic_cohort"]
