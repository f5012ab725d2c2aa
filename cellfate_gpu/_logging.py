"""CellRank-style timed log lines and progress bars.

.. code-block:: text

    Computing transition matrix based on pseudotime
        Finish (0.21s)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

from cellfate_gpu._settings import settings

__all__ = ["logger", "progress", "progress_bar", "timed", "info", "warning", "debug"]

logger = logging.getLogger("cellfate_gpu")
_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class _SettingsFilter(logging.Filter):
    """Drop records below the current ``settings.verbosity`` (read at emit time, so scoped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= _LEVELS[settings.verbosity]


if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _handler.addFilter(_SettingsFilter())
    logger.addHandler(_handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def info(msg: str, *args) -> None:
    """Log at INFO."""
    logger.info(msg, *args)


def warning(msg: str, *args) -> None:
    """Log at WARNING (prefixed like CellRank's ``WARNING:``)."""
    logger.warning("WARNING: " + msg, *args)


def debug(msg: str, *args) -> None:
    """Log at DEBUG."""
    logger.debug(msg, *args)


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s"


@contextlib.contextmanager
def timed(msg: str, *args) -> Iterator[dict]:
    """Log ``msg``, run the block, then log ``    Finish (0.21s)``.

    The yielded dict may receive ``"note"``, appended to the finish line
    (e.g. ``"matvecs=412"``).
    """
    info(msg, *args)
    state: dict = {}
    start = time.perf_counter()
    yield state
    elapsed = time.perf_counter() - start
    state["seconds"] = elapsed
    note = f", {state['note']}" if state.get("note") else ""
    info("    Finish (%s%s)", _format_seconds(elapsed), note)


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterable:
    """Wrap a long loop in a tqdm bar that is shown only at INFO verbosity or above."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=settings.verbosity < 2, file=sys.stderr)


def progress_bar(*, total: int | None = None, desc: str = "", unit: str = "it", delay: float = 2.0) -> tqdm:
    """A manual tqdm bar (``update``/``set_postfix_str``/``close``) for loops without an iterable.

    Shown only at INFO verbosity or above, and only once it has run ``delay`` seconds, so short
    computations print nothing.
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=settings.verbosity < 2, file=sys.stderr, delay=delay)
