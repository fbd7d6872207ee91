"""The models of one run: one bundle, or several averaged as an ensemble (same labels, task, preprocessing)."""

from __future__ import annotations

import hashlib
from typing import Sequence

from monitor.errors import MonitorError
from monitor.model.bundle import DEFAULT_MODEL, Bundle, load_bundle


def load_models(names: Sequence[str] | None) -> list[Bundle]:
    """Bundles for an ensemble (same labels and preprocessing); default: the bundled demo model."""
    bundles = [load_bundle(n) for n in (names or [DEFAULT_MODEL])]
    first = bundles[0]
    for b in bundles[1:]:
        if list(b.labels) != list(first.labels) or b.task != first.task:
            raise MonitorError(f"ensemble models must share labels and task: {first.name} {first.labels} vs {b.name} {b.labels}")
        if b.preprocessing != first.preprocessing:
            raise MonitorError(f"ensemble models must share preprocessing: {first.name} and {b.name} differ")
    return bundles


def ensemble_hash(bundles: Sequence[Bundle]) -> str:
    """One bundle's sha256, or the hash of the members' hashes in order."""
    if len(bundles) == 1:
        return bundles[0].sha256
    return hashlib.sha256("+".join(b.sha256 for b in bundles).encode()).hexdigest()
