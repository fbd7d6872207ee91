"""Which deployment (recorder placement) a recording belongs to, and its local time zone.

One output folder holds many cards; rows of every output carry the deployment. Rule, first that
applies:

1. a row of the deployments table (``--deployments deployments.csv``) that matches the file: its
   ``device_id`` equals the recorder ID in the file's metadata and/or its ``folder`` equals the card's
   top-level folder holding the file (or the card folder's own name), and, when the row gives
   ``start``/``end``, the recording starts inside ``[start, end)``;
2. ``--deployment NAME`` given for the run: every other file of that card is ``NAME``;
3. the recorder's device ID from the file's own metadata (AudioMoth comment, GUANO, Song Meter file
   name prefix): two AudioMoths that write the same file names stay apart;
4. the card's top-level folder holding the file (``AM-POND/20240412_211500.WAV`` -> ``AM-POND``), or,
   for files at the card's root, the name of the card folder itself.

Time: a deployment's ``time_zone`` (an IANA name such as ``America/Los_Angeles``, or a fixed offset such
as ``-07:00`` / ``UTC-7`` / ``UTC``) turns recorder clocks into the site's local time: a start time with
a UTC offset (AudioMoth's comment, GUANO) is converted; one without (Song Meter file names) is read as
the site's local time. Without a time zone, times are shown as the recorder wrote them, and a recorder
whose clock is UTC (AudioMoth's default) is warned about, because its "local" hours are UTC hours.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

from monitor.errors import MonitorError

COLUMNS = ("deployment", "device_id", "folder", "time_zone", "latitude", "longitude", "start", "end")
IGNORED_COLUMNS = ("notes", "note", "comment", "comments", "site", "description")
_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.I)


def default_deployment(rel: str, device_id: str | None, card_name: str, explicit: str | None = None) -> str:
    """The deployment of the file at ``rel`` (posix path inside the card) by rules 2-4 above."""
    if explicit:
        return explicit
    if device_id:
        return str(device_id)
    return top_folder(rel, card_name)


def top_folder(rel: str, card_name: str) -> str:
    parts = PurePosixPath(rel).parts
    return parts[0] if len(parts) > 1 else (card_name or "card")


def parse_time_zone(text: str) -> tzinfo:
    """``America/Los_Angeles``, ``UTC``, ``-07:00``, ``+0530``, ``UTC-7`` -> a tzinfo; ``ValueError`` otherwise."""
    t = str(text).strip()
    if t.upper() in ("UTC", "GMT", "Z"):
        return timezone.utc
    m = _OFFSET.match(t)
    if m:
        sign, hh, mm = m.group(1), int(m.group(2)), int(m.group(3) or 0)
        if hh > 14 or mm >= 60:
            raise ValueError(f"{text!r} is not a UTC offset")
        delta = timedelta(hours=hh, minutes=mm)
        return timezone(-delta if sign == "-" else delta)
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(t)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{text!r} is neither an IANA time zone (e.g. America/Los_Angeles) nor a UTC offset "
                         "(e.g. -07:00)") from None


def offset_text(dt: datetime | None) -> str:
    """``-07:00`` style UTC offset of an aware datetime ('' when unknown)."""
    if dt is None or dt.utcoffset() is None:
        return ""
    total = int(dt.utcoffset().total_seconds() // 60)
    sign = "-" if total < 0 else "+"
    return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


@dataclass(frozen=True)
class Deployment:
    """One row of the deployments table."""

    deployment: str
    device_id: str = ""
    folder: str = ""
    time_zone: str = ""
    latitude: float | None = None
    longitude: float | None = None
    start: str = ""
    end: str = ""
    line: int = 0  # the row's line in the CSV (messages name it)

    @property
    def tz(self) -> tzinfo | None:
        return parse_time_zone(self.time_zone) if self.time_zone else None

    def _bound(self, text: str) -> datetime | None:
        if not text:
            return None
        d = datetime.fromisoformat(text)
        tz = self.tz
        if d.tzinfo is None and tz is not None:
            d = d.replace(tzinfo=tz)
        return d

    def covers(self, start: datetime | None) -> bool:
        """True when the recording starts (``start``; None: unknown) inside ``[start, end)``, or no bounds are
        given. Bounds without an offset are the deployment's local time (its ``time_zone``); without a time
        zone, wall clocks are compared."""
        if not self.start and not self.end:
            return True
        if start is None:
            return False
        tz = self.tz
        s = to_local(start, tz)
        bounds = [self._bound(self.start), self._bound(self.end)]
        if s.tzinfo is None or any(b is not None and b.tzinfo is None for b in bounds):
            s = s.replace(tzinfo=None)
            bounds = [None if b is None else b.replace(tzinfo=None) for b in bounds]
        lo, hi = bounds
        return (lo is None or s >= lo) and (hi is None or s < hi)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def interval(self) -> tuple[datetime | None, datetime | None]:
        """``[start, end)`` as wall-clock times of the deployment's zone (None: open)."""
        lo, hi = self._bound(self.start), self._bound(self.end)
        tz = self.tz
        return tuple(None if b is None else (b.astimezone(tz) if tz is not None and b.tzinfo is not None else b
                                             ).replace(tzinfo=None) for b in (lo, hi))  # type: ignore[return-value]

    def can_match_same_file(self, other: "Deployment") -> bool:
        """True when both rows pick the same recorder (the same device_id, folders compatible; or, without
        device_ids, the same folder) at overlapping times: the second row could never match its files."""
        def same(a: str, b: str) -> bool:
            return a.casefold() == b.casefold()

        if self.device_id or other.device_id:
            if not (same(self.device_id, other.device_id) and (not self.folder or not other.folder
                                                               or same(self.folder, other.folder))):
                return False
        elif not same(self.folder, other.folder):
            return False
        (a0, a1), (b0, b1) = self.interval(), other.interval()
        return (a1 is None or b0 is None or b0 < a1) and (b1 is None or a0 is None or a0 < b1)


def to_local(start: datetime | None, tz: tzinfo | None) -> datetime | None:
    """A recorder's start time in the deployment's time zone: aware times are converted, naive ones (no
    offset known) are read as that zone's wall clock. Without ``tz``: unchanged."""
    if start is None or tz is None:
        return start
    if start.tzinfo is None:
        return start.replace(tzinfo=tz)
    return start.astimezone(tz)


class DeploymentTable:
    """The deployments table: which files belong to which deployment, their time zones and places."""

    def __init__(self, rows: Sequence[Deployment] = ()):
        self.rows = list(rows)
        self.by_name = {}
        for r in self.rows:
            self.by_name.setdefault(r.deployment, r)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def match(self, rel: str, device_id: str | None, card_name: str, start: datetime | None) -> Deployment | None:
        """The first row that matches this file (see the module docstring), or None."""
        folder, dev = top_folder(rel, card_name), (device_id or "").casefold()
        card = (card_name or "").casefold()
        for r in self.rows:
            if r.device_id and r.device_id.casefold() != dev:
                continue
            if r.folder and r.folder.casefold() not in (folder.casefold(), card):
                continue
            if r.covers(start):
                return r
        return None

    def time_zone(self, deployment: str) -> tzinfo | None:
        r = self.by_name.get(deployment)
        return r.tz if r is not None else None

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rows]

    @classmethod
    def from_json(cls, rows: Iterable[Mapping[str, Any]] | None) -> "DeploymentTable":
        return cls([Deployment(**dict(r)) for r in rows or []])


def _float(v: str, what: str, line: int, path: Path) -> float | None:
    if v is None or not str(v).strip():
        return None
    try:
        return float(v)
    except ValueError:
        raise MonitorError(f"{path}, line {line}: {what} must be a number, got {v!r}") from None


def read_deployments(path: Path | str) -> DeploymentTable:
    """Read and check a deployments CSV (one-line ``MonitorError`` naming the line for any mistake)."""
    path = Path(path)
    if not path.is_file():
        raise MonitorError(f"deployments table not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        unknown = [h for h in header if h and h not in COLUMNS + IGNORED_COLUMNS]
        if "deployment" not in header:
            raise MonitorError(f"{path}: a deployments table needs a 'deployment' column (columns: "
                               f"{', '.join(COLUMNS)})")
        if unknown:
            raise MonitorError(f"{path}: unknown column {unknown[0]!r} (allowed: {', '.join(COLUMNS)}, and notes)")
        rows = []
        for i, raw in enumerate(reader, start=2):
            r = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            if not any(r.values()):
                continue
            if not r.get("deployment"):
                raise MonitorError(f"{path}, line {i}: the deployment name is empty")
            tz = r.get("time_zone", "")
            if tz:
                try:
                    parse_time_zone(tz)
                except ValueError as exc:
                    raise MonitorError(f"{path}, line {i}: time_zone {exc}") from None
            for k in ("start", "end"):
                if r.get(k):
                    try:
                        datetime.fromisoformat(r[k])
                    except ValueError:
                        raise MonitorError(f"{path}, line {i}: {k} {r[k]!r} is not a date/time like "
                                           "2024-04-01 or 2024-04-01T18:00") from None
            row = Deployment(r["deployment"], r.get("device_id", ""), r.get("folder", ""), tz,
                             _float(r.get("latitude"), "latitude", i, path),
                             _float(r.get("longitude"), "longitude", i, path), r.get("start", ""),
                             r.get("end", ""), line=i)
            check_row(row, path)
            rows.append(row)
    if not rows:
        raise MonitorError(f"{path}: the deployments table has no rows")
    for j, b in enumerate(rows):
        for a in rows[:j]:
            if a.can_match_same_file(b):
                who = f"device {a.device_id or b.device_id}" if a.device_id or b.device_id else \
                    f"folder {a.folder or b.folder}"
                raise MonitorError(f"{path}, lines {a.line} and {b.line}: both rows match files of {who} at the same "
                                   "times; give each its own start/end (times that do not overlap)")
    return DeploymentTable(rows)


def check_row(row: Deployment, path: Path) -> None:
    """One row's own mistakes, as a one-line ``MonitorError`` naming its line."""
    where = f"{path}, line {row.line}"
    if not row.device_id and not row.folder:
        raise MonitorError(f"{where}: give a device_id or a folder (a row with neither would match every file)")
    for name, value, limit in (("latitude", row.latitude, 90.0), ("longitude", row.longitude, 180.0)):
        if value is not None and not -limit <= value <= limit:
            raise MonitorError(f"{where}: {name} {value:g} is outside -{limit:g}..{limit:g} (decimal degrees)")
    lo, hi = row.interval()
    if lo is not None and hi is not None and not lo < hi:
        raise MonitorError(f"{where}: start {row.start} is not before end {row.end}")
