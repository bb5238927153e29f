"""Progress reporting: a live tqdm bar on a terminal, plain lines every few percent otherwise.

A redirected run (a log file, CI) gets one short line per ``every`` percent instead of
hundreds of kilobytes of carriage-return frames.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


class Progress:
    def __init__(
        self, total: int, initial: int, desc: str, enabled: bool = True, every: float = 5.0
    ) -> None:
        self.total, self.step, self.desc, self.every = total, initial, desc, every
        self.enabled = enabled
        self.loss: float | None = None
        self.best: str = ""  # the best validation so far, as shown
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
            best = f" best {self.best}" if self.best else ""
            print(
                f"{self.desc}: {100 * self.step / max(self.total, 1):3.0f}% "
                f"({self.step}/{self.total}){loss}{best} {rate:.2f} it/s, "
                f"eta {eta / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )

    def set_loss(self, value: float) -> None:
        """The latest training loss, shown from the next update on."""
        self.loss = value
        self._postfix()

    def new_best(self, name: str, value: float, step: int) -> None:
        """A new best validation: shown on the bar and said on a line of its own."""
        self.best = f"{name} {value:.4f} @{step}"
        self._postfix()
        if self.enabled:
            self.write(f"{self.desc}: step {step}: new best {name} {value:.4f}")

    def write(self, line: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _postfix(self) -> None:
        if self.bar is not None:
            shown = {} if self.loss is None else {"loss": f"{self.loss:.4f}"}
            shown |= {"best": self.best} if self.best else {}
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_active: list[Progress] = []


@contextmanager
def counting(total: int, desc: str, enabled: bool = True) -> Iterator[Progress]:
    """A bar that ``advance`` moves from code that does not know about it (scoring test
    tasks deep inside ``cmlearn.app.evaluate``); nothing is shown where none is open."""
    bar = Progress(total, 0, desc, enabled)
    _active.append(bar)
    try:
        yield bar
    finally:
        _active.remove(bar)
        bar.close()


def advance(n: int) -> None:
    """``n`` more items done, for every bar ``counting`` holds open."""
    for bar in _active:
        bar.update(n)
