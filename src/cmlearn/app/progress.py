"""Progress reporting: a live tqdm bar on a terminal, plain lines every few percent otherwise.

A redirected run (a log file, CI) gets one short line per ``every`` percent instead of
hundreds of kilobytes of carriage-return frames.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(
        self, total: int, initial: int, desc: str, enabled: bool = True, every: float = 5.0
    ) -> None:
        self.total, self.step, self.desc, self.every = total, initial, desc, every
        self.enabled = enabled
        self.loss: float | None = None
        self.bar = None
        self._start, self._start_step = time.perf_counter(), initial
        self._next = self._threshold(initial)
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def _threshold(self, step: int) -> int:
        chunk = max(1, round(self.total * self.every / 100))
        return (step // chunk + 1) * chunk

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (self.step >= self._next or self.step == self.total):
            self._next = self._threshold(self.step)
            elapsed = time.perf_counter() - self._start
            rate = (self.step - self._start_step) / max(elapsed, 1e-9)
            eta = (self.total - self.step) / rate if rate > 0 else float("nan")
            loss = "" if self.loss is None else f" loss {self.loss:.4f}"
            print(
                f"{self.desc}: {100 * self.step / max(self.total, 1):3.0f}% "
                f"({self.step}/{self.total}){loss} {rate:.2f} it/s, eta {eta / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )

    def set_loss(self, value: float) -> None:
        self.loss = value
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
