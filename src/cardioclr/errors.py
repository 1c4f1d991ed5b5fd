"""Errors with messages a user can act on: each names the file and the problem."""

from __future__ import annotations

import os


class CardioclrError(Exception):
    """Base class for errors reported to the user without a traceback."""


class DataError(CardioclrError):
    """A problem with one input file or patient: names the path and what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
