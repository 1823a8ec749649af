"""Progress of long loops (training, sampling, likelihood) on stderr, for every layer."""

from __future__ import annotations

import sys
import time


class Progress:
    """A tqdm bar when stderr is a terminal; otherwise a plain line at most every `every`
    seconds and at the end, so log files and CI output stay readable; nothing when quiet.

    Args:
        total: the count at completion.
        desc: what is counted, printed first on each line.
        initial: the count already done (a resumed run).
    """

    def __init__(
        self, total: int, desc: str, *, initial: int = 0, quiet: bool = False, every: float = 10.0
    ) -> None:
        self.total, self.desc, self.every, self.done = total, desc, every, initial
        self.quiet, self.bar, self.postfix = quiet, None, ""
        self.start = self.last = time.perf_counter()
        if not quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False
            )

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        self.postfix = postfix or self.postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.perf_counter()
        if not self.quiet and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            tail = f", {self.postfix}" if self.postfix else ""
            print(
                f"{self.desc}: {self.done}/{self.total} ({now - self.start:.1f} s{tail})",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
