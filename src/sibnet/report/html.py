"""One self-contained HTML report: inline CSS, images embedded as base64 PNG, no external links.

A report is a list of :class:`Section`; each section holds blocks rendered in order:

``str``                 a paragraph (HTML-escaped; blank lines start new paragraphs)
:class:`Table`          column names and rows (numbers formatted by :func:`fmt`)
:class:`Figure`         PNG bytes with a caption
``matplotlib Figure``   rendered to PNG (Agg, 110 dpi) and closed
``list`` / ``tuple``    a bulleted list of strings

Everything the user supplies is escaped; nothing in the file refers to another file or address.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import SibnetError

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #446;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;color:#334}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #bbc;padding:.25em .6em;text-align:right}
th{background:#eef}
td:first-child,th:first-child{text-align:left}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
.toc{font-size:.92em}
"""


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    digits: int = 3


@dataclass
class Figure:
    png: bytes
    caption: str = ""
    alt: str = ""


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, ``None``/nan as an en dash, inf as ∞."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}f}"
    return str(value)


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure (which is closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _paragraphs(text: str) -> str:
    parts = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>\n" for p in parts)


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        if len(row) != len(t.columns):
            raise SibnetError(f"report table {t.caption!r}: a row has {len(row)} cells for {len(t.columns)} columns")
        body.append("<tr>" + "".join(f"<td>{html.escape(fmt(v, t.digits))}</td>" for v in row) + "</tr>")
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"


def _figure(f: Figure) -> str:
    if not f.png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise SibnetError(f"report figure {f.caption!r}: not PNG data")
    data = base64.b64encode(f.png).decode("ascii")
    cap = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
    alt = html.escape(f.alt or f.caption or "figure", quote=True)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>\n'


def _block(block: Any) -> str:
    if isinstance(block, str):
        return _paragraphs(block)
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    if isinstance(block, (list, tuple)):
        return "<ul>" + "".join(f"<li>{html.escape(str(b))}</li>" for b in block) + "</ul>\n"
    if hasattr(block, "savefig"):  # a matplotlib figure
        return _figure(Figure(figure_png(block)))
    raise SibnetError(f"report: cannot render a block of type {type(block).__name__}")


def render_html(sections: Sequence[Section], title: str = "sibnet report") -> str:
    """The report as one HTML string (see the module doc)."""
    out = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    if len(sections) > 2:
        out.append("<p class=\"toc\">" + " · ".join(
            f"<a href=\"#s{i}\">{html.escape(s.title)}</a>" for i, s in enumerate(sections, 1)) + "</p>")
    for i, s in enumerate(sections, 1):
        out.append(f"<h2 id=\"s{i}\">{html.escape(s.title)}</h2>")
        out.extend(_block(b) for b in s.blocks)
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(path: str | Path, sections: Sequence[Section], title: str = "sibnet report") -> Path:
    """Write the self-contained HTML report to ``path`` (folders created); returns the path."""
    path = Path(path)
    for s in sections:
        if not isinstance(s, Section):
            raise SibnetError(f"write_report: sections must be Section objects, got {type(s).__name__}")
    text = render_html(sections, title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SibnetError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
    return path
