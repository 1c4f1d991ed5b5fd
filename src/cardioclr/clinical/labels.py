"""ACDC conventions for label maps and diagnoses (Bernard et al., IEEE TMI 2018): one home.

Every label map in cardioclr (expert annotations, predicted masks, phantom masks) uses the
ACDC label values below, on any grid. Pure Python, imports nothing: the IO readers, the phantom
generator, the segmentation network and the clinical indices all read these names.
"""

from __future__ import annotations

#: Label values of a label map (uint8).
BACKGROUND, RV_CAVITY, LV_MYOCARDIUM, LV_CAVITY = 0, 1, 2, 3
#: Largest valid label value; a label map holds values 0..MAX_LABEL only.
MAX_LABEL = LV_CAVITY
#: Number of label values including background (the segmentation network's output channels).
N_LABELS = MAX_LABEL + 1
#: The labelled structures by short name, in label order.
STRUCTURES: dict[str, int] = {"RV": RV_CAVITY, "MYO": LV_MYOCARDIUM, "LV": LV_CAVITY}
#: What the label values mean, for error messages.
LABEL_MEANINGS = "0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity"

#: The five ACDC diagnostic groups (Info.cfg ``Group``): normal, dilated cardiomyopathy,
#: hypertrophic cardiomyopathy, previous myocardial infarction, abnormal right ventricle.
DIAGNOSES: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "RV")
