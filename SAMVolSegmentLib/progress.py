"""Progress display for long steps: a bar on a terminal, a few plain lines in logs and CI.

The engine and the tools report ``progress(fraction, message)`` callbacks; the applications (CLI, teach) make
them here.
"""

from __future__ import annotations

import sys
from typing import Callable, Tuple


def make_progress(description: str, stream=None) -> Tuple[Callable[[float, str], None], Callable[[], None]]:
    """A ``progress(fraction, message)`` callback and a ``close()``.

    A tqdm bar when ``stream`` (default stderr) is a terminal and tqdm is installed; otherwise at most ~11
    plain lines on stdout (one per 10 %), which read well in logs and CI output.
    """
    stream = sys.stderr if stream is None else stream
    tqdm = None
    if hasattr(stream, "isatty") and stream.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
    if tqdm is None:
        last = [-1]

        def plain(fraction: float, message: str) -> None:
            percent = int(min(max(fraction, 0.0), 1.0) * 100)
            if percent // 10 != last[0] // 10 or (fraction >= 1.0 and last[0] < 100):
                last[0] = percent
                print(f"{description}: {percent:3d}% {message}", flush=True)

        return plain, (lambda: None)
    bar = tqdm(total=100, desc=description, file=stream,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = min(max(fraction, 0.0), 1.0) * 100
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return update, bar.close
