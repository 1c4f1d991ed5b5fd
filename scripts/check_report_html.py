#!/usr/bin/env python3
"""Check a study's ``report.html`` in headless Chromium; optionally save a screenshot.

Usage::

    scripts/check_report_html.py OUT/report.html [--screenshot report.png] [--chromium PATH]

Checks, each listed on failure (exit status 1):

* static: every ``<img>`` is an embedded ``data:image/png;base64`` URI that decodes to a PNG
  with a positive size; nothing is loaded from the network or the disk (no external ``src``,
  no ``<link>``/``<script src>``, no CSS ``url(...)``); Tables 1-3 are present;
* in the browser (``chromium --headless --dump-dom`` of a temporary copy with a small probe
  script added): the page renders, every image decoded (``naturalWidth > 0``), and the counts
  of tables and images in the rendered DOM match the file's;
* ``--screenshot``: ``chromium --headless --screenshot --window-size=1400,4000`` writes a PNG
  that is not blank.

``--no-browser`` runs the static checks only (machines without Chromium). The last line of
output is one JSON object with the counts and the problems.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REQUIRED_CAPTIONS = ("Table 1.", "Table 2.", "Table 3.")
# Citations may link out: <a href> loads nothing when the page is opened.
ALLOWED_HREF = re.compile(r"^(#|https?://(doi\.org|arxiv\.org)/)")
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var probe = document.createElement('div');
  probe.id = 'cardioclr-probe';
  probe.setAttribute('data-images', String(imgs.length));
  probe.setAttribute('data-broken', String(broken.length));
  probe.setAttribute('data-tables', String(document.querySelectorAll('table').length));
  probe.setAttribute('data-height', String(document.body.scrollHeight));
  document.body.appendChild(probe);
});
</script>"""


class _Scan(html.parser.HTMLParser):
    """Collects images, resource references and table captions of the report."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables = 0
        self.captions: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag in ("script", "iframe", "embed", "source", "video", "audio") and a.get("src"):
            self.external.append(f"<{tag} src={a['src'][:60]}>")
        elif tag == "link":
            self.external.append(f"<link href={a.get('href', '')[:60]}>")
        elif tag == "a" and a.get("href") and not ALLOWED_HREF.match(a["href"]):
            self.external.append(f"<a href={a['href'][:60]}>")
        elif tag == "table":
            self.tables += 1
        elif tag == "caption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.captions[-1] += data


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def static_checks(text: str) -> tuple[dict, list[str]]:
    """Counts and problems of the HTML source (no browser)."""
    scan = _Scan()
    scan.feed(text)
    problems: list[str] = []
    for i, src in enumerate(scan.images):
        if not src.startswith("data:image/png;base64,"):
            problems.append(f"image {i + 1} is not an embedded PNG data URI: {src[:60]!r}")
            continue
        try:
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"image {i + 1}: invalid base64")
            continue
        size = png_size(data)
        if size is None or min(size) <= 0:
            problems.append(f"image {i + 1}: not a valid PNG")
    problems += [f"external resource {e}" for e in scan.external]
    if re.search(r"url\(\s*['\"]?(?!data:)", text):
        problems.append("CSS url(...) reference to an external resource")
    for cap in REQUIRED_CAPTIONS:
        if not any(c.strip().startswith(cap) for c in scan.captions) and f"{cap[:-1]}." not in text:
            problems.append(f"{cap[:-1]} is missing")
    if not scan.images:
        problems.append("no image in the report")
    return {"images": len(scan.images), "tables": scan.tables}, problems


def find_chromium(explicit: str | None) -> str | None:
    """The Chromium binary: ``explicit``, /usr/bin/chromium, or one on PATH."""
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) if not name.startswith("/") else (name if Path(name).exists() else None)
        if found:
            return found
    return None


def _chromium_cmd(chromium: str, *extra: str) -> list[str]:
    cmd = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", "--disable-extensions", "--allow-file-access-from-files",
           "--virtual-time-budget=10000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return cmd + list(extra)


def browser_checks(chromium: str, report: Path, expected: dict, timeout: int) -> tuple[dict, list[str]]:
    """Render a probed copy of the report and read the probe's counts from the dumped DOM."""
    problems: list[str] = []
    text = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / "report_probe.html"
        probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        cmd = _chromium_cmd(chromium, f"--user-data-dir={tmp}/profile", "--dump-dom",
                            probed.resolve().as_uri())
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {}, [f"chromium did not finish within {timeout} s"]
    dom = run.stdout
    m = re.search(r'id="cardioclr-probe"([^>]*)>', dom)
    if run.returncode != 0 or not m:
        return {}, [f"chromium rendered no page (exit {run.returncode}): {run.stderr.strip()[-300:]}"]
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', m.group(1)))
    counts = {k: int(v) for k, v in attrs.items()}
    if counts.get("broken", 0):
        problems.append(f"{counts['broken']} image(s) did not render in the browser")
    if counts.get("images") != expected["images"]:
        problems.append(f"browser shows {counts.get('images')} images, the file has {expected['images']}")
    if counts.get("tables") != expected["tables"]:
        problems.append(f"browser shows {counts.get('tables')} tables, the file has {expected['tables']}")
    if counts.get("images", 0) and counts.get("images") == counts.get("broken"):
        problems.append("no image rendered")
    return counts, problems


def screenshot(chromium: str, report: Path, png: Path, timeout: int) -> list[str]:
    """Write a 1400 x 4000 screenshot; problems if it is missing or blank."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = _chromium_cmd(chromium, f"--user-data-dir={tmp}/profile", "--window-size=1400,4000",
                            f"--screenshot={png.resolve()}", report.resolve().as_uri())
        try:
            subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [f"screenshot: chromium did not finish within {timeout} s"]
    if not png.is_file() or png_size(png.read_bytes()[:32]) is None:
        return [f"screenshot {png} was not written"]
    try:
        from PIL import Image

        with Image.open(png) as im:
            lo, hi = im.convert("L").getextrema()
        if hi - lo < 10:
            return [f"screenshot {png} is blank"]
    except ImportError:  # Pillow absent: existence and PNG header were checked
        pass
    return []


def main(argv: list[str] | None = None) -> int:
    """Run the checks; exit status 0 when the report is fine."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="report.html")
    ap.add_argument("--screenshot", type=Path, default=None, help="write a PNG screenshot here")
    ap.add_argument("--chromium", default=None, help="Chromium binary (default: /usr/bin/chromium)")
    ap.add_argument("--no-browser", action="store_true", help="static checks only")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per Chromium run")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report}: not found", file=sys.stderr)
        return 2
    counts, problems = static_checks(args.report.read_text(encoding="utf-8"))
    result: dict = {"report": str(args.report), "static": counts, "size_bytes": args.report.stat().st_size}
    if not args.no_browser:
        chromium = find_chromium(args.chromium)
        if chromium is None:
            problems.append("Chromium not found (install it, pass --chromium, or use --no-browser)")
        else:
            browser, p = browser_checks(chromium, args.report, counts, args.timeout)
            result["browser"] = browser
            problems += p
            if args.screenshot:
                problems += screenshot(chromium, args.report, args.screenshot, args.timeout)
                result["screenshot"] = str(args.screenshot)
    result["problems"] = problems
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print(json.dumps(result))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
