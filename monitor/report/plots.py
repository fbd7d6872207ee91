"""PNG versions of the Presence charts (needs matplotlib: the ``plots`` extra).

Importing this module raises ImportError when matplotlib is missing; ``write_reports`` then skips it.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import matplotlib

from monitor.report.presence import ALL_DEVICES, MEASURES, Presence

matplotlib.use("Agg")
log = logging.getLogger(__name__)


def write_plots(out_dir: Path, p: Presence) -> dict[str, Path]:
    """``plots/detections_per_day.png`` and ``plots/detections_by_hour.png`` (all deployments, per label).

    Nothing is drawn (and ``{}`` returned) when no detection could be placed in time.
    """
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    if not p.labels or not p.days:
        return {}
    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    day = p.by_day.loc[ALL_DEVICES].loc[MEASURES[0]]
    hour = p.by_hour.loc[ALL_DEVICES].loc[MEASURES[0]]
    days = [date.fromisoformat(d) for d in p.days]
    x = mdates.date2num(days)
    width = 0.8 / len(p.labels)

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for i, lab in enumerate(p.labels):
        ax.bar(x - 0.4 + width * (i + 0.5), day.loc[lab].to_numpy(), width=width, label=lab)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=12))
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    out["plots/detections_per_day.png"] = _finish(fig, ax, "Detections per day (local date, all deployments)",
                                                  folder / "detections_per_day.png")

    fig, ax = plt.subplots(figsize=(9, 3.6))
    hours = np.arange(24)
    for i, lab in enumerate(p.labels):
        ax.bar(hours - 0.4 + width * (i + 0.5), hour.loc[lab].to_numpy(), width=width, label=lab)
    ax.set_xticks(range(0, 24, 2), [f"{h:02d}:00" for h in range(0, 24, 2)])
    ax.set_xlabel("hour of day (local time at the recorder)")
    out["plots/detections_by_hour.png"] = _finish(fig, ax, "Detections by hour of day (all deployments)",
                                                  folder / "detections_by_hour.png")
    return out


def _finish(fig, ax, title: str, path: Path) -> Path:
    """Shared look of both charts (y label, title, legend, grid), saved to ``path`` and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylabel("detections")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
