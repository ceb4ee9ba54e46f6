"""The demo's timeline as a PNG (matplotlib, no display): samples/s per pool and the loss over time,
a numbered vertical marker for every action of the demo, membership change and Event of the job, and
the list of the markers under the plots."""

from __future__ import annotations

from pathlib import Path

from .timeline import ACTION, EVENT, MEMBERSHIP, Timeline, break_gaps, smooth

COLOURS = {ACTION: "tab:red", MEMBERSHIP: "tab:green", EVENT: "tab:gray"}
STYLES = {ACTION: "-", MEMBERSHIP: "--", EVENT: ":"}
NAMES = {ACTION: "demo action", MEMBERSHIP: "membership change", EVENT: "job Event"}
MAX_GAP = 4.0  # seconds without a step: the line breaks (the world paused)


def render(tl: Timeline, path: Path, title: str, window: int = 5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(tl.markers))
    fig = plt.figure(figsize=(12, 7.5 + 0.17 * rows))
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2, 0.3 + 0.17 * rows], hspace=0.22)
    ax_sps = fig.add_subplot(grid[0])
    ax_loss = fig.add_subplot(grid[1], sharex=ax_sps)
    ax_text = fig.add_subplot(grid[2])
    for pool, points in sorted(tl.pools.items()):
        pts = break_gaps(smooth(points, window), MAX_GAP)
        ax_sps.plot([t for t, _ in pts], [v for _, v in pts], label=pool, linewidth=1.6)
    ax_sps.set_ylabel(f"samples/s per pool\n(mean of {window} steps)")
    ax_sps.set_ylim(bottom=0)
    ax_sps.tick_params(labelbottom=False)
    loss = break_gaps(tl.loss, MAX_GAP)
    ax_loss.plot([t for t, _ in loss], [v for _, v in loss], color="black", linewidth=1.0)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_xlabel("seconds since the job was applied")
    top = ax_sps.get_ylim()[1]
    for i, m in enumerate(tl.markers, 1):
        for ax in (ax_sps, ax_loss):
            ax.axvline(m.time, color=COLOURS[m.kind], linestyle=STYLES[m.kind], linewidth=1.0, alpha=0.8)
        ax_sps.text(
            m.time, top * (1.0 - 0.045 * (i % 3)), f" {i}", fontsize=8, color=COLOURS[m.kind], va="top"
        )
    for ax in (ax_sps, ax_loss):
        ax.grid(alpha=0.3)
    handles, labels = ax_sps.get_legend_handles_labels()
    for kind in (ACTION, MEMBERSHIP, EVENT):
        if any(m.kind == kind for m in tl.markers):
            handles.append(plt.Line2D([], [], color=COLOURS[kind], linestyle=STYLES[kind]))
            labels.append(NAMES[kind])
    ax_sps.legend(handles, labels, loc="upper left", fontsize=8, ncol=2)
    ax_sps.set_title(title)
    ax_text.axis("off")
    for i, m in enumerate(tl.markers, 1):
        ax_text.text(
            0.0,
            1.0 - (i - 0.5) / rows,
            f"{i:>2}  {m.time:6.1f}s  {m.label}",
            fontsize=8,
            family="monospace",
            color=COLOURS[m.kind],
            transform=ax_text.transAxes,
            va="center",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
