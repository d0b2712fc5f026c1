"""Progress on stderr for the commands: one line per phase, with a live clock while a
compiled call runs (whose length is unknown), and bars where the amount of work is known.

`set_enabled(False)` (the CLI's `--quiet`) turns everything off.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator

_enabled = True


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def bar(total: int, desc: str, unit: str = "run", initial: int = 0):
    """A tqdm bar on stderr (`None` when progress is off)."""
    if not _enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def each(items: Iterable, desc: str, unit: str = "step") -> Iterator:
    """Iterate over `items` with a bar."""
    items = list(items)
    b = bar(len(items), desc, unit)
    for item in items:
        yield item
        if b is not None:
            b.update(1)
    if b is not None:
        b.close()


@contextlib.contextmanager
def phase(desc: str) -> Iterator[None]:
    """Show `desc` with a clock that ticks while the block runs (a compiled call cannot
    report its own progress), then how long it took."""
    if not _enabled:
        yield
        return
    start = time.perf_counter()
    stop = threading.Event()
    live = sys.stderr.isatty()

    def tick() -> None:
        while not stop.wait(0.5):
            sys.stderr.write(f"\r{desc} ... {time.perf_counter() - start:5.1f} s")
            sys.stderr.flush()

    if live:
        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
    else:
        sys.stderr.write(f"{desc} ...\n")
    try:
        yield
    finally:
        stop.set()
        if live:
            thread.join()
        back = "\r" if live else ""
        sys.stderr.write(f"{back}{desc}: {time.perf_counter() - start:.1f} s\n")
        sys.stderr.flush()
