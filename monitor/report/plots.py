"""PNG versions of the Presence charts (needs matplotlib: the ``plots`` extra).

One panel per deployment (its own local time), survey nights on a categorical axis (only nights with
recordings, so bars never shrink to hairlines over a long gap between cards), side-by-side bars per
detected label. Without matplotlib ``available()`` is False and ``write_reports`` says so in one warning.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from monitor.report.presence import ALL, HOURS, MEASURES, Presence

log = logging.getLogger(__name__)

MAX_PANELS = 12  # deployments drawn; the rest are counted in the title


def available() -> bool:
    """True when matplotlib (the ``plots`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def write_plots(out_dir: Path, p: Presence) -> dict[str, Path]:
    """``plots/detections_per_night.png`` and ``plots/detections_by_hour.png`` (one panel per deployment).

    Nothing is drawn (and ``{}`` returned) when no detection could be placed in time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not p.labels or not p.nights:
        return {}
    night = p.by_night.xs(MEASURES[0], level="measure")
    hour = p.by_hour.xs(MEASURES[0], level="measure")
    deps = [d for d in p.deployments if night.loc[d].to_numpy().sum() > 0] or [ALL]
    deps = sorted(deps, key=lambda d: -int(night.loc[d].to_numpy().sum()))[:MAX_PANELS]
    deps.sort()
    more = len(p.deployments) - len(deps) if deps != [ALL] else 0
    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(p.labels)
    out: dict[str, Path] = {}

    def panels(table, columns, xlabels, title, path, xlabel, rotate):
        fig, axes = plt.subplots(len(deps), 1, figsize=(min(16, 3 + 0.35 * len(columns) * max(1, len(p.labels))),
                                                        1.0 + 2.2 * len(deps)), squeeze=False, sharex=True)
        x = np.arange(len(columns))
        for ax, dep in zip(axes[:, 0], deps):
            rows = table.loc[dep]
            for i, lab in enumerate(p.labels):
                ax.bar(x - 0.4 + width * (i + 0.5), rows.loc[lab, columns].to_numpy(), width=width, label=lab,
                       color=colors[i % len(colors)])
            ax.set_ylabel("detections")
            ax.set_title(dep, fontsize=10, loc="left")
            ax.grid(axis="y", alpha=0.3)
        ax = axes[-1, 0]
        step = max(1, len(columns) // 40)
        ax.set_xticks(x[::step], [xlabels[j] for j in range(0, len(columns), step)], rotation=rotate,
                      ha="right" if rotate else "center")
        ax.set_xlabel(xlabel)
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="upper right", frameon=False, ncol=min(4, len(names)))
        fig.suptitle(title + (f" ({more} more deployments in the workbook)" if more else ""), x=0.01, ha="left")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    out["plots/detections_per_night.png"] = panels(
        night, p.nights, p.nights, "Detections per survey night (noon to noon, local time)",
        folder / "detections_per_night.png", "survey night (dated by its evening)", 45)
    out["plots/detections_by_hour.png"] = panels(
        hour, HOURS, [f"{h}:00" for h in HOURS], "Detections by hour of day (local time)",
        folder / "detections_by_hour.png", "hour of day", 0)
    for stale in ("detections_per_day.png",):  # written by earlier versions: it would show stale numbers
        if (folder / stale).exists():
            (folder / stale).unlink()
    return out
