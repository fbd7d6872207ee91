"""Which deployment (recorder placement) a recording belongs to: the grouping of one output folder that
holds many cards.

Rule, first that applies:

1. ``--deployment NAME`` given for the run: every file of that card is ``NAME``;
2. the recorder's device ID from the file's own metadata (AudioMoth comment, GUANO, Song Meter file
   name prefix): two AudioMoths that write the same file names stay apart;
3. the card's top-level folder holding the file (``AM-POND/20240412_211500.WAV`` -> ``AM-POND``), or,
   for files at the card's root, the name of the card folder itself.

Rows in every output carry the deployment, so results of cards with identical file names never mix.
"""

from __future__ import annotations

from pathlib import PurePosixPath


def default_deployment(rel: str, device_id: str | None, card_name: str, explicit: str | None = None) -> str:
    """The deployment of the file at ``rel`` (posix path inside the card) by the rule above."""
    if explicit:
        return explicit
    if device_id:
        return str(device_id)
    parts = PurePosixPath(rel).parts
    if len(parts) > 1:
        return parts[0]
    return card_name or "card"
