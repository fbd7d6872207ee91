"""Writing one table to a write-only openpyxl worksheet quickly and safely.

No per-cell styling loops: each formatted column reuses one template cell (write-only sheets
serialise a row as soon as it is appended), widths come from the header and a sample of values,
and every string goes through ``safe.text_cell``. Layout that write-only sheets emit before the
first row (widths, frozen panes, fit-to-page) is set in ``start_sheet``.
"""

from __future__ import annotations

import math
from copy import copy
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Callable, Iterable, Sequence

from monitor.report.fastrows import Pending, column_styles
from monitor.report.safe import text_cell

HEADER_FILL = "305496"
SAMPLE_ROWS = 300
HEADER_HEIGHT = 30.0  # points: two lines of header text
LINE_HEIGHT = 12.75  # points per line of 11 pt text
MAX_WIDTH = 60.0

DATETIME = "yyyy-mm-dd hh:mm:ss"
DATE = "yyyy-mm-dd"
DURATION = "[h]:mm:ss"
SCORE = "0.000"
TEMPERATURE = "0.0"


@dataclass(frozen=True)
class Col:
    """A column: header text, number format for numbers/datetimes, fixed width (None = measured)."""

    name: str
    fmt: str | None = None
    width: float | None = None
    link: bool = False  # values are ``safe.Formula`` links (HYPERLINK of a base-folder cell), shown as links
    raw: bool = False  # values are already Excel-ready (int/float/None, no NaN): written as they are
    wrap: bool = False  # long text wraps inside the column (rows get taller) instead of being cut off
    indent: bool = False  # a one-character left indent, for text right after a column of numbers


def is_missing(v: Any) -> bool:
    """None, NaN, pandas NA/NaT."""
    if v is None:
        return True
    if isinstance(v, float):
        return v != v
    if isinstance(v, (int, str, datetime, date, timedelta)):
        return False
    try:
        return bool(v != v)  # NaT
    except TypeError:  # pd.NA refuses bool()
        return True


def _display_len(v: Any, fmt: str | None) -> int:
    if hasattr(v, "cached"):  # a link Formula: as wide as the text it shows
        v = v.cached
    if isinstance(v, datetime):
        return 19 if fmt is None else len(fmt.replace("yyyy", "0000"))
    if isinstance(v, (date, timedelta)):
        return 10
    if isinstance(v, float):
        return 9 if fmt else min(12, len(f"{v:g}"))
    s = str(v)
    return max(len(line) for line in s.split("\n")) if s else 0


def widths(cols: Sequence[Col], sample: Sequence[Sequence[Any]]) -> list[float]:
    """Header length vs. the 90th percentile of a value sample, clamped to 8..60 characters."""
    out = []
    for j, col in enumerate(cols):
        if col.width is not None:
            out.append(float(col.width))
            continue
        lens = sorted(_display_len(r[j], col.fmt) for r in sample if r[j] is not None) or [0]
        p90 = lens[int(0.9 * (len(lens) - 1))] + (2 if col.link or col.indent else 0)
        head = max(len(w) for w in col.name.split()) if col.name else 0
        out.append(float(min(MAX_WIDTH, max(8, head + 3, min(len(col.name) + 3, 14), p90 + 2))))
    return out


def start_sheet(wb: Any, title: str, *, landscape: bool = True) -> Any:
    """New write-only sheet set to print landscape, one page wide, header row repeated."""
    ws = wb.create_sheet(title)
    ws.page_setup.orientation = "landscape" if landscape else "portrait"
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.page_margins.left = ws.page_margins.right = 0.4
    ws.page_margins.top = ws.page_margins.bottom = 0.5
    ws.print_options.gridLines = True
    return ws


def header_cells(ws: Any, names: Sequence[str]) -> list[Any]:
    """Bold white-on-blue, wrapped header cells."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import Cell
    from openpyxl.styles import Alignment, Font, PatternFill

    font, fill = Font(bold=True, color="FFFFFF"), PatternFill("solid", fgColor=HEADER_FILL)
    align = Alignment(vertical="center", wrap_text=True)
    out = []
    for name in names:
        v = text_cell(ws, name) if isinstance(name, str) else name
        c = v if isinstance(v, Cell) else WriteOnlyCell(ws, value=v)
        c.font, c.fill, c.alignment = font, fill, align
        out.append(c)
    return out


def title_cell(ws: Any, text: str, size: int = 12) -> Any:
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    c = WriteOnlyCell(ws, value=text)
    c.font = Font(bold=True, size=size)
    return c


def template(ws: Any, col: Col) -> Any:
    """The column's styled template cell (number format, alignment, link look), or None when unstyled."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Alignment, Font

    if col.raw or not (col.fmt or col.wrap or col.indent or col.link):
        return None
    tmpl = WriteOnlyCell(ws)
    if col.link:
        tmpl.font, tmpl.alignment = Font(color="0563C1", underline="single"), Alignment(horizontal="left", indent=1)
        return tmpl
    if col.fmt:
        tmpl.number_format = col.fmt
    if col.wrap or col.indent:
        tmpl.alignment = Alignment(wrap_text=col.wrap or None, vertical="top" if col.wrap else None,
                                   horizontal="left" if col.indent else None, indent=1 if col.indent else 0)
    return tmpl


def converters(ws: Any, cols: Sequence[Col]) -> list[Callable[[Any], Any] | None]:
    """One function per column turning a Python value into what ``ws.append`` should get.

    Formatted and link columns reuse one template cell each (``template``): a write-only sheet
    serialises a row as soon as it is appended, so the template is free again for the next row.
    ``None`` means the column's values pass through unchanged (``Col.raw``).
    """

    def plain(v: Any) -> Any:
        if v.__class__ is str:
            return text_cell(ws, v) if v else None
        return None if is_missing(v) else v

    def formatted(tmpl: Any, styled_text: bool) -> Callable[[Any], Any]:
        def conv(v: Any) -> Any:
            if v.__class__ is str:
                return text_cell(ws, v) if v else None
            if is_missing(v):
                return None
            tmpl.value = v
            return tmpl

        def conv_text(v: Any) -> Any:  # wrapped / indented text keeps the column's alignment
            if v.__class__ is not str or not v:
                return conv(v)
            c = text_cell(ws, v)
            if c.__class__ is str:
                tmpl.value = c
                return tmpl
            c.alignment = copy(tmpl.alignment)
            return c

        return conv_text if styled_text else conv

    def link(tmpl: Any) -> Callable[[Any], Any]:
        def conv(v: Any) -> Any:
            if v is None:
                return None
            tmpl.value = "=" + v.text  # monitor's own formula; untrusted text is only in its string literals
            return tmpl

        return conv

    out: list[Callable[[Any], Any] | None] = []
    for c in cols:
        tmpl = template(ws, c)
        out.append(None if c.raw else link(tmpl) if c.link else formatted(tmpl, c.wrap or c.indent)
                   if tmpl is not None else plain)
    return out


def write_table(ws: Any, cols: Sequence[Col], rows: Iterable[Sequence[Any]], *, freeze: str | None = "A2",
                autofilter: bool = True, sample: Sequence[Sequence[Any]] | None = None,
                pending: list | None = None) -> int:
    """Header + rows into a fresh write-only ``ws``; returns the number of data rows.

    Column widths come from ``sample`` (default: the first rows when ``rows`` is a list). With a
    ``pending`` list and a list of rows, openpyxl writes the header and first row and the rest is
    queued there as a ``fastrows.Pending``, spliced in as plain XML after ``wb.save`` (``fastrows``).
    """
    from openpyxl.utils import get_column_letter

    if sample is None:
        sample = rows[:SAMPLE_ROWS] if isinstance(rows, list) else []
    for j, w in enumerate(widths(cols, sample), start=1):
        ws.column_dimensions[get_column_letter(j)].width = w
    if freeze:
        ws.freeze_panes = freeze
    ws.print_title_rows = "1:1"
    ws.row_dimensions[1].height = HEADER_HEIGHT
    ws.append(header_cells(ws, [c.name for c in cols]))
    conv = converters(ws, cols)
    active = [(j, f) for j, f in enumerate(conv) if f is not None]
    wrapped = [(j, max(1.0, ws.column_dimensions[get_column_letter(j + 1)].width - 1)) for j, c in enumerate(cols)
               if c.wrap]

    def height(r: Sequence[Any]) -> float | None:
        lines = max([math.ceil(len(r[j]) / w) for j, w in wrapped if isinstance(r[j], str)] or [1])
        return min(409.0, LINE_HEIGHT * lines + 2) if lines > 1 else None

    fast = pending is not None and isinstance(rows, list) and len(rows) > 1
    n = 0
    for r in (rows[:1] if fast else rows):
        out = list(r)
        h = height(r) if wrapped else None
        if h:  # write-only rows are not re-measured by every viewer: say how tall they are
            ws.row_dimensions[n + 2].height = h
        for j, f in active:
            out[j] = f(out[j])
        ws.append(out)
        n += 1
    if fast:
        rest = rows[1:]
        heights = {}
        if wrapped:
            heights = {i + 3: h for i, r in enumerate(rest) if (h := height(r))}
        pending.append(Pending(ws=ws, cols=list(cols), styles=column_styles(ws, [template(ws, c) for c in cols]),
                               rows=rest, first_row=3, heights=heights))
        n += len(rest)
    if autofilter:
        ws.auto_filter.ref = f"A1:{get_column_letter(len(cols))}{n + 1}"
    return n
