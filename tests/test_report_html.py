"""scripts/check_report_html.py: static checks always, headless Chromium when installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cardioclr.study.report import build_report
from test_report_fakes import write_fake_study

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report_html.py"
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_fake_study(tmp_path_factory.mktemp("study"))
    return build_report(out)["html"]


def _run(*args: str) -> tuple[int, dict, str]:
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_static_checks_pass(report: Path) -> None:
    code, result, err = _run(str(report), "--no-browser")
    assert code == 0, err
    assert result["static"]["images"] >= 10 and result["static"]["tables"] >= 5


def test_static_checks_catch_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><table><caption>Table 1. x</caption></table>'
                   '<img src="data:image/png;base64,AAAA"><img src="http://example.com/x.png">'
                   '<link rel="stylesheet" href="https://cdn.example.com/a.css"></body></html>')
    code, result, err = _run(str(bad), "--no-browser")
    assert code == 1
    problems = " ".join(result["problems"])
    assert "not a valid PNG" in problems and "not an embedded PNG" in problems
    assert "external resource <link" in problems and "Table 2 is missing" in problems


@needs_chromium
@pytest.mark.slow
def test_chromium_renders_report(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    code, result, err = _run(str(report), "--screenshot", str(shot))
    assert code == 0, err
    assert result["browser"]["broken"] == 0
    assert result["browser"]["images"] == result["static"]["images"]
    assert result["browser"]["tables"] == result["static"]["tables"]
    assert shot.is_file() and shot.stat().st_size > 10_000


@needs_chromium
@pytest.mark.slow
def test_chromium_detects_broken_image(tmp_path: Path, report: Path) -> None:
    text = report.read_text()
    # Corrupt the first embedded image's payload (still valid base64, no longer a PNG).
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(text[:start] + "QUJDRA==" + text[text.index('"', start):])
    code, result, _ = _run(str(broken))
    assert code == 1
    assert result["browser"]["broken"] == 1
