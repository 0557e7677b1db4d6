"""The HTML pieces medgate's self-contained pages share: style sheet, inline SVG charts, tables, numbers.

Pages built from these load nothing from the network: the style is inline and the charts are SVG
elements inside the page. matplotlib is imported only where a figure exists (the caller's).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.pass{color:#17692b;font-weight:600}
.fail{color:#b00020;font-weight:600}.skipped,.muted{color:#777}.verdict{font-size:1.3rem;padding:.5rem 1rem;display:inline-block;border-radius:4px}
.promote{background:#e3f4e6;color:#17692b}.refuse{background:#fbe4e7;color:#b00020}.charts{display:flex;flex-wrap:wrap;gap:1rem}
.charts figure{margin:0}figcaption{font-size:.85rem;color:#555;max-width:480px}
"""


def escape(value: Any) -> str:
    """`value` as text safe inside HTML content and attribute values."""
    return html.escape(str(value))


def fmt(value: Any, digits: int = 4) -> str:
    """A value as a table cell: floats to `digits` decimals, "-" for missing or NaN, anything else escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(value)


def svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (fixed hash salt: the same data gives the same bytes)."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": "medgate", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A table of cells that are already HTML (escape text before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(svg_element: str, caption: str) -> str:
    """A chart with its caption (HTML)."""
    return f"<figure>{svg_element}<figcaption>{caption}</figcaption></figure>"


def png_img(img: Image) -> str:
    """A Pillow image as an <img> element holding its PNG as a data URI."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
