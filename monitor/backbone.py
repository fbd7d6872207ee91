"""Which model made an output folder's stored segment embeddings, and whether a bundle's backbone made them:
one check for ``monitor search``, ``monitor report --rescore`` and heads trained on embeddings."""

from __future__ import annotations

from monitor.errors import MonitorError
from monitor.results import RunInfo


def run_bundle(store, ref: str | None, give: str):
    """The bundle ``ref`` names, else the one the folder's runs used (from ``run.json``'s models); ``give``:
    how the user names another (``--model``, ``model.checkpoint``) for the one-line error."""
    from monitor.model.bundle import load_bundle  # torch: kept off the CLI's import path

    info = RunInfo.from_json(store.get_meta("run_info"))
    ref = ref or next((m.path for m in info.models if m.path), "") or info.model.path
    if not ref:
        raise MonitorError(f"the results store in {store.path.parent} does not say which model made it; give {give}")
    return load_bundle(ref)


def check_backbone(store, bundle, fix: str) -> str:
    """``bundle``'s backbone hash when the folder holds embeddings it made, else a one-line ``MonitorError``
    ending in ``fix`` (what to do instead)."""
    have = store.embedding_backbones()
    out = store.path.parent
    if not have:
        raise MonitorError(f"no segment embeddings in {out}; run the cards with "
                           f"`monitor run CARD --out {out} --embeddings` first")
    bb = bundle.backbone()
    if bb not in have:
        raise MonitorError(f"{bundle.name}'s backbone ({bb[:12]}) did not make the embeddings stored in {out} "
                           f"({', '.join(x[:12] for x in have)}); {fix}")
    return bb
