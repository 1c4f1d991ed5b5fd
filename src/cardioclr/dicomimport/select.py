"""Recognise each series of a patient and pick the short-axis cine stack.

A series is left out, with the reason, when it is a localiser (marked LOCALIZER, named like
one, or holding images in several orientations), a parametric map (T1/T2/T2*/ECV), a late
enhancement stack (LGE/PSIR, or inversion-recovery images with one image per position), or has
one image per slice position (not a cine). The remaining *cine* series (several images per
position at different trigger times) are grouped: a series holding several slice positions is
a stack by itself; single-position series of one study whose planes are parallel are stacked
together (one series per slice, as many scanners export), and so are at least
:data:`MIN_PHASE_SERIES` one-image-per-position stacks of identical geometry (one series per
cardiac phase). A stack is a short-axis candidate when
it has at least two slice positions and its normal lies within :data:`SAX_MAX_ANGLE_DEG` of the
typical LV long axis; single-slice cines at a steep angle to it are long-axis views
(2/3/4-chamber). When a patient has several candidates the one with the most slices, then the
most phases, then the latest series number (a repeat is usually the better acquisition) is used
and the others are reported with that explanation.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from cardioclr.dicomimport.scan import Frame, Series

#: LV long axis (base -> apex) in the patient LPS frame: to the left, anterior, inferior. The
#: normal of a short-axis plane lies near it; long-axis planes contain it (normal at ~90 deg).
LONG_AXIS_LPS = np.array([0.6, -0.45, -0.65]) / np.linalg.norm([0.6, -0.45, -0.65])
#: Largest angle (degrees) between a stack's normal and :data:`LONG_AXIS_LPS` accepted as
#: short-axis. Individual hearts deviate by up to ~25 degrees from the typical axis; an axial
#: plane is ~49 degrees away and 2/3/4-chamber planes ~90 degrees.
SAX_MAX_ANGLE_DEG = 45.0
# Planes whose normals differ by less than this are parallel (one stack of per-slice series).
_PARALLEL_COS = float(np.cos(np.radians(2.0)))
_POSITION_TOLERANCE_MM = 0.1  # frames closer than this along the normal share a slice position
#: Fewest one-phase stacks of identical geometry read as one cine exported phase by phase.
MIN_PHASE_SERIES = 3


@dataclass
class Decision:
    """What the importer did with one series (one row of the report)."""

    series: Series
    kind: str  # sax_cine, localizer, long_axis, lge, map, single_phase, other
    used: bool
    reason: str


@dataclass
class Candidate:
    """A short-axis cine candidate: one or several series forming one stack."""

    series: list[Series]
    n_positions: int
    n_phases: int
    angle_deg: float

    @property
    def per_phase(self) -> bool:
        """True for a cine exported as one series per cardiac phase."""
        return len(self.series) > 1 and self.n_positions > 1 and all(
            len(s.frames) == self.n_positions for s in self.series)

    @property
    def label(self) -> str:
        """How messages name the candidate (series numbers only; UIDs can identify)."""
        numbers = sorted(s.series_number for s in self.series)
        if len(numbers) == 1:
            return f"series {numbers[0]}"
        kind = "one-phase" if self.per_phase else "one-slice"
        return f"series {numbers[0]}-{numbers[-1]} ({len(numbers)} {kind} series)"


def normal_of(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal cross(row, column) of an ImageOrientationPatient."""
    o = np.asarray(orientation, dtype=float)
    n = np.cross(o[:3], o[3:])
    return n / max(float(np.linalg.norm(n)), 1e-12)


def angle_to_long_axis(normal: np.ndarray) -> float:
    """Angle (degrees, 0-90) between a plane normal and the typical LV long axis."""
    return float(np.degrees(np.arccos(min(1.0, abs(float(normal @ LONG_AXIS_LPS))))))


def slice_positions(frames: list[Frame], normal: np.ndarray) -> list[float]:
    """Distinct positions (mm along ``normal``) of the frames, sorted."""
    along = sorted(float(np.asarray(f.position) @ normal) for f in frames)
    out: list[float] = []
    for a in along:
        if not out or a - out[-1] > _POSITION_TOLERANCE_MM:
            out.append(a)
    return out


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9*]+", text.lower()) if t]


_LOCALIZER_WORDS = {"loc", "localizer", "localiser", "localizers", "localisers", "scout",
                    "survey", "pilot", "tripilot", "3plane"}
_MAP_WORDS = ("map", "molli", "sasha", "t2*", "t2star", "ecv")
_LGE_WORDS = {"lge", "psir", "de", "delayed", "late", "viability", "mde", "ir", "magir"}


def recognise(s: Series) -> tuple[str, str] | None:
    """(kind, reason) for a series that is not a cine, or None for a cine (several images per
    slice position at different trigger times).

    Words of the description are used only where the images agree: an LGE word marks a series
    with one image per position (a cine named "cine de sa" stays a cine).
    """
    tokens = _tokens(s.description)
    desc = f"'{s.description}'" if s.description else "(no description)"
    orientations = {tuple(np.round(f.orientation, 3)) for f in s.frames}
    if "LOCALIZER" in s.image_type or any(t in _LOCALIZER_WORDS or t.startswith("localis")
                                          or t.startswith("localiz") for t in tokens):
        return "localizer", f"localiser {desc}"
    if len(orientations) > 1:
        return "localizer", (f"images in {len(orientations)} different orientations {desc} "
                             "(a localiser or scout, not one stack)")
    if any("MAP" in t for t in s.image_type) or any(w in t for t in tokens for w in _MAP_WORDS):
        return "map", f"parametric map {desc}"
    normal = normal_of(s.frames[0].orientation)
    n_pos = len(slice_positions(s.frames, normal))
    per_position = len(s.frames) / max(n_pos, 1)
    if per_position < 1.5:
        if any(t in _LGE_WORDS or "psir" in t or "lge" in t for t in tokens):
            return "lge", f"late gadolinium enhancement {desc}"
        if s.has_inversion_time:
            return "lge", (f"inversion-recovery images, one per slice position {desc} "
                           "(late enhancement)")
        return "single_phase", f"one image per slice position {desc}: not a cine"
    triggers = {f.trigger_ms for f in s.frames}
    if None not in triggers and len(triggers) == 1:
        return "other", (f"several images per slice position at one trigger time {desc} "
                         "(e.g. inversion or echo times): not a cine")
    return None


def choose_cine(series: list[Series]) -> tuple[Candidate | None, list[Decision]]:
    """The short-axis cine of one patient (None when there is none) and a decision per series."""
    decisions: list[Decision] = []
    cines: list[Series] = []
    one_phase: list[Series] = []
    for s in series:
        found = recognise(s)
        if found is None:
            cines.append(s)
        elif found[0] == "single_phase":
            one_phase.append(s)
        else:
            decisions.append(Decision(s, found[0], False, found[1]))
    phase_groups = _phase_groups(one_phase)
    for group in phase_groups:
        if len(group) < MIN_PHASE_SERIES:
            for s in group:
                decisions.append(Decision(s, "single_phase", False, recognise(s)[1]))  # type: ignore[index]
    groups = _stack_groups(cines) + [g for g in phase_groups if len(g) >= MIN_PHASE_SERIES]
    candidates: list[Candidate] = []
    for group in groups:
        frames = [f for s in group for f in s.frames]
        normal = normal_of(frames[0].orientation)
        n_pos = len(slice_positions(frames, normal))
        angle = angle_to_long_axis(normal)
        n_phases = max(round(len(s.frames) / max(len(slice_positions(s.frames, normal)), 1))
                       for s in group)
        if len(group) > 1 and n_phases == 1 and n_pos > 1:
            n_phases = len(group)  # one series per phase
        cand = Candidate(group, n_pos, n_phases, angle)
        if angle > SAX_MAX_ANGLE_DEG:
            kind = "long_axis" if n_pos == 1 else "other"
            what = ("single-slice cine" if n_pos == 1 else f"cine stack of {n_pos} slices")
            for s in group:
                decisions.append(Decision(s, kind, False, (
                    f"{what} '{s.description}' with its plane normal {angle:.0f} degrees from the "
                    f"LV long axis (> {SAX_MAX_ANGLE_DEG:.0f}): "
                    + ("a long-axis view" if n_pos == 1 else "not short-axis"))))
        elif n_pos < 2:
            for s in group:
                decisions.append(Decision(s, "other", False, (
                    f"a single short-axis slice cine '{s.description}': not a stack")))
        else:
            candidates.append(cand)
    if not candidates:
        return None, decisions
    ranked = sorted(candidates, key=lambda c: (c.n_positions, c.n_phases,
                                               max(s.series_number for s in c.series)),
                    reverse=True)
    best = ranked[0]
    for s in best.series:
        decisions.append(Decision(s, "sax_cine", True, (
            f"short-axis cine: {best.n_positions} slices x {best.n_phases} phases, normal "
            f"{best.angle_deg:.0f} degrees from the LV long axis")))
    for other in ranked[1:]:
        why = ("more slices" if best.n_positions > other.n_positions else
               "more phases" if best.n_phases > other.n_phases else "the later series number")
        for s in other.series:
            decisions.append(Decision(s, "sax_cine", False, (
                f"another short-axis cine of this patient ({other.n_positions} slices x "
                f"{other.n_phases} phases); used {best.label} instead: it has {why}")))
    return best, decisions


def _phase_groups(one_phase: list[Series]) -> list[list[Series]]:
    """Stacks with one image per position (one series per cardiac phase, as some scanners
    export a cine) grouped when they share study, frame of reference, plane and positions."""
    groups: list[list[Series]] = []
    for s in one_phase:
        normal = normal_of(s.frames[0].orientation)
        positions = slice_positions(s.frames, normal)
        for g in groups:
            ref = g[0]
            if (ref.study_uid, ref.frame_of_reference) != (s.study_uid, s.frame_of_reference):
                continue
            ref_normal = normal_of(ref.frames[0].orientation)
            ref_positions = slice_positions(ref.frames, ref_normal)
            if (abs(float(ref_normal @ normal)) > _PARALLEL_COS
                    and len(ref_positions) == len(positions)
                    and np.allclose(ref_positions, positions, atol=_POSITION_TOLERANCE_MM)):
                g.append(s)
                break
        else:
            groups.append([s])
    return groups


def _stack_groups(cines: list[Series]) -> list[list[Series]]:
    """Multi-position series alone; single-position series of one study and frame of reference
    grouped when their planes are parallel (one series per slice)."""
    groups: list[list[Series]] = []
    singles: dict[tuple[str, str], list[list[Series]]] = defaultdict(list)
    for s in cines:
        normal = normal_of(s.frames[0].orientation)
        if len(slice_positions(s.frames, normal)) > 1:
            groups.append([s])
            continue
        bucket = singles[(s.study_uid, s.frame_of_reference)]
        here = float(np.asarray(s.frames[0].position) @ normal)
        for g in bucket:
            parallel = abs(float(normal_of(g[0].frames[0].orientation) @ normal)) > _PARALLEL_COS
            # A position already in the group means a repeated acquisition: another stack.
            taken = any(abs(float(np.asarray(o.frames[0].position) @ normal) - here)
                        <= _POSITION_TOLERANCE_MM for o in g)
            if parallel and not taken:
                g.append(s)
                break
        else:
            bucket.append([s])
    for bucket in singles.values():
        groups.extend(bucket)
    return groups
