"""The import layering of ARCHITECTURE.md, checked with the import-linter contracts of pyproject.toml.

``lint-imports`` (``make lint``) runs the same contracts; this test makes the plain test suite
catch a regression too. Every import counts, including imports inside functions. The contracts
are also run on a copy of the package with a deliberately added upward import, a deliberately
added cycle and a module placed in no layer, to show they fail when they should.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# The `lint-imports` command itself, on the pyproject.toml of the current directory, for the
# cardioclr found first on PYTHONPATH (a subprocess: the test process already imported the real one).
_LINT = ("import sys; from importlinter.cli import lint_imports_command; "
         "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()")


def _lint(repo: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", _LINT], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_package_keeps_its_import_contracts() -> None:
    result = _lint(REPO, SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(("module", "bad_code", "expected"), [
    # An upward import hidden inside a function: the IO layer reaching into the study.
    ("io/volume.py", "\n\ndef _upward() -> None:\n    from cardioclr.study import cli  # noqa: F401\n",
     "cardioclr.io.volume -> cardioclr.study.cli"),
    # A cycle between two sibling modules of one package (data.pairs already imports data.masks).
    ("data/masks.py", "\n\ndef _cycle() -> None:\n    from cardioclr.data import pairs  # noqa: F401\n",
     "No cycles are allowed in cardioclr.data"),
    # A new top-level module that nobody placed in a layer.
    ("unplaced.py", '"""A module without a layer."""\n', "- cardioclr.unplaced"),
])
def test_the_contracts_catch_a_bad_import(tmp_path: Path, module: str, bad_code: str, expected: str) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(SRC / "cardioclr", tmp_path / "src" / "cardioclr",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "src" / "cardioclr" / module
    target.write_text((target.read_text() if target.exists() else "") + bad_code)
    result = _lint(tmp_path, tmp_path / "src")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert expected in result.stdout, result.stdout
