"""A distilled student's ``screen`` section of ``bundle.json`` (``monitor distill``; no torch).

A student bundle is a normal bundle (``monitor run --model STUDENT`` runs it alone) plus this section: the
teacher it was distilled from (name, version, sha256 of the teacher's bundle or ensemble identity), one screen
threshold per label (a segment goes to the teacher when any label's student score reaches its threshold), the
recall aimed at (``target_recall``: the fraction of the teacher's positive segments the screen keeps), the recall
and escalation rate measured on held-out recordings, and the validation sizes. ``monitor run --model TEACHER
--screen STUDENT`` refuses a student whose teacher sha256 is not ``--model``'s.
"""

from __future__ import annotations

from typing import Any, Sequence

from monitor.errors import BundleError

SCREEN_KEYS = ("teacher", "thresholds", "target_recall", "recall", "escalation", "validation", "note")
WHERE = "bundle.json screen"


def _number(sc: dict[str, Any], key: str) -> float:
    if key not in sc:
        raise BundleError(f"{WHERE} is missing '{key}'; distil the student again")
    v = sc[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise BundleError(f"{WHERE}: '{key}' must be a number in 0..1, got {v!r}")
    return float(v)


def parse_screen(sc: Any, labels: Sequence[str], ensemble: bool = False) -> dict[str, Any]:
    """Validate a ``screen`` section (of an ``ensemble`` bundle: refused, a screen is one distilled student); a wrong
    or missing field is a one-line ``BundleError``."""
    if ensemble:
        raise BundleError("bundle.json: an ensemble bundle cannot be a screen (a screen is one distilled student)")
    if not isinstance(sc, dict):
        raise BundleError(f"{WHERE} must be an object")
    unknown = [k for k in sc if k not in SCREEN_KEYS]
    if unknown:
        raise BundleError(f"{WHERE}: unknown field '{unknown[0]}' (allowed: {', '.join(SCREEN_KEYS)})")
    teacher = sc.get("teacher")
    if not isinstance(teacher, dict) or not isinstance(teacher.get("name"), str):
        raise BundleError(f"{WHERE}: 'teacher' must be an object with the teacher's name, version and sha256")
    sha = teacher.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError(f"{WHERE}: teacher sha256 must be 64 hex digits")
    thr = sc.get("thresholds")
    if not isinstance(thr, dict) or set(thr) != set(labels):
        missing = sorted(set(labels) ^ set(thr or {}))
        raise BundleError(f"{WHERE}: 'thresholds' must have one value per label" +
                          (f" (check {missing[0]!r})" if missing else ""))
    for k in labels:
        _number(thr, k)
    _number(sc, "target_recall")
    _number(sc, "escalation")
    for key in ("recall", "validation"):
        if not isinstance(sc.get(key, {}), dict):
            raise BundleError(f"{WHERE}: '{key}' must be an object")
    return dict(sc)


def describe_screen(sc: dict[str, Any]) -> list[str]:
    """Lines for ``monitor models info``: the teacher, the thresholds, the recall and escalation measured."""
    t = sc["teacher"]
    v = sc.get("validation") or {}
    recall = sc.get("recall") or {}
    lines = [f"screen for teacher {t['name']} {t.get('version', '')} (sha256 {t['sha256'][:16]}...)",
             "screen thresholds: " + ", ".join(f"{k}={float(x):.4g}" for k, x in sc["thresholds"].items()),
             f"recall of the teacher's positive segments (target {float(sc['target_recall']):.0%}): "
             + (", ".join(f"{k} {float(x):.1%}" if x is not None else f"{k} n/a" for k, x in recall.items())
                or "not measured"),
             f"escalated to the teacher: {float(sc['escalation']):.1%} of segments"
             + (f" (held out: {v.get('files', '?')} files, {v.get('segments', '?')} segments)" if v else "")]
    if sc.get("note"):
        lines.append(str(sc["note"]))
    return lines
