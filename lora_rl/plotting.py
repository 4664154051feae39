"""`lora-rl plot RUN_DIR`: one panel per numeric metric of metrics.jsonl, written as a PNG."""

from __future__ import annotations

import json
from pathlib import Path


class PlotError(ValueError):
    pass


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path:
    source = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not source.is_file():
        raise PlotError(f"{source} not found (pass the run's logger.log_dir)")
    rows = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise PlotError(f"{source}:{number}: not valid JSON") from None
    keys = sorted({k for r in rows for k, v in r.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not keys:
        raise PlotError(f"{source} has no numeric metrics")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):  # the grid may have spare cells
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    target = out or source.with_suffix(".png")
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
