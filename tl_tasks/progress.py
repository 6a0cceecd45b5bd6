"""Progress of long stages, kept light (no Keras, no tqdm): a bar redrawn in place on a terminal, and in logs
(a task log, a pipe) one line per step, at most every `log_every` items or seconds, plus a final line.

Keras's own loops take `keras_verbose()`: 1 = its progress bar on a terminal, 2 = one line per call/epoch.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tl_tasks.progress")
BAR_WIDTH = 30


def interactive(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def keras_verbose() -> int:
    """Keras `verbose` for fit/predict/evaluate: a bar on a terminal, one line per epoch or call in logs."""
    return 1 if sys.stdout.isatty() else 2


class Progress:
    """`with Progress("decoding images", total=n) as p: ... p.update()`; `total=None` when unknown (a stream)."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "images", stream=None,
                 log_every_s: float = 10.0, log_steps: int = 10):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = interactive(self.stream)
        self.done = 0
        self.log_every_s = log_every_s
        self.step = max(1, (total or 0) // log_steps) if total else None
        self._next_log = self.step
        self._started = self._last_log = self._last_draw = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.1 or (self.total and self.done >= self.total):
                self._draw(now)
            return
        due_by_count = self._next_log is not None and self.done >= self._next_log
        if due_by_count or now - self._last_log >= self.log_every_s:
            self._log(now)
            while self._next_log is not None and self._next_log <= self.done:
                self._next_log += self.step

    def close(self) -> None:
        now = time.monotonic()
        if self.tty:
            self._draw(now)
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._log(now, final=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._started, 1e-9)
        rate = f"{self.done / elapsed:,.0f} {self.unit}/s"
        if self.total:
            return f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%}), {elapsed:.1f} s, {rate}"
        return f"{self.label}: {self.done:,} {self.unit}, {elapsed:.1f} s, {rate}"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        if self.total:
            filled = int(BAR_WIDTH * min(self.done / self.total, 1))
            bar = "[" + "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * max(BAR_WIDTH - filled - 1, 0) + "] "
        else:
            bar = ""
        self.stream.write("\r" + bar + self.line(now))
        self.stream.flush()

    def _log(self, now: float, final: bool = False) -> None:
        self._last_log = now
        log.info("%s%s", self.line(now), " (done)" if final else "")
