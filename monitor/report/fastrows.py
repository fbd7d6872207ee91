"""Big tables written as plain sheet XML, spliced into the workbook openpyxl saved.

openpyxl builds a Python cell object per value, which is ~10 s per 100k detection rows. For big
tables ``sheet.write_table`` lets openpyxl write the header and the first data row (so the sheet's
layout, styles, validation, conditional formats and element order are openpyxl's own) and hands the
other rows here as a ``Pending``. After ``wb.save``, ``splice`` rewrites that one sheet part of the
zip with those rows formatted directly as XML, with the very style ids openpyxl registered for each
column (``column_styles``). Links are ``HYPERLINK`` formulas (``safe.Formula``) built from a base-folder
cell, so there is no hyperlink part to rewrite and no limit on the number of links.
"""

from __future__ import annotations

import math
import numbers
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel

from monitor.fileio import atomic_path
from monitor.report.safe import Formula, clean_text, needs_quote_prefix

_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_HYPERLINK_TYPE = _REL_NS + "/hyperlink"
_CHUNK_ROWS = 2000


@dataclass
class Pending:
    """Rows still to write into one sheet: ``rows[0]`` goes to Excel row ``first_row``."""

    ws: Any  # the write-only worksheet (its zip member is known once the workbook is saved)
    cols: Sequence[Any]  # sheet.Col
    styles: list[tuple[int, int]]  # per column: (style id, style id with quotePrefix)
    rows: Sequence[Sequence[Any]]
    first_row: int
    heights: dict[int, float] = field(default_factory=dict)  # Excel row -> height in points

    @property
    def sheet_path(self) -> str:
        """Zip member of the sheet, e.g. ``xl/worksheets/sheet2.xml`` (after ``wb.save``)."""
        return self.ws.path.lstrip("/")


def column_styles(ws: Any, templates: Sequence[Any]) -> list[tuple[int, int]]:
    """Style ids (registered in ``ws``'s workbook) of each column's template cell, plain and quote-prefixed."""
    from copy import copy

    from openpyxl.cell import WriteOnlyCell

    def style_id(tmpl: Any, quoted: bool) -> int:
        # a fresh cell per id: openpyxl registers the cell's style array by reference, so changing a cell
        # after reading its style_id would change the style registered under that id too
        cell = WriteOnlyCell(ws)
        if tmpl is not None:
            cell.number_format = tmpl.number_format
            cell.font, cell.alignment = copy(tmpl.font), copy(tmpl.alignment)
        cell.quotePrefix = quoted
        return cell.style_id

    return [(style_id(t, False), style_id(t, True)) for t in templates]


def _escape(s: str) -> str:
    if "&" in s:
        s = s.replace("&", "&amp;")
    if "<" in s:
        s = s.replace("<", "&lt;")
    if ">" in s:
        s = s.replace(">", "&gt;")
    return s


def cell_xml(ref: str, v: Any, styles: tuple[int, int]) -> str:
    """One ``<c>`` element ('' for a missing value): text inline, numbers and dates as numbers, a ``Formula``
    as a formula."""
    s, sq = styles
    cls = v.__class__
    if cls is Formula:  # monitor's own link formulas, with the text they show as the cached value
        sa = f' s="{s}"' if s else ""
        return f'<c r="{ref}"{sa} t="str"><f>{_escape(v.text)}</f><v>{_escape(clean_text(v.cached))}</v></c>'
    if cls is str:
        if not v:
            return ""
        v = clean_text(v)
        quoted = needs_quote_prefix(v)
        st = sq if quoted else s
        space = ' xml:space="preserve"' if v[:1].isspace() or v[-1:].isspace() else ""
        return f'<c r="{ref}"{f" s={chr(34)}{st}{chr(34)}" if st else ""} t="inlineStr"><is><t{space}>{_escape(v)}</t></is></c>'
    sa = f' s="{s}"' if s else ""
    if cls is float:
        if not math.isfinite(v):
            return ""
        return f'<c r="{ref}"{sa} t="n"><v>{v!r}</v></c>'
    if cls is int:
        return f'<c r="{ref}"{sa} t="n"><v>{v}</v></c>'
    if cls is bool:
        return f'<c r="{ref}"{sa} t="b"><v>{int(v)}</v></c>'
    if v is None:
        return ""
    if isinstance(v, (datetime, date, time, timedelta)):
        if isinstance(v, (datetime, time)) and v.tzinfo is not None:
            raise TypeError("Excel has no time zones: write local datetimes without tzinfo")
        return f'<c r="{ref}"{sa} t="n"><v>{to_excel(v)!r}</v></c>'
    if isinstance(v, (bool, np.bool_)):
        return f'<c r="{ref}"{sa} t="b"><v>{int(v)}</v></c>'
    if isinstance(v, numbers.Integral):  # numpy integers
        return cell_xml(ref, int(v), styles)
    if isinstance(v, numbers.Real):  # numpy floats
        return cell_xml(ref, float(v), styles)
    try:
        if v != v:  # NaN-like (pandas NA, NaT)
            return ""
    except TypeError:  # pd.NA refuses bool()
        return ""
    return cell_xml(ref, str(v), styles)


def rows_xml(p: Pending) -> Iterator[str]:
    """``<row>`` elements of ``p.rows``, in chunks of a few thousand rows."""
    letters = [get_column_letter(j + 1) for j in range(len(p.cols))]
    text: dict[tuple[int, str], str] = {}
    buf: list[str] = []
    for i, row in enumerate(p.rows):
        r = p.first_row + i
        ht = p.heights.get(r)
        head = f'<row r="{r}" ht="{ht}" customHeight="1">' if ht else f'<row r="{r}">'
        cells = []
        for j, v in enumerate(row):
            if v.__class__ is str and len(v) < 256:  # short text repeats (files, labels, devices): format once
                key = (j, v)
                c = text.get(key)
                if c is None:
                    c = text[key] = cell_xml("\0", v, p.styles[j])
                if c:
                    cells.append(c.replace("\0", f"{letters[j]}{r}", 1))
                continue
            c = cell_xml(f"{letters[j]}{r}", v, p.styles[j])
            if c:
                cells.append(c)
        buf.append(head + "".join(cells) + "</row>")
        if len(buf) >= _CHUNK_ROWS:
            yield "".join(buf)
            buf = []
    if buf:
        yield "".join(buf)


def splice(path: Path, pending: Sequence[Pending]) -> None:
    """Rewrite ``path`` (an xlsx openpyxl saved) with each ``Pending``'s rows appended to its sheet."""
    if not pending:
        return
    path = Path(path)
    by_sheet = {p.sheet_path: p for p in pending}
    with atomic_path(path, fsync=False) as tmp, zipfile.ZipFile(path) as zin, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=4) as zout:
        for info in zin.infolist():
            name = info.filename
            if name in by_sheet:
                _write_sheet(zin.read(name).decode("utf-8"), by_sheet[name], zout, info)
            else:
                zout.writestr(info, zin.read(name))


def _write_sheet(xml: str, p: Pending, zout: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    end = xml.index("</sheetData>")
    head, tail = xml[:end], xml[end:]
    zi = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    zi.compress_type = zipfile.ZIP_DEFLATED
    with zout.open(zi, "w", force_zip64=True) as fh:
        fh.write(head.encode("utf-8"))
        for chunk in rows_xml(p):
            fh.write(chunk.encode("utf-8", "replace"))
        fh.write(tail.encode("utf-8"))
