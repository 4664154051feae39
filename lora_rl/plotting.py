"""`lora-rl plot RUN_DIR...`: metrics.jsonl of one or more runs as one PNG.

One panel per metric, loss first; a metric and its `val_` twin share a panel (train solid,
validation dashed), each run in its own colour, so runs compare at a glance. `--smooth` adds an
exponential moving average over the raw curve, which stays visible underneath.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_rl.errors import LoraRlError

FIRST = ("loss", "reward", "accuracy")
"""Panels in this order; the rest alphabetically."""


class PlotError(LoraRlError, ValueError):
    pass


Series = dict[str, list[tuple[int, float]]]


def read_series(run: Path) -> tuple[Path, Series]:
    source = run / "metrics.jsonl" if run.is_dir() else run
    if not source.is_file():
        raise PlotError(f"{source} not found (pass the run's logger.log_dir)")
    series: Series = {}
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PlotError(f"{source}:{number}: not valid JSON") from None
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    if not series:
        raise PlotError(f"{source} has no numeric metrics")
    return source, series


def panel_of(key: str) -> str:
    return key.removeprefix("val_")


def panel_order(keys: set[str]) -> list[str]:
    panels = {panel_of(k) for k in keys}
    return [p for p in FIRST if p in panels] + sorted(panels - set(FIRST))


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: debiased exponential moving average."""
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def plot_metrics(runs: list[Path], out: Path | None = None, smooth: float = 0.0) -> Path:
    if not 0.0 <= smooth < 1.0:
        raise PlotError(f"--smooth {smooth}: use a weight in [0, 1), e.g. 0.6")
    loaded = [read_series(run) for run in runs]
    import matplotlib.pyplot as plt

    fig = figure(loaded, smooth)
    target = out or loaded[0][0].with_suffix(".png")
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def figure(loaded: list[tuple[Path, Series]], smooth: float):
    """The matplotlib figure of `read_series` results."""
    panels = panel_order({k for _, series in loaded for k in series})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.4 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels, strict=False):  # the grid may have spare cells
        for index, (source, series) in enumerate(loaded):
            run_name = source.parent.name if len(loaded) > 1 else None
            for key, style in ((panel, "-"), (f"val_{panel}", "--")):
                _draw(ax, series.get(key, []), style, colours[index % len(colours)],
                      _label(run_name, key), smooth)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.set_ylabel(panel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _label(run_name: str | None, key: str) -> str:
    split = "val" if key.startswith("val_") else "train"
    return f"{run_name}: {split}" if run_name else split


def _draw(ax, points: list[tuple[int, float]], style: str, colour: str, label: str,
          smooth: float) -> None:
    if not points:
        return
    steps, values = [p[0] for p in points], [p[1] for p in points]
    marker = "." if len(points) < 30 else None
    if smooth and len(points) > 2:
        ax.plot(steps, values, style, color=colour, alpha=0.25, linewidth=1)
        ax.plot(steps, ema(values, smooth), style, color=colour, label=label)
    else:
        ax.plot(steps, values, style, color=colour, marker=marker, label=label)
