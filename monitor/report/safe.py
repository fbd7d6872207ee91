"""Untrusted text (file names, comments, labels from SD cards) must never become a spreadsheet formula.

One rule, ``is_formula_like``, decides for both outputs:

- CSV (``safe_text``): the text gets a leading apostrophe, the OWASP "CSV injection" fix, so Excel or
  LibreOffice opening the CSV shows it as text. ``unquote`` undoes it for scripts reading the CSVs.
- xlsx (``text_cell``): the text is stored as a string cell with Excel's quote-prefix flag, so it is
  shown verbatim, never evaluated, and stays text even when a reviewer edits the cell.

Only text is touched: numbers (a temperature of -3.5) stay numbers. A bare UTC offset such as
``-08:00`` (the ``utc_offset`` column) cannot carry a formula and is left as it is.
The one exception is monitor's own link formulas (``Formula``, ``link_formula``): untrusted text goes into
them only as string literals, quotes doubled, so it can never become formula code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UTC_OFFSET = re.compile(r"[+-]\d{2}:\d{2}")
# XML 1.0 forbids these control characters; openpyxl raises on them, so they are dropped.
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ERROR_CODES = frozenset(("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A"))
MAX_CELL_CHARS = 32767


@dataclass(frozen=True)
class Formula:
    """A formula monitor wrote itself (``text`` without the leading ``=``) and the value it shows
    (``cached``, for viewers that do not recalculate)."""

    text: str
    cached: str = ""


def string_literal(text: str) -> str:
    """Untrusted text as an Excel string expression: quotes doubled, in pieces of at most 250 characters
    (Excel's limit for one literal is 255) joined with ``&``."""
    text = clean_text(text).replace("\n", " ")
    pieces = [text[i:i + 250] for i in range(0, len(text), 250)] or [""]
    return "&".join('"' + p.replace('"', '""') + '"' for p in pieces)


def link_formula(base_cell: str, rel: str, name: str) -> Formula:
    """``HYPERLINK(<base folder cell> & "/" & rel, name)``: a link that follows the base-folder cell, so a
    card mounted elsewhere needs one cell changed, not every link."""
    return Formula(f"HYPERLINK({base_cell}&{string_literal('/' + rel)},{string_literal(name)})", name)


def is_formula_like(value: Any) -> bool:
    """True for text a spreadsheet could read as a formula (starts with = + - @ tab or CR)."""
    return (isinstance(value, str) and value.startswith(FORMULA_START)
            and _UTC_OFFSET.fullmatch(value) is None)


def safe_text(value: Any) -> Any:
    """CSV cell: formula-like text gets a leading apostrophe; anything else is returned unchanged."""
    return "'" + value if is_formula_like(value) else value


def unquote(value: Any) -> Any:
    """Inverse of ``safe_text`` for scripts that read the CSVs back."""
    if isinstance(value, str) and value.startswith("'") and is_formula_like(value[1:]):
        return value[1:]
    return value


def clean_text(value: str) -> str:
    """Text an xlsx cell can hold: no XML-illegal control characters, at most 32,767 characters."""
    if _ILLEGAL_XML.search(value):
        value = _ILLEGAL_XML.sub("", value)
    return value[:MAX_CELL_CHARS]


def needs_quote_prefix(value: str) -> bool:
    """xlsx: cleaned text Excel would read as a formula or an error value gets the quote-prefix flag."""
    return is_formula_like(value) or value in _ERROR_CODES


def text_cell(ws: Any, value: str) -> Any:
    """xlsx cell value for untrusted text: plain ``str``, or a quote-prefixed string cell when risky.

    ``ws`` is a write-only worksheet. The returned cell always has ``data_type == 's'``.
    """
    value = clean_text(value)
    if not needs_quote_prefix(value):
        return value
    from openpyxl.cell import WriteOnlyCell

    cell = WriteOnlyCell(ws, value=None)
    cell._value, cell.data_type = value, "s"  # bypass openpyxl's "starts with = -> formula" inference
    cell.quotePrefix = True  # Excel's own marker for "typed with a leading apostrophe"
    return cell
