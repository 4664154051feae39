"""`lora-rl plot`: panel order, train/val overlay, several runs, smoothing, integer steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_rl.plotting import PlotError, ema, figure, plot_metrics, read_series


def _run(root: Path, name: str, rows: list[dict]) -> Path:
    run = root / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


ROWS = [{"step": 0, "val_loss": 3.0, "val_accuracy": 0.0},
        *({"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, "grad_norm": 2.0, "skipped_step": False}
          for s in range(1, 6)),
        {"step": 5, "val_loss": 2.4, "val_accuracy": 0.5}]


def test_loss_first_train_and_val_share_a_panel(tmp_path: Path) -> None:
    fig = figure([read_series(_run(tmp_path, "a", ROWS))], smooth=0.0)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy", "grad_norm", "lr"]
    loss = axes[0]
    assert [(line.get_label(), line.get_linestyle()) for line in loss.get_lines()] == \
        [("train", "-"), ("val", "--")]
    assert list(loss.get_lines()[1].get_xdata()) == [0, 5]
    assert loss.get_xlabel() == "step" and loss.get_ylabel() == "loss"
    assert all(float(t).is_integer() for t in loss.get_xticks())


def test_several_runs_on_one_figure(tmp_path: Path) -> None:
    runs = [read_series(_run(tmp_path, name, ROWS)) for name in ("lr-1e-3", "lr-1e-4")]
    loss = figure(runs, smooth=0.0).axes[0]
    labels = [line.get_label() for line in loss.get_lines()]
    assert labels == ["lr-1e-3: train", "lr-1e-3: val", "lr-1e-4: train", "lr-1e-4: val"]
    colours = [line.get_color() for line in loss.get_lines()]
    assert colours[0] == colours[1] != colours[2] == colours[3]


def test_smoothing_keeps_the_raw_curve_faint(tmp_path: Path) -> None:
    loss = figure([read_series(_run(tmp_path, "a", ROWS))], smooth=0.5).axes[0]
    raw, smoothed = loss.get_lines()[:2]
    assert raw.get_alpha() == 0.25 and smoothed.get_label() == "train"
    assert list(smoothed.get_ydata()) == pytest.approx(ema(list(raw.get_ydata()), 0.5))


def test_ema_is_debiased() -> None:
    # weight 0.5: 1, (0.5*1*0.5 + 0.5*3) / 0.75 = 2.333...
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_writes_png_and_reports_bad_lines(tmp_path: Path) -> None:
    run = _run(tmp_path, "a", ROWS)
    target = plot_metrics([run], smooth=0.6)
    assert target == run / "metrics.png" and target.read_bytes()[:4] == b"\x89PNG"
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n')
    with pytest.raises(PlotError, match=r"metrics.jsonl:2: not valid JSON"):
        plot_metrics([run])
