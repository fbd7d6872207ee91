"""The one verdict vocabulary: what a reviewer may type in a Verified cell, for every reader (the workbook
harvest in ``report/review_io.py``, training from a reviewed report in ``train/reviews.py``, notebook 03).

``yes`` (also y, true, 1, x, ✓), ``no`` (n, false, 0, ✗), ``unsure`` (?, maybe, u), case-insensitive,
spaces trimmed; a blank cell is no verdict. Any other text is kept as typed by the results store
(it is the reviewer's) but is no verdict: every reader that meets one says which word and where.
"""

from __future__ import annotations

from typing import Any, Iterable

VERDICTS = ("yes", "no", "unsure")
WORDS = {
    "yes": ("yes", "y", "true", "1", "1.0", "x", "✓", "✔"),
    "no": ("no", "n", "false", "0", "0.0", "✗", "✘"),
    "unsure": ("unsure", "?", "maybe", "u"),
}
_ALIASES = {w: v for v, words in WORDS.items() for w in words}


def normalize_verdict(value: Any) -> str:
    """What a reviewer typed -> ``yes`` / ``no`` / ``unsure``; '' for a blank cell; other text kept as typed
    (trimmed), never dropped (``is_verdict`` tells it apart)."""
    if value is None:
        return ""
    text = str(value).strip()
    if text.lower() in ("nan", "none"):
        return ""
    return _ALIASES.get(text.lower(), text)


def is_verdict(text: str) -> bool:
    """True for a normalised verdict or a blank cell; False for a word outside the vocabulary."""
    return text in VERDICTS or text == ""


def unknown_words(values: Iterable[Any], where: Iterable[str]) -> list[tuple[str, str]]:
    """``(word as typed, where)`` for every value outside the vocabulary (``where`` describes each value)."""
    out = []
    for v, w in zip(values, where):
        text = normalize_verdict(v)
        if not is_verdict(text):
            out.append((text, w))
    return out


def unknown_text(found: list[tuple[str, str]], source: str) -> str:
    """One line naming the unknown words, how often, and where the first one of each is."""
    first: dict[str, tuple[int, str]] = {}
    for word, w in found:
        n, at = first.get(word, (0, w))
        first[word] = (n + 1, at)
    words = ", ".join(f"{word!r} ({n}x, e.g. {at})" for word, (n, at) in list(first.items())[:5])
    more = f" and {len(first) - 5} more words" if len(first) > 5 else ""
    return (f"{source}: {len(found)} Verified cell{'s' if len(found) != 1 else ''} not yes, no or unsure, so no "
            f"verdict: {words}{more}; use {', '.join(VERDICTS)} (or y/n/?, x for yes)")
