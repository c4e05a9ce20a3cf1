"""The one progress reporter: a tqdm bar on a terminal, sparse log lines everywhere else.

When stderr is a terminal, :func:`progress` is a tqdm bar. Otherwise (log files, Snakemake jobs,
pipes) it writes one INFO line through :mod:`logging` every 10 % of the total (or every 30 s when
the total is unknown or progress is slow) with the count and the throughput, and a last line at
the end — never a repainted bar.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("wsi_lpd.progress")

LINE_EVERY_FRACTION = 0.10
LINE_EVERY_S = 30.0


def _is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class LogProgress(Generic[T]):
    """A tqdm-like counter (``update``, iteration, context manager) that logs sparse lines."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable = disable
        self.n = 0
        self._start = self._last_time = time.monotonic()
        self._last_fraction = 0.0
        self._closed = False

    def _line(self) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100.0 * self.n / self.total:.0f} %)" if self.total else ""
        log.info(
            "%s: %s %s%s, %.1f %s/s, %.0f s",
            self.desc,
            done,
            self.unit,
            pct,
            rate,
            self.unit,
            elapsed,
        )

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; log a line when 10 % more are done or 30 s have passed."""
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        fraction = self.n / self.total if self.total else 0.0
        final = bool(self.total) and self.n >= self.total
        if (
            final
            or (self.total and fraction - self._last_fraction >= LINE_EVERY_FRACTION)
            or now - self._last_time >= LINE_EVERY_S
        ):
            self._last_fraction, self._last_time = fraction, now
            self._line()
            if final:
                self._closed = True

    def set_postfix_str(self, _text: str) -> None:
        """Accepted for tqdm compatibility (log lines carry counts and throughput only)."""

    def close(self) -> None:
        """Log the last line unless the total was already reached."""
        if not self._closed and not self.disable and self.n:
            self._line()
        self._closed = True

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("progress(): nothing to iterate over")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LogProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
) -> Any:
    """A progress reporter: tqdm on a terminal, :class:`LogProgress` lines otherwise.

    Use it like tqdm: ``for x in progress(items, desc="tiles", unit="tile")`` or
    ``with progress(total=n, desc=...) as bar: bar.update(k)``.
    """
    if _is_terminal() and not disable:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, disable=disable)
