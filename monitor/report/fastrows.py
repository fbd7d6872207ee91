"""Big tables written as plain sheet XML, spliced into the workbook openpyxl saved.

openpyxl builds a Python cell object per value, which is ~10 s per 100k detection rows. For big
tables ``sheet.write_table`` lets openpyxl write the header and the first data row (so the sheet's
layout, styles, validation, conditional formats and element order are openpyxl's own) and hands the
other rows here as a ``Pending``. After ``wb.save``, ``splice`` rewrites that one sheet part of the
zip with those rows formatted directly as XML, with the very style ids openpyxl registered for each
column (``column_styles``). Hyperlinks of consecutive rows with one target become one range
hyperlink, so a sheet of 100k detections of a few hundred files stays far under Excel's limit of
65,530 hyperlinks per sheet.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel

from monitor.report.safe import clean_text, needs_quote_prefix

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
    links: list[tuple[int, int, str]] = field(default_factory=list)  # (row, column, uri) openpyxl already wrote

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
    """One ``<c>`` element ('' for a missing value): text inline, numbers and dates as numbers."""
    s, sq = styles
    cls = v.__class__
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
    link_cols = [j for j, c in enumerate(p.cols) if c.link]
    text: dict[tuple[int, str], str] = {}
    buf: list[str] = []
    for i, row in enumerate(p.rows):
        r = p.first_row + i
        ht = p.heights.get(r)
        head = f'<row r="{r}" ht="{ht}" customHeight="1">' if ht else f'<row r="{r}">'
        cells = []
        for j, v in enumerate(row):
            if j in link_cols and v is not None:
                v = v[0]
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


def link_ranges(p: Pending) -> list[tuple[str, str]]:
    """(cell range, uri): one per run of consecutive rows linking to the same target, per link column."""
    out = []
    by_col: dict[int, list[tuple[int, str]]] = {}
    for r, j, uri in p.links:
        by_col.setdefault(j, []).append((r, uri))
    for j, c in enumerate(p.cols):
        if not c.link:
            continue
        cells = by_col.get(j, []) + [(p.first_row + i, row[j][1]) for i, row in enumerate(p.rows)
                                     if row[j] is not None]
        cells.sort()
        letter = get_column_letter(j + 1)
        start = prev = None
        cur = None
        for r, uri in cells + [(None, None)]:
            if cur is not None and (uri != cur or r != prev + 1):
                out.append((f"{letter}{start}" if start == prev else f"{letter}{start}:{letter}{prev}", cur))
                cur = None
            if r is None:
                break
            if cur is None:
                start, cur = r, uri
            prev = r
    return out


_HYPERLINKS = re.compile(r"<hyperlinks>.*?</hyperlinks>|<hyperlinks\s*/>", re.S)


def _sheet_rels_path(sheet_path: str) -> str:
    d, name = sheet_path.rsplit("/", 1)
    return f"{d}/_rels/{name}.rels"


def _new_rels(old: bytes | None, links: list[tuple[str, str]]) -> tuple[bytes, list[str]]:
    """The sheet's relationships: its non-hyperlink ones kept, one hyperlink relationship per range."""
    from xml.etree import ElementTree as ET

    ns = "http://schemas.openxmlformats.org/package/2006/relationships"
    kept = []
    if old:
        for rel in ET.fromstring(old):
            if rel.get("Type") != _HYPERLINK_TYPE:
                kept.append(rel)
    used = {rel.get("Id") for rel in kept}
    parts = [f'<Relationships xmlns="{ns}">']
    for rel in kept:
        attrs = "".join(f" {k}={quoteattr(v)}" for k, v in rel.attrib.items())
        parts.append(f"<Relationship{attrs}/>")
    ids = []
    n = 0
    for _, uri in links:
        n += 1
        while f"rIdL{n}" in used:
            n += 1
        rid = f"rIdL{n}"
        ids.append(rid)
        parts.append(f'<Relationship Id="{rid}" Type="{_HYPERLINK_TYPE}" Target={quoteattr(uri)} TargetMode="External"/>')
    parts.append("</Relationships>")
    return "".join(parts).encode("utf-8"), ids


def splice(path: Path, pending: Sequence[Pending]) -> None:
    """Rewrite ``path`` (an xlsx openpyxl saved) with each ``Pending``'s rows appended to its sheet."""
    if not pending:
        return
    path = Path(path)
    by_sheet = {p.sheet_path: p for p in pending}
    tmp = path.with_name(path.name + ".splice")
    try:
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=4) as zout:
            names = zin.namelist()
            links = {s: link_ranges(p) for s, p in by_sheet.items()}
            rels: dict[str, bytes] = {}
            ids: dict[str, list[str]] = {}
            for s in by_sheet:  # the sheet needs its relationship ids
                rp = _sheet_rels_path(s)
                if links[s] and rp not in names:
                    raise RuntimeError(f"{s}: openpyxl wrote no relationships for its hyperlinks")
                if rp in names:
                    rels[rp], ids[s] = _new_rels(zin.read(rp), links[s])
            for info in zin.infolist():
                name = info.filename
                if name in by_sheet:
                    _write_sheet(zin.read(name).decode("utf-8"), by_sheet[name], links[name], ids.get(name, []),
                                 zout, info)
                elif name in rels:
                    zout.writestr(info, rels[name])
                else:
                    zout.writestr(info, zin.read(name))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_sheet(xml: str, p: Pending, links: list[tuple[str, str]], ids: list[str], zout: zipfile.ZipFile,
                 info: zipfile.ZipInfo) -> None:
    end = xml.index("</sheetData>")
    head, tail = xml[:end], xml[end:]
    if links:
        block = "<hyperlinks>" + "".join(
            f'<hyperlink xmlns:r="{_REL_NS}" ref="{ref}" r:id="{rid}"/>' for (ref, _), rid in zip(links, ids)) \
            + "</hyperlinks>"
        if not _HYPERLINKS.search(tail):
            raise RuntimeError(f"{p.sheet_path}: no <hyperlinks> element to replace")
        tail = _HYPERLINKS.sub(lambda _: block, tail, count=1)
    zi = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    zi.compress_type = zipfile.ZIP_DEFLATED
    with zout.open(zi, "w", force_zip64=True) as fh:
        fh.write(head.encode("utf-8"))
        for chunk in rows_xml(p):
            fh.write(chunk.encode("utf-8", "replace"))
        fh.write(tail.encode("utf-8"))
