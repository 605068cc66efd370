"""Progress bars and log lines: tqdm bars when stderr is a terminal, nothing under --quiet."""
from __future__ import annotations

import sys
from typing import Iterable, Optional


class Reporter:
    """`bars`: draw tqdm bars (off when quiet or stderr is not a TTY); `info`: log lines (off when quiet)."""

    def __init__(self, quiet: bool = False, bars: Optional[bool] = None):
        self.quiet = quiet
        self.bars = (not quiet and sys.stderr.isatty()) if bars is None else (bars and not quiet)

    def bar(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
            leave: bool = False, unit: str = "it", initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, leave=leave, unit=unit, disable=not self.bars,
                    dynamic_ncols=True, file=sys.stderr)

    def info(self, msg: str) -> None:
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)
