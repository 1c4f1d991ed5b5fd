"""A tiny document model rendered both as Markdown and as one self-contained HTML file.

The report is a list of blocks (:class:`Heading`, :class:`Para`, :class:`Table`,
:class:`Figure`, :class:`Gallery`). The HTML embeds every image as a ``data:image/png;base64``
URI and its CSS inline, so ``report.html`` opens anywhere, offline, and can be mailed as one
file; it loads nothing from the network. The Markdown references the figures as PNG files
written beside it (``figures/``), since Markdown viewers handle large data URIs badly.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TCell:
    """One table cell: text, optionally bold (the best of its row) and a second, smaller line."""

    text: str
    bold: bool = False
    sub: str = ""


@dataclass(frozen=True)
class Heading:
    """Section heading; ``anchor`` becomes the HTML id (table of contents links)."""

    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    """A paragraph. ``**bold**`` and ``[text](url)`` are the only markup understood."""

    text: str
    css: str = ""


@dataclass(frozen=True)
class Table:
    """A table with a caption, a header row, body rows and notes under it."""

    caption: str
    header: list[str]
    rows: list[list[TCell]]
    notes: list[str] = field(default_factory=list)
    css: str = ""


@dataclass(frozen=True)
class Figure:
    """One PNG figure; ``name`` is its file name under ``figures/`` for the Markdown."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Gallery:
    """A grid of small PNGs with captions (saliency overlays, QC images)."""

    title: str
    items: list[tuple[str, bytes, str]]  # (file name, png, caption)


@dataclass(frozen=True)
class Code:
    """Preformatted text (the saved configuration), collapsed under ``summary`` in HTML."""

    text: str
    summary: str = "show"


Block = Heading | Para | Table | Figure | Gallery | Code

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d232b;
     background:#fafbfc;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:24px 32px 64px;background:#fff;
     box-shadow:0 0 8px rgba(0,0,0,.06)}
h1{font-size:1.7em;margin:.2em 0 .3em;border-bottom:3px solid #2c5d8f;padding-bottom:.2em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #d8dee4;padding-bottom:.15em;
   color:#2c5d8f}
h3{font-size:1.08em;margin-top:1.3em}
p{margin:.45em 0}
table{border-collapse:collapse;margin:.6em 0 .2em;font-size:.9em}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0;color:#333}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:center;vertical-align:top}
th{background:#eef2f6}
td:first-child,th:first-child{text-align:left}
td.best{background:#e6f4ea}
td.num{white-space:nowrap}
code{font-size:.9em;background:#f3f6f9;padding:0 3px;border-radius:3px}
td .sub{display:block;font-size:.8em;color:#57606a}
.notes{font-size:.82em;color:#57606a;margin:.1em 0 1em}
figure{margin:.8em 0 1.2em}
figure img{max-width:100%;border:1px solid #e1e4e8}
figcaption{font-size:.85em;color:#57606a;margin-top:.2em}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:.4em 0 1em}
.gallery figure{margin:0;width:340px}
.gallery img{width:340px;height:auto}
nav.toc{font-size:.9em;background:#f3f6f9;padding:8px 14px;border-radius:6px;margin:1em 0}
nav.toc a{margin-right:14px;white-space:nowrap}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px}
.small{font-size:.85em;color:#57606a}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:.8em}
summary{cursor:pointer;color:#2c5d8f}
"""

_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
#: A table cell that starts with a number (an estimate, a count): kept on one line in HTML so
#: that ``0.853 (0.801–0.902)`` does not break inside its confidence interval.
_NUMERIC = re.compile(r"^[-−]?\d")


def _inline_html(text: str) -> str:
    out = html.escape(text)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = _CODE.sub(r"<code>\1</code>", out)
    # Links are citations (doi.org, arxiv.org): <a href> is not a resource load, so the page
    # stays self-contained.
    return _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(title: str, blocks: list[Block]) -> str:
    """The whole report as one HTML page (inline CSS, images as data URIs)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"]
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2 and b.anchor]
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
            parts.append(f"<h{block.level}{anchor}>{html.escape(block.text)}</h{block.level}>")
            if block.level == 1 and toc:
                # Joined by spaces: nowrap links need a break opportunity between them, or the
                # bar overflows the page (a horizontal scrollbar at 1400 px).
                parts.append('<nav class="toc">' + " ".join(
                    f'<a href="#{html.escape(h.anchor)}">{html.escape(h.text)}</a>' for h in toc)
                    + "</nav>")
        elif isinstance(block, Para):
            css = f' class="{block.css}"' if block.css else ""
            parts.append(f"<p{css}>{_inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_table_html(block))
        elif isinstance(block, Code):
            # Collapsed: the configuration is for the record, not for reading first.
            parts.append(f"<details><summary>{html.escape(block.summary)}</summary>"
                         f"<pre>{html.escape(block.text)}</pre></details>")
        elif isinstance(block, Figure):
            parts.append(f'<figure><img src="{data_uri(block.png)}" alt="{html.escape(block.caption)}">'
                         f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>")
        elif isinstance(block, Gallery):
            parts.append(f"<h3>{html.escape(block.title)}</h3>" if block.title else "")
            parts.append('<div class="gallery">' + "".join(
                f'<figure><img src="{data_uri(png)}" alt="{html.escape(cap)}">'
                f"<figcaption>{_inline_html(cap)}</figcaption></figure>"
                for _, png, cap in block.items) + "</div>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _table_html(t: Table) -> str:
    css = f' class="{t.css}"' if t.css else ""
    rows = [f"<table{css}><caption>{_inline_html(t.caption)}</caption>",
            "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.header) + "</tr></thead>",
            "<tbody>"]
    for row in t.rows:
        cells = []
        for c in row:
            text = _inline_html(c.text)
            if c.bold:
                text = f"<strong>{text}</strong>"
            sub = f'<span class="sub">{_inline_html(c.sub)}</span>' if c.sub else ""
            classes = " ".join(k for k, on in (("best", c.bold), ("num", bool(_NUMERIC.match(c.text))))
                               if on)
            td = f'<td class="{classes}">' if classes else "<td>"
            cells.append(f"{td}{text}{sub}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</tbody></table>")
    if t.notes:
        rows.append('<div class="notes">' + "<br>".join(_inline_html(n) for n in t.notes) + "</div>")
    return "\n".join(rows)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list[Block], figure_dir: str = "figures") -> str:
    """The report as Markdown; figures are referenced as ``figure_dir/NAME.png``."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            if block.level == 1:
                continue  # the title is already the first line
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines += [f"**{block.caption}**", "",
                      "| " + " | ".join(_md_escape(h) for h in block.header) + " |",
                      "|" + "|".join("---" for _ in block.header) + "|"]
            for row in block.rows:
                cells = []
                for c in row:
                    text = _md_escape(c.text) + (f" ({_md_escape(c.sub)})" if c.sub else "")
                    cells.append(f"**{text}**" if c.bold else text)
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            for note in block.notes:
                lines += [f"_{note}_  "]
            lines.append("")
        elif isinstance(block, Code):
            lines += ["```", block.text.rstrip(), "```", ""]
        elif isinstance(block, Figure):
            lines += [f"![{_md_escape(block.caption)}]({figure_dir}/{block.name})", "",
                      f"_{block.caption}_", ""]
        elif isinstance(block, Gallery):
            if block.title:
                lines += [f"### {block.title}", ""]
            lines += [" ".join(f"![{_md_escape(cap)}]({figure_dir}/{name})"
                               for name, _, cap in block.items), ""]
            lines += ["; ".join(_md_escape(cap) for _, _, cap in block.items), ""]
    return "\n".join(lines).rstrip() + "\n"


def figure_files(blocks: list[Block]) -> dict[str, bytes]:
    """File name -> PNG of every figure and gallery image (written under ``figures/``)."""
    out: dict[str, bytes] = {}
    for b in blocks:
        if isinstance(b, Figure):
            out[b.name] = b.png
        elif isinstance(b, Gallery):
            out.update({name: png for name, png, _ in b.items})
    return out
