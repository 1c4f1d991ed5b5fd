"""ACDC diagnostic criteria (Bernard et al., IEEE TMI 2018) on clinical indices: one home.

The thresholds of the five groups, :func:`class_criteria` (which of a group's criteria a
patient's indices fail) and the rule-based :func:`diagnose`. The indices are those of
:func:`cardioclr.data.synthetic.measure.phantom_indices` (``lv_ef``, ``lv_edv_index``,
``rv_edv_index``, ``rv_ef``, ``lv_mass_index``, ``max_wall_mm``, ``thin_ratio``,
``thin_thickening``); the built-in phantom cohort is drawn so that every patient meets its own
group's criteria.
"""

from __future__ import annotations

# Diagnostic thresholds (ACDC, Bernard et al. 2018) and the "normal" limits used for NOR.
DCM_LV_EDVI_MIN = 100.0  # mL/m2
LOW_EF = 40.0  # %, LVEF (DCM, MINF) and RVEF (RV)
HCM_MASS_INDEX_MIN = 110.0  # g/m2
HCM_WALL_MIN_MM = 15.0
HCM_EF_MIN = 55.0
RV_EDVI_MIN = 110.0
NOR_LIMITS = {"lv_edvi_max": 95.0, "rv_edvi_max": 105.0, "lv_ef_min": 50.0, "rv_ef_min": 45.0,
              "wall_max_mm": 12.0, "mass_index_max": 100.0}
# A sector counts as infarcted (MINF) when its ED thickness is at most this fraction of the
# median sector thickness and it thickens by less than this fraction from ED to ES.
MINF_THIN_RATIO = 0.6
MINF_AKINETIC_THICKENING = 0.2


def class_criteria(ind: dict[str, float], group: str) -> list[str]:
    """Which of ``group``'s diagnostic criteria the indices fail (empty list: all met)."""
    fails: list[str] = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            fails.append(text)

    ef, edvi = ind["lv_ef"], ind["lv_edv_index"]
    regional = ind["thin_ratio"] <= MINF_THIN_RATIO \
        and ind["thin_thickening"] < MINF_AKINETIC_THICKENING
    if group == "NOR":
        lim = NOR_LIMITS
        need(edvi <= lim["lv_edvi_max"], f"LV EDV index {edvi:.0f} > {lim['lv_edvi_max']}")
        need(ind["rv_edv_index"] <= lim["rv_edvi_max"],
             f"RV EDV index {ind['rv_edv_index']:.0f} > {lim['rv_edvi_max']}")
        need(ef >= lim["lv_ef_min"], f"LVEF {ef:.0f} < {lim['lv_ef_min']}")
        need(ind["rv_ef"] >= lim["rv_ef_min"], f"RVEF {ind['rv_ef']:.0f} < {lim['rv_ef_min']}")
        need(ind["max_wall_mm"] <= lim["wall_max_mm"],
             f"max wall {ind['max_wall_mm']:.1f} mm > {lim['wall_max_mm']}")
        need(ind["lv_mass_index"] <= lim["mass_index_max"],
             f"LV mass index {ind['lv_mass_index']:.0f} > {lim['mass_index_max']}")
        need(not regional, "regional wall thinning")
    elif group == "DCM":
        need(edvi > DCM_LV_EDVI_MIN, f"LV EDV index {edvi:.0f} <= {DCM_LV_EDVI_MIN}")
        need(ef < LOW_EF, f"LVEF {ef:.0f} >= {LOW_EF}")
        need(not regional, "regional wall thinning (looks like MINF)")
    elif group == "HCM":
        need(ind["lv_mass_index"] > HCM_MASS_INDEX_MIN,
             f"LV mass index {ind['lv_mass_index']:.0f} <= {HCM_MASS_INDEX_MIN}")
        need(ind["max_wall_mm"] > HCM_WALL_MIN_MM,
             f"max wall {ind['max_wall_mm']:.1f} mm <= {HCM_WALL_MIN_MM}")
        need(ef > HCM_EF_MIN, f"LVEF {ef:.0f} <= {HCM_EF_MIN}")
    elif group == "MINF":
        need(ef < LOW_EF, f"LVEF {ef:.0f} >= {LOW_EF}")
        need(ind["thin_ratio"] <= MINF_THIN_RATIO,
             f"no thin sector (ratio {ind['thin_ratio']:.2f} > {MINF_THIN_RATIO})")
        need(ind["thin_thickening"] < MINF_AKINETIC_THICKENING,
             f"thin sector thickens by {ind['thin_thickening']:.2f}")
    elif group == "RV":
        need(ind["rv_edv_index"] > RV_EDVI_MIN or ind["rv_ef"] < LOW_EF,
             f"RV EDV index {ind['rv_edv_index']:.0f} <= {RV_EDVI_MIN} and "
             f"RVEF {ind['rv_ef']:.0f} >= {LOW_EF}")
    else:
        raise ValueError(f"unknown group {group!r}")
    return fails


def diagnose(ind: dict[str, float]) -> str:
    """Rule-based ACDC diagnosis from :func:`phantom_indices`, or ``"?"`` when none fits.

    Order: reduced LVEF (MINF if a thin akinetic sector, else DCM), then HCM, then abnormal
    RV, then normal.
    """
    for group in ("MINF", "DCM", "HCM", "RV", "NOR"):
        if not class_criteria(ind, group):
            return group
    return "?"
