"""Draw the Grafana dashboard's layout (each panel's gridPos, title and type) from its JSON.

    python deploy/grafana/render_layout.py [--dashboard PATH] [--out docs/grafana-dashboard.png]

Needs matplotlib (the `bench` extra). The picture shows where each panel sits on Grafana's 24-column
grid, not data: it is what the README points at, regenerated whenever the dashboard JSON changes.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboards" / "gms-relay.json"
OUT = HERE.parent.parent / "docs" / "grafana-dashboard.png"

GRID_COLUMNS = 24  # Grafana's grid: 24 columns; one height unit is 30 px
_COLOURS = {"row": "#d9d9d9", "stat": "#cfe8cf", "timeseries": "#cfe0f3"}
_METRIC = re.compile(r"\b(?:gms_relay_[a-z0-9_]+|up)\b")
_QUOTED = re.compile(r'"[^"]*"')  # label values such as queue="gms_relay" are not series


class Panel(NamedTuple):
    title: str
    type: str
    x: int
    y: int
    w: int
    h: int
    metrics: tuple[str, ...]  # the series its queries read, in order of appearance


def panels(dashboard: dict[str, Any]) -> list[Panel]:
    """Every panel, those inside collapsed rows included, in the dashboard's order."""
    found: list[Panel] = []
    for panel in dashboard["panels"]:
        for item in [panel, *panel.get("panels", [])]:
            grid = item["gridPos"]
            exprs = " ".join(target.get("expr", "") for target in item.get("targets", []))
            metrics = tuple(dict.fromkeys(_METRIC.findall(_QUOTED.sub("", exprs))))
            place = (grid["x"], grid["y"], grid["w"], grid["h"])
            found.append(Panel(item["title"], item["type"], *place, metrics))
    return found


def render(dashboard: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    laid_out = panels(dashboard)
    height = max(p.y + p.h for p in laid_out)
    figure, axes = plt.subplots(figsize=(14, 14 * height / GRID_COLUMNS * 0.55))
    for panel in laid_out:
        colour = _COLOURS.get(panel.type, "#eeeeee")
        axes.add_patch(
            Rectangle(
                (panel.x + 0.08, panel.y + 0.08),
                panel.w - 0.16,
                panel.h - 0.16,
                facecolor=colour,
                edgecolor="#555555",
                linewidth=0.8,
            )
        )
        if panel.type == "row":
            middle = panel.y + panel.h / 2
            axes.text(panel.x + 0.3, middle, panel.title, va="center", fontsize=10, weight="bold")
            continue
        width = panel.w * 4
        title = textwrap.fill(panel.title, width=width, break_on_hyphens=False, break_long_words=False)
        centre = panel.x + panel.w / 2
        axes.text(centre, panel.y + panel.h * 0.4, title, ha="center", va="center", fontsize=10)
        metrics = "\n".join(panel.metrics)
        axes.text(centre, panel.y + panel.h * 0.62, metrics, ha="center", va="top", fontsize=7, color="#333")
        axes.text(panel.x + 0.3, panel.y + panel.h - 0.35, panel.type, fontsize=7, color="#555555")
    axes.set_xlim(0, GRID_COLUMNS)
    axes.set_ylim(height, 0)  # Grafana's y grows downwards
    axes.set_xticks(range(0, GRID_COLUMNS + 1, 6))
    axes.set_yticks([])
    axes.set_title(f'Grafana dashboard "{dashboard["title"]}" (uid {dashboard["uid"]}): panel layout')
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    # No timestamps or version in the PNG's metadata: the same JSON gives the same file.
    figure.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    render(json.loads(args.dashboard.read_text()), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
