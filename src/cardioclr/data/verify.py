"""``cardioclr verify DATA``: every problem of every patient at once, nothing written.

In the spirit of nnU-Net's ``verify_dataset_integrity``: the dataset (ACDC layout or CSV
manifest) is discovered and each patient's files are read and checked with the very checks
``prepare`` runs (:func:`cardioclr.data.prepare.read_checked_case`), but where ``prepare``
stops a patient at its first problem, ``verify`` goes on with every file that does not depend
on the bad one, so one run lists everything to fix. Cohort-level problems (a class too small
to split) are listed too.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from cardioclr.data.boundary import patient_boundary
from cardioclr.data.cases import Case, Skipped
from cardioclr.data.discover import discover_cases
from cardioclr.errors import CardioclrError, DataError


@dataclass(frozen=True)
class Problem:
    """One problem: the patient (or ``*`` for the dataset), the file, what is wrong."""

    patient_id: str
    path: str
    problem: str

    def line(self) -> str:
        """``PID: PATH: PROBLEM``, the form printed by ``cardioclr verify``."""
        return f"{self.patient_id}: {self.path}: {self.problem}"


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_dataset`."""

    checked: list[str] = field(default_factory=list)  # patient ids whose files were read
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @property
    def bad_patients(self) -> list[str]:
        """Patients (and folders) with at least one problem, in order of first mention."""
        return list(dict.fromkeys(p.patient_id for p in self.problems if p.patient_id != "*"))


def verify_dataset(data: str | os.PathLike[str], require_label: bool = True,
                   classes: Collection[str] | None = None, test_fraction: float = 0.3,
                   n_folds: int = 5) -> VerifyReport:
    """Check ``data`` the way ``prepare`` would, listing every problem; writes nothing."""
    report = VerifyReport()
    try:
        cases, skipped = discover_cases(data, require_label=require_label, classes=classes)
    except DataError as err:
        report.problems.append(Problem("*", err.path, err.problem))
        return report
    report.problems.extend(Problem(s.patient_id, s.path, s.reason) for s in skipped)
    good: list[Case] = []
    for case in cases:
        report.checked.append(case.patient_id)
        found: list[DataError] = []
        outcome = patient_boundary(case.patient_id, case.source, functools.partial(_check, case, found))
        if isinstance(outcome, Skipped):
            found.append(DataError(outcome.path, outcome.reason))
        report.problems.extend(Problem(case.patient_id, e.path, e.problem) for e in found)
        if not found:
            good.append(case)
    report.problems.extend(_cohort_problems(data, good, require_label, test_fraction, n_folds))
    return report


def _check(case: Case, found: list[DataError]) -> None:
    from cardioclr.data.prepare import read_checked_case

    read_checked_case(case, found)


def _cohort_problems(data: str | os.PathLike[str], cases: list[Case], require_label: bool,
                     test_fraction: float, n_folds: int) -> list[Problem]:
    """Whether the patients that passed can be split the way ``prepare`` splits by default."""
    from cardioclr.data.splits import make_splits

    labels = {c.patient_id: c.label for c in cases if c.label}
    if not require_label or len(labels) < 2:
        return []
    counts = Counter(labels.values())
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's small-class warnings
            make_splits(labels, {}, "random", test_fraction, n_folds, 0)
    except CardioclrError as err:
        return [Problem("*", str(data), f"the {len(labels)} usable labelled patients "
                        f"({dict(sorted(counts.items()))}) cannot be split: {err}")]
    return []
