"""How the report and the index show numbers, dates and changes: pure functions, registered as Jinja filters.

A missing value shows as "—". Templates apply the filters (`{{ r.accuracy|pct }}`); sentences built in Python
(the headline, captions) call the same functions, so a number reads the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Delta:
    value: float
    text: str
    arrow: str
    css: str
    title: str


def delta(new, old, *, higher_is_better: bool = True, scale: float = 100.0, digits: int = 1,
          unit: str = " pts") -> Delta | None:
    """A change marked up/down; green when it is an improvement (for loss, down is better)."""
    if new is None or old is None:
        return None
    change = float(new) - float(old)
    shown = round(change * scale, digits)
    if shown == 0:
        return Delta(change, f"±{0:.{digits}f}{unit}", "=", "flat", "no change")
    better = (change > 0) == higher_is_better
    return Delta(change, f"{shown:+.{digits}f}{unit}".replace("-", "−"), "▲" if change > 0 else "▼",
                  f"{'up' if change > 0 else 'down'} {'good' if better else 'bad'}",
                  "better" if better else "worse")


def pct(value) -> str:
    return "—" if value is None else f"{float(value) * 100:.2f}%"


def fixed(value, digits: int) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"


def integer(value) -> str:
    return "—" if value is None else f"{int(value):,}"


def rate(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def params(trainable, total) -> str:
    if total is None and trainable is None:
        return "—"
    if trainable is None or trainable == total:
        return count(total)
    return f"{count(trainable)} / {count(total)}"


def count(n) -> str:
    if n is None:
        return "—"
    n = int(n)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.{1 if n >= 10 * size else 2}f} {suffix}"
    return str(n)


def weights(value) -> str:
    if not value:
        return "—"
    text = str(value)
    return {"none": "random init", "imagenet": "ImageNet"}.get(text.lower(), text)


def duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def as_datetime(value) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def date_text(value) -> str:
    when = as_datetime(value)
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else ""



def p_value(p: float) -> str:
    """A p-value in words for a paired comparison: "p < 0.0001", "p = 0.0031", "p = 0.12"."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.2f}"


def p_short(p: float) -> str:
    """A p-value in two significant digits, for the index's crowded cells: "p < 0.0001", "p = 0.012"."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def uncertainty(d: dict) -> str:
    """"95% CI −2.9 to −0.4 pts; p = 0.012" for a paired comparison (a gate decision or compare_paired)."""
    if d.get("delta_ci") is None or d.get("p_value") is None:
        return ""
    low, high = (x * 100 for x in d["delta_ci"])
    confidence = round((1 - (d.get("alpha") or 0.05)) * 100)
    return f"{confidence}% CI {low:+.1f} to {high:+.1f} pts; {p_value(d['p_value'])}".replace("-", "−")



def interval(ci, alpha: float | None = None) -> str:
    """"95% CI 81.2–84.0%" for an accuracy interval at confidence 1 - alpha (the gate's)."""
    return "" if ci is None else f"{round((1 - (alpha or 0.05)) * 100)}% CI {ci[0] * 100:.1f}–{ci[1] * 100:.1f}%"



FILTERS = {"pct": pct, "fixed": fixed, "integer": integer, "rate": rate, "params": params, "count": count,
           "weights": weights, "duration": duration, "date": date_text, "interval": interval,
           "uncertainty": uncertainty, "p_value": p_value, "p_short": p_short}
