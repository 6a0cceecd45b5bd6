"""Plots for the HTML report: pure functions that take plain data and return a matplotlib Figure.

matplotlib is imported inside the functions (Agg, no pyplot), so importing this module is cheap.
Text that comes from data (variant names, labels) goes through `_plain`, so that a `$` in it is drawn
as a dollar sign, never parsed as mathtext. Class-level views (confusion matrix, per-class metrics) are
HTML tables in the template: crisp at any zoom, hoverable, and cheap to build.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

DPI = 100
TRAIN_COLOR = "#2563eb"
VAL_COLOR = "#f97316"
# A colour-blind-friendly cycle (Okabe-Ito) for the variants on the trend chart.
VARIANT_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titley": 1.0,       # fixed title position: skips matplotlib's costly automatic placement
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.8,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}


def _plain(text) -> str:
    """Data text for matplotlib: escape `$` so it is shown literally instead of starting mathtext."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float):
    # Fixed margins instead of a layout engine: the layout pass would double the drawing time.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _styled():
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def training_curves(history: Sequence[Mapping], variant: str, best_epoch: int | None = None):
    """Accuracy and loss per epoch, train vs validation, side by side; the best epoch is marked.

    Args:
        history: per-epoch dicts with `epoch, accuracy, val_accuracy, loss, val_loss` (missing keys are skipped).
    """
    with _styled():
        fig = _figure(7.0, 2.5)
        axes = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.075, right=0.985, bottom=0.18, top=0.89, wspace=0.22)
        epochs = [int(h.get("epoch") or i + 1) for i, h in enumerate(history)]
        for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
            for key, label, color in ((metric, "train", TRAIN_COLOR), (f"val_{metric}", "validation", VAL_COLOR)):
                points = [(e, h.get(key)) for e, h in zip(epochs, history, strict=True) if h.get(key) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, color=color, label=label)
            if best_epoch:
                ax.axvline(best_epoch, color="#9ca3af", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
            ax.set_title(f"{title} — {_plain(variant)}")
            ax.set_xlabel("epoch", labelpad=1)
            if epochs:
                ax.set_xticks(_epoch_ticks(epochs))
                if len(epochs) == 1:
                    ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
            if not history:
                ax.text(0.5, 0.5, "no history recorded", ha="center", va="center", transform=ax.transAxes,
                        color="#6b7280")
        if axes[1].get_legend_handles_labels()[0]:
            axes[1].legend(loc="best")
    return fig


def _epoch_ticks(epochs: Sequence[int]) -> list[int]:
    lo, hi = min(epochs), max(epochs)
    step = max(1, (hi - lo) // 8 + 1)
    return list(range(lo, hi + 1, step))


def accuracy_trend(series: Mapping[str, Sequence[Mapping]], current: datetime | None = None,
                   others: Mapping[str, Sequence[Sequence[Mapping]]] | None = None):
    """Test accuracy of each variant across runs of one lineage (x = run date), with 95% bands; the run of this
    report is marked. Runs on other test sets are drawn apart: one faint dashed line per (variant, lineage).

    Args:
        series: variant -> points `{logical_date: datetime, accuracy: float | None, ci: (low, high) | None}`,
            oldest first, all of this run's lineage.
        current: date of the run this report is about (a vertical line), if any.
        others: variant -> list of point lists, one per other lineage (never joined with `series`).
    """

    with _styled():
        fig = _figure(10.5, 2.8)
        ax = fig.subplots()
        fig.subplots_adjust(left=0.06, right=0.84, bottom=0.14, top=0.9)
        plotted, other_labelled = 0, False
        for i, (variant, points) in enumerate(series.items()):
            color = VARIANT_COLORS[i % len(VARIANT_COLORS)]
            for other in (others or {}).get(variant, []):
                opts = [(p["logical_date"], p["accuracy"]) for p in other
                        if p.get("logical_date") is not None and p.get("accuracy") is not None]
                if opts:
                    xs, ys = zip(*opts, strict=True)
                    ax.plot(xs, ys, color=color, alpha=0.35, linewidth=1, linestyle="--", marker="x", markersize=3,
                            label=None if other_labelled else "other test sets")
                    other_labelled = True
            pts = [p for p in points if p.get("logical_date") is not None and p.get("accuracy") is not None]
            if not pts:
                continue
            xs, ys = [p["logical_date"] for p in pts], [p["accuracy"] for p in pts]
            banded = [p for p in pts if p.get("ci")]
            if banded:
                ax.fill_between([p["logical_date"] for p in banded], [p["ci"][0] for p in banded],
                                [p["ci"][1] for p in banded], color=color, alpha=0.15, linewidth=0)
                if len(banded) == 1:
                    ax.errorbar([banded[0]["logical_date"]], [banded[0]["accuracy"]], color=color, capsize=3,
                                yerr=[[banded[0]["accuracy"] - banded[0]["ci"][0]],
                                      [banded[0]["ci"][1] - banded[0]["accuracy"]]])
            many = len(pts) > 60
            ax.plot(xs, ys, color=color, linewidth=1.2 if many else 1.6,
                    marker=None if many else "o", markersize=3, label=_plain(variant))
            plotted += 1
        if current is not None:
            ax.axvline(current, color="#6b7280", linestyle=":", linewidth=1, label="this run")
        if not plotted:
            ax.text(0.5, 0.5, "no accuracy recorded yet", ha="center", va="center", transform=ax.transAxes,
                    color="#6b7280")
        dates = sorted({p["logical_date"] for points in series.values() for p in points if p.get("logical_date")}
                       | {p["logical_date"] for lines in (others or {}).values() for points in lines for p in points
                          if p.get("logical_date")})
        _date_axis(ax, dates)
        ax.set_ylabel("test accuracy")
        ax.set_title("Test accuracy across runs on this test set (lineage)")
        if plotted:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def reliability_diagram(bins: Sequence[Mapping], bins_scaled: Sequence[Mapping] | None, variant: str,
                        ece: float | None, ece_scaled: float | None, temperature: float | None):
    """Accuracy against mean confidence per confidence bin, before and after temperature scaling; the diagonal
    is perfect calibration and the bars' shading the share of images in each bin.

    Args:
        bins: `{low, high, count, confidence, accuracy}` per bin (`tl_tasks.training.calibration.reliability`).
    """
    with _styled():
        fig = _figure(3.8, 3.7)
        ax = fig.subplots()
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.33, top=0.92)
        total = sum(b.get("count") or 0 for b in bins) or 1
        for b in bins:
            if b.get("accuracy") is not None:
                ax.bar((b["low"] + b["high"]) / 2, b["accuracy"], width=b["high"] - b["low"], color=TRAIN_COLOR,
                       alpha=0.25 + 0.6 * min(1.0, 5 * b["count"] / total), edgecolor="white", linewidth=0.5)
        ax.plot([0, 1], [0, 1], color="#6b7280", linestyle="--", linewidth=1, label="perfect calibration")
        for series, color, label in ((bins, TRAIN_COLOR, f"as trained (ECE {_ece(ece)})"),
                                     (bins_scaled or [], VAL_COLOR, f"T = {temperature or 1:.2f} (ECE {_ece(ece_scaled)})")):
            pts = [(b["confidence"], b["accuracy"]) for b in series if b.get("accuracy") is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.4, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)", labelpad=1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Reliability — {_plain(variant)}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: bins may fill any corner
    return fig


def _ece(value) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def metric_trends(series: Mapping[str, Mapping[str, Sequence[Mapping]]], current: datetime | None = None):
    """Small multiples across runs of one lineage: one panel per metric (e.g. ECE, accuracy under corruption),
    one line per variant. `series`: metric title -> variant -> points `{logical_date, value}`, oldest first."""
    with _styled():
        fig = _figure(10.5, 2.4)
        axes = fig.subplots(1, max(1, len(series)), squeeze=False)[0]
        fig.subplots_adjust(left=0.06, right=0.84, bottom=0.2, top=0.88, wspace=0.22)
        variants = list(dict.fromkeys(v for lines in series.values() for v in lines))
        for ax, (title, lines) in zip(axes, series.items(), strict=False):
            for variant, points in lines.items():
                pts = [(p["logical_date"], p["value"]) for p in points if p.get("value") is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    color = VARIANT_COLORS[variants.index(variant) % len(VARIANT_COLORS)]
                    ax.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.4, label=_plain(variant))
            if current is not None:
                ax.axvline(current, color="#6b7280", linestyle=":", linewidth=1)
            ax.set_title(_plain(title))
            _date_axis(ax, sorted({p["logical_date"] for points in lines.values() for p in points
                                   if p.get("value") is not None}))
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            h, lab = ax.get_legend_handles_labels()
            handles += [x for x, y in zip(h, lab, strict=True) if y not in labels]
            labels += [y for y in lab if y not in labels]
        if handles:
            axes[-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _date_axis(ax, dates: Sequence[datetime]) -> None:
    """Run dates on the x axis: one tick per run when there are few, an automatic scale otherwise."""
    from matplotlib import dates as mdates

    if not dates:
        return
    if len(dates) <= 6:  # few runs: one tick per run date reads better than an automatic scale
        same_days = dates[-1] - dates[0] < timedelta(days=3)
        ax.set_xticks(dates, labels=[d.strftime("%m-%d\n%H:%M" if same_days else "%Y-%m-%d") for d in dates])
        if len(dates) == 1:
            ax.set_xlim(dates[0] - timedelta(days=3), dates[0] + timedelta(days=3))
    else:
        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def figure_to_data_uri(fig) -> str:
    """PNG bytes of a Figure as a `data:` URI for an inline <img>."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
