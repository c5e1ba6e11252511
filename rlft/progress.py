"""What the driver shows while an epoch runs: how many images are sampled and items trained so far.

On a real model an epoch takes minutes. On a terminal a progress bar (tqdm) follows the epoch's current phase
and is gone when the epoch's line is printed. In a log (stdout not a terminal) a plain line comes once the
epoch has run `every_s` seconds (30), then at twice, 4 times, 8 times that: a 15-second epoch prints
nothing, a 10-minute one five lines, an hour-long one seven. Only the driver shows anything: the backends
count what their sampler chunks and train workers finished (rlft/local.py, rlft/distributed/ray_loop.py).
"""

import sys
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm import tqdm

from rlft.algorithms.backend import Log

UNITS = {"sampled": "images", "trained": "items", "evaluated": "images"}
EVERY_S = 30.0  # a log's first line of an epoch comes after this many seconds


class Progress:
    """Counts of one stretch of work (an epoch, the base model's evaluation): `expect` adds to a phase's
    total, `advance` to what is done, `tick` lets a plain line come when none advanced."""

    def __init__(
        self,
        log: Log,
        every_s: float = EVERY_S,
        bar: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.every_s, self.bar, self.clock = log, every_s, bar, clock
        self.shown: tqdm | None = None  # the terminal's bar, of the phase named `shown_phase`
        self.shown_phase = ""
        self.begin("")

    def begin(self, label: str) -> None:
        """Start counting a new stretch of work, named `label` in its lines."""
        self.close()
        self.label, self.counts = label, {}  # {phase: [done, total]}
        self.start, self.next_at = self.clock(), self.every_s

    def expect(self, phase: str, total: int) -> None:
        counts = self.counts.setdefault(phase, [0, 0])
        counts[1] += total
        if self.bar:
            self._show(phase)

    def advance(self, phase: str, count: int) -> None:
        self.counts.setdefault(phase, [0, 0])[0] += count
        if self.shown is not None and phase == self.shown_phase:
            self.shown.update(count)
        self.tick()

    def tick(self) -> None:
        """A plain line when one is due (never with a bar)."""
        elapsed = self.clock() - self.start
        if self.bar or not self.counts or elapsed < self.next_at:
            return
        self.log(self.line(elapsed))
        while 0 < self.next_at <= elapsed:  # every_s, then twice that, 4 times, ... (0: every count)
            self.next_at *= 2

    def line(self, elapsed: float) -> str:
        """'  epoch 3 | 95 s | sampled 256/256 images | trained 1200/3840 items'"""
        parts = [f"  {self.label}" if self.label else " ", f"{elapsed:.0f} s"]
        for phase, (done, total) in self.counts.items():
            parts.append(f"{phase} {done}/{total} {UNITS.get(phase, '')}".rstrip())
        return " | ".join(parts)

    def close(self) -> None:
        """Take the bar off the terminal (before the epoch's line is printed)."""
        if self.shown is not None:
            self.shown.close()
            self.shown = None

    def _show(self, phase: str) -> None:
        done, total = self.counts[phase]
        if self.shown is not None and phase == self.shown_phase:  # DDPO's next pass: the total grows
            self.shown.total = total
            self.shown.refresh()
            return
        self.close()
        self.shown_phase = phase
        description = f"{self.label}: {phase}" if self.label else phase
        self.shown = tqdm(
            total=total,
            initial=done,
            desc=description,
            unit=UNITS.get(phase, ""),
            leave=False,
            file=sys.stdout,
        )


def progress_for(log: Log) -> Progress:
    """A bar when the run prints to a terminal, plain lines in `log` otherwise."""
    return Progress(log, EVERY_S, bar=log is print and sys.stdout.isatty())


def quiet() -> Progress:
    """Counts that are shown nowhere (a backend used outside a run's loop)."""
    return Progress(lambda line: None)


def counted(batches: Iterable[dict], add: Callable[[int], None]) -> Iterator[dict]:
    """The batches, each one's item count given to `add` once it is trained (when the next is asked for)."""
    for batch in batches:
        yield batch
        add(len(batch["prompt"]))
