"""PNG versions of the Presence charts (needs matplotlib: the ``plots`` extra)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def write_plots(out_dir: Path, detections, recordings, labels: list[str]) -> dict[str, Path]:
    """``plots/detections_per_day.png`` and ``plots/detections_by_hour.png``; nothing when no start times."""
    import matplotlib.pyplot as plt

    starts = {}
    for f, t in zip(recordings["file"], recordings["start_time"]):
        try:
            starts[f] = datetime.fromisoformat(t) if t else None
        except (TypeError, ValueError):
            starts[f] = None
    times = [(r.label, starts[r.file] + timedelta(seconds=float(r.start_s)))
             for r in detections.itertuples() if starts.get(r.file)]
    folder = Path(out_dir) / "plots"
    folder.mkdir(exist_ok=True)
    out = {}
    days = sorted({t.date() for _, t in times})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        counts = [sum(1 for l, t in times if l == lab and t.date() == d) for d in days]
        ax.bar([k + i * width for k in range(len(days))], counts, width=width, label=lab)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(days))], [d.isoformat() for d in days], rotation=30)
    ax.set_ylabel("detections")
    ax.set_title("Detections per day")
    ax.legend()
    fig.tight_layout()
    out["plots/detections_per_day.png"] = folder / "detections_per_day.png"
    fig.savefig(out["plots/detections_per_day.png"], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for lab in labels:
        counts = [sum(1 for l, t in times if l == lab and t.hour == h) for h in range(24)]
        ax.plot(range(24), counts, marker="o", label=lab)
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel("hour of day (local)")
    ax.set_ylabel("detections")
    ax.set_title("Detections by hour of day")
    ax.legend()
    fig.tight_layout()
    out["plots/detections_by_hour.png"] = folder / "detections_by_hour.png"
    fig.savefig(out["plots/detections_by_hour.png"], dpi=100)
    plt.close(fig)
    return out
