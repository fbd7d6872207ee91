"""The models of one run: one bundle, or an ensemble (same labels, task, preprocessing) whose members'
probabilities are averaged (``infer.Scorer``).

An ensemble is a bundle: a k-fold training run writes an *ensemble bundle* (``bundle.json`` with an
``ensemble`` section listing its members by path and sha256, thresholds calibrated for the averaged
score; ``model.bundle`` loads and verifies it). Several ``--model`` given by hand form the same kind of
ensemble, with thresholds that do not depend on their order: per label the median of the given
bundles' own thresholds (the mean for two), which were not calibrated for the average; ``Models``
says so (``calibrated``, ``thresholds_from``) and ``monitor run`` warns. Members are scored in sha256
order and the identity of a hand-given ensemble is the hash of its sorted member hashes, so the
order of ``--model`` changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from monitor.config import Preprocess
from monitor.errors import BundleError, MonitorError
from monitor.fileio import atomic_write_text
from monitor.model.bundle import DEFAULT_MODEL, Bundle, load_bundle, parse_bundle

OUT_OF_FOLD = "out-of-fold"


@dataclass
class Models:
    """What ``monitor run`` scores with: the bundles given (by name), the members scored (flat, sha256 order), the
    thresholds for their averaged score and how they were chosen, and the identity the results store binds."""

    given: list[Bundle]
    members: list[Bundle]
    thresholds: dict[str, float]
    thresholds_from: str
    calibrated: bool
    sha256: str

    @property
    def labels(self) -> list[str]:
        return list(self.members[0].labels)

    @property
    def task(self) -> str:
        return self.members[0].task

    @property
    def preprocessing(self) -> Preprocess:
        return self.members[0].preprocessing

    def describe(self) -> str:
        """``name version`` of each given bundle (an ensemble bundle says how many members it has)."""
        return " + ".join(f"{b.name} {b.version}" + (f" (ensemble of {len(b.members)})" if b.is_ensemble else "")
                          for b in self.given)


def _check_members(members: Sequence[Bundle]) -> None:
    first = members[0]
    for b in members[1:]:
        if list(b.labels) != list(first.labels) or b.task != first.task:
            raise MonitorError(f"ensemble models must share labels and task: {first.name} {first.labels} vs {b.name} "
                               f"{b.labels}")
        if b.preprocessing != first.preprocessing:
            raise MonitorError(f"ensemble models must share preprocessing: {first.name} and {b.name} differ")


def _rule(b: Bundle) -> str:
    if not b.is_ensemble:
        return f"bundle {b.name} {b.version}: its own thresholds"
    ens = b.ensemble or {}
    return f"ensemble bundle {b.name} {b.version} ({len(b.members)} members): " + \
        str(ens.get("thresholds_note") or ens.get("thresholds"))


def load_ensemble(names: Sequence[str] | None) -> Models:
    """The bundles named (default: the bundled demo model) as one model: a single bundle, an ensemble bundle,
    or several of either averaged together (thresholds: per label the median of the given bundles')."""
    given = sorted((load_bundle(n) for n in (names or [DEFAULT_MODEL])),  # named in one order, whatever the order
                   key=lambda b: (b.name, b.version, b.sha256))
    members = sorted((m for b in given for m in (b.members if b.is_ensemble else [b])), key=lambda m: m.sha256)
    _check_members(members)
    if len(given) == 1:
        b = given[0]
        return Models(given, members, dict(b.thresholds), _rule(b), True, b.sha256)
    labels = list(members[0].labels)
    thr = {lab: float(statistics.median(float(g.thresholds[lab]) for g in given)) for lab in labels}
    rule = (f"per label the median of the {len(given)} given bundles' own thresholds (the mean for two); not "
            "calibrated for their averaged score: a k-fold run's ensemble bundle (--model runs/NAME) has calibrated "
            "ones, or set them with --threshold")
    return Models(given, members, thr, rule, False, ensemble_hash(given))


def load_models(names: Sequence[str] | None) -> list[Bundle]:
    """The member bundles scored for ``names`` (see ``load_ensemble``), in sha256 order."""
    return load_ensemble(names).members


def ensemble_hash(bundles: Sequence[Bundle]) -> str:
    """One bundle's sha256, or the hash of the bundles' hashes in sorted order (their order changes nothing)."""
    if len(bundles) == 1:
        return bundles[0].sha256
    return hashlib.sha256("+".join(sorted(b.sha256 for b in bundles)).encode()).hexdigest()


def member_ref(member: Path, ensemble_dir: Path) -> str:
    """A member's path as the ensemble records it: relative to the ensemble bundle's folder when both lie in
    one run folder (the ensemble folder's parent), else absolute."""
    member, ensemble_dir = Path(member).absolute(), Path(ensemble_dir).absolute()
    if member.is_relative_to(ensemble_dir.parent):
        return Path(os.path.relpath(member, ensemble_dir)).as_posix()
    return str(member)


def save_ensemble(out_dir: str | Path, members: Sequence[Bundle], *, name: str, version: str,
                  thresholds: Mapping[str, float], rule: str, note: str = "",
                  provenance: Mapping[str, Any] | None = None) -> Bundle:
    """Write an ensemble bundle (``bundle.json`` only) into ``out_dir``; returns it loaded (members verified)."""
    out_dir = Path(out_dir)
    if not members or any(m.is_ensemble or m.path is None for m in members):
        raise BundleError("an ensemble bundle lists saved plain bundles as members")
    _check_members(members)
    first = members[0]
    ens: dict[str, Any] = {"members": [{"path": member_ref(m.path, out_dir), "sha256": m.sha256} for m in members],
                           "thresholds": rule, "combine": "mean"}
    if note:
        ens["thresholds_note"] = note
    b = Bundle(name, version, list(first.labels), first.task, None, first.preprocessing,
               {lab: float(thresholds[lab]) for lab in first.labels}, dict(provenance or {}), ensemble=ens)
    data = json.loads(json.dumps(b.to_json()))
    parse_bundle(data)  # the same checks as on load, before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(p.name in ("model.safetensors",) for p in out_dir.iterdir()):
        raise BundleError(f"{out_dir} holds a plain bundle; an ensemble bundle needs its own folder")
    atomic_write_text(out_dir / "bundle.json", json.dumps(data, indent=2) + "\n")
    return load_bundle(out_dir)
