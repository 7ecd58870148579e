"""How many CPU threads a long job computes with, chosen from what the machine gives *now*.

On a quiet machine torch's default (one thread per core) is fastest. When another program
keeps a core busy (a browser, a video call), OpenMP's threads wait for the one that shares
that core at every parallel region, and one thread becomes 2-10x faster than all of them
(measured on the 2-core machine: 49 images/s with two threads, 116 with one;
benchmarks/README.md, "A busy machine"). The load comes and goes, so no fixed count is right.

`AdaptiveThreads` measures instead: a job calls `before_step()` and `after_step(seconds)`
around each unit of work (an optimizer step, a sampling step), in the thread that computes.
It times a few steps with one thread and with all of them (a *probe*), keeps the faster count,
and probes again

- when the rate falls below `drop` times the rate it chose with (load has arrived);
- when it uses fewer threads than cores and the machine has a core idle (load has left: a
  one-thread rate does not show it; read from /proc/stat on Linux, `IdleCores`), at most once
  per waiting time;
- after a waiting time that doubles while probes confirm the choice (`min_wait_s` up to
  `max_wait_s`), where idle cores cannot be read.

A probe stops timing a count after one step clearly slower than the best (a slow count costs
most while it is probed). The first step with a count never used before is not timed (OpenMP
starts its threads). A fixed count (OMP_NUM_THREADS, or `fixed`) turns adaptation off.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Probe settings: steps timed per candidate (their median counts), waits between probes.
PROBE_STEPS = 3
MIN_WAIT_S = 20.0
MAX_WAIT_S = 240.0
IDLE_CORES = 0.6  # cores idle (of the machine) that suggest a free core
IDLE_WINDOW_S = 2.0  # the shortest time over which idle cores are read
DROP = 0.6  # re-probe when the rate falls below this share of the rate at the choice
CLEARLY_SLOWER = 1.5  # a probed count whose step takes this much longer than the best is dropped
RECENT_STEPS = 5  # steps in the running rate compared with the chosen rate


@dataclass(frozen=True)
class ThreadState:
    """What a job reports about its threads: `threads` in use of `available`; `contended` when
    fewer threads were measured faster than all of them (another program keeps a core busy)."""

    threads: int
    available: int
    contended: bool
    adaptive: bool

    def note(self) -> str:
        """What a status line adds to its rate: "" when the machine gives every core."""
        if not self.contended:
            return ""
        return f" (CPU busy elsewhere: {self.threads} of {self.available} threads)"


def fixed_thread_count() -> int | None:
    """The count the user fixed with OMP_NUM_THREADS (a whole number >= 1), else None."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        count = int(text)
    except ValueError:
        return None
    return count if count >= 1 else None


class IdleCores:
    """Cores the whole machine left idle since the last call, from Linux's /proc/stat (None
    elsewhere, or when the file cannot be read)."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last: tuple[float, float] | None = self._read()

    def _read(self) -> tuple[float, float] | None:
        """(idle, total) jiffies of all cores, or None."""
        try:
            with open(self.path, encoding="ascii") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu" or len(fields) < 5:
            return None
        values = [float(v) for v in fields[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        return idle, sum(values[:8])  # user .. steal (guest time is inside user)

    def __call__(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        cores = os.cpu_count() or 1
        return cores * (now[0] - last[0]) / (now[1] - last[1])


class AdaptiveThreads:
    """Chooses torch's intra-op thread count for the calling thread, step by step.

    available: the most threads to use (default: torch's count in the thread at the first
    step); fixed: a count to keep (adaptation off); idle_cores: cores the machine left idle
    since its last call (None: unknown); set_threads, get_threads, clock: injectable for tests.
    """

    def __init__(
        self,
        available: int | None = None,
        *,
        fixed: int | None = None,
        probe_steps: int = PROBE_STEPS,
        min_wait_s: float = MIN_WAIT_S,
        max_wait_s: float = MAX_WAIT_S,
        drop: float = DROP,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        get_threads: Callable[[], int] = torch.get_num_threads,
        clock: Callable[[], float] = time.monotonic,
        idle_cores: Callable[[], float | None] | None = None,
    ) -> None:
        if fixed is None:
            fixed = fixed_thread_count()
        self.fixed = fixed
        self.available = available
        self.probe_steps = max(1, int(probe_steps))
        self.min_wait_s = float(min_wait_s)
        self.max_wait_s = float(max_wait_s)
        self.drop = float(drop)
        self._set_threads = set_threads
        self._get_threads = get_threads
        self._clock = clock
        self._idle_cores = idle_cores if idle_cores is not None else IdleCores()
        self._idle_read_at: float | None = None
        self._last_probe_end = 0.0
        self._used: set[int] = set()  # counts this thread has computed with
        self._initial: int | None = None  # the thread's count before the first step
        self._thread: int | None = None  # the thread that computes (set at the first step)
        self.threads: int | None = None  # the count in use (None before the first step)
        self.chosen: int | None = None  # the count the last probe chose
        self.chosen_rate: float | None = None  # its steps/s in that probe
        self.probes = 0  # probes finished
        self._candidates: list[int] = []  # counts still to time in the running probe
        self._timings: dict[int, list[float]] = {}  # count -> timed step seconds (this probe)
        self._skip_next = False  # the first step with a new count is not timed
        self._recent: list[float] = []
        self._wait_s = self.min_wait_s
        self._next_probe_at = 0.0

    # ------------------------------------------------------------------ state

    @property
    def adaptive(self) -> bool:
        return self.fixed is None and (self.available or 0) > 1

    @property
    def probing(self) -> bool:
        return bool(self._candidates)

    def state(self) -> ThreadState:
        available = self.available or self._get_threads()
        threads = self.threads or available
        return ThreadState(
            threads=threads,
            available=available,
            contended=self.adaptive and self.chosen is not None and self.chosen < available,
            adaptive=self.adaptive,
        )

    # ------------------------------------------------------------------ steps

    def before_step(self) -> None:
        """Set this thread's count for the next step (starting a probe when one is due)."""
        if self.threads is None:
            self._first_step()
        if not self.adaptive:
            return
        if not self.probing and (self._clock() >= self._next_probe_at or self._core_freed()):
            self._start_probe()
        if self.probing:
            self._use(self._candidates[0])

    def after_step(self, seconds: float) -> None:
        """Record the step that just ran (its compute time in seconds)."""
        if not self.adaptive or self.threads is None or seconds <= 0:
            return
        if self._skip_next:
            self._skip_next = False
            return
        if self.probing:
            count = self._candidates[0]
            timings = self._timings.setdefault(count, [])
            timings.append(seconds)
            best = self._best_step_s()
            # one clearly slow step settles it: a slow count costs most while it is probed
            clearly_slower = best is not None and seconds > CLEARLY_SLOWER * best
            if len(timings) >= self.probe_steps or clearly_slower:
                self._candidates.pop(0)
                if not self._candidates:
                    self._finish_probe()
            return
        self._recent.append(seconds)
        del self._recent[:-RECENT_STEPS]
        if self.chosen_rate is not None and len(self._recent) == RECENT_STEPS:
            rate = 1.0 / statistics.median(self._recent)
            if rate < self.drop * self.chosen_rate:  # load arrived: measure again now
                self._wait_s = self.min_wait_s
                self._next_probe_at = self._clock()

    def restore(self) -> None:
        """Give the thread back the count it had before the first step (only in that thread:
        a generator closed by the garbage collector elsewhere must not change another's)."""
        if threading.get_ident() != self._thread:
            return
        if self._initial is not None and self.threads != self._initial:
            self._set_threads(self._initial)
            self.threads = self._initial

    # ------------------------------------------------------------------ internals

    def _core_freed(self) -> bool:
        """Fewer threads than cores in use, and a core of the machine left idle meanwhile."""
        assert self.available is not None
        now = self._clock()
        if self.threads is None or self.threads >= self.available:
            self._idle_read_at = None
            return False
        if self._idle_read_at is None:
            self._idle_cores()  # start a reading window
            self._idle_read_at = now
            return False
        if now - self._idle_read_at < IDLE_WINDOW_S:
            return False
        idle = self._idle_cores()
        self._idle_read_at = now
        return (
            idle is not None
            and idle >= IDLE_CORES
            and now - self._last_probe_end >= self.min_wait_s
        )

    def _first_step(self) -> None:
        self._thread = threading.get_ident()
        if self.fixed is not None:
            self._initial = self._get_threads()
            self.threads = self._initial
            self._use(self.fixed)
            self.available = self.fixed
            return
        if self.available is None:
            self.available = max(1, self._get_threads())
        self.threads = self._get_threads()
        self._initial = self.threads
        self._used.add(self.threads)
        if self.threads != self.available:
            self._use(self.available)

    def _use(self, count: int) -> None:
        if count != self.threads:
            self._set_threads(count)
            self.threads = count
            self._skip_next = count not in self._used
            self._used.add(count)

    def _best_step_s(self) -> float | None:
        """The fastest step time known: the probe's finished counts, else the last choice's."""
        finished = [
            statistics.median(times)
            for count, times in self._timings.items()
            if count not in self._candidates
        ]
        if finished:
            return min(finished)
        return 1.0 / self.chosen_rate if self.chosen_rate else None

    def _start_probe(self) -> None:
        assert self.available is not None
        current = self.chosen or self.available
        # the other count first, so the probe ends on the count in use when it is kept
        others = [c for c in (self.available, 1) if c != current]
        self._candidates = [*others, current]
        self._timings = {}
        self._recent = []

    def _finish_probe(self) -> None:
        medians = {count: statistics.median(times) for count, times in self._timings.items()}
        best = min(medians, key=lambda count: medians[count])
        confirmed = best == self.chosen
        self.chosen = best
        self.chosen_rate = 1.0 / medians[best]
        self.probes += 1
        self._use(best)
        # a probe that confirms the choice waits twice as long before the next one
        self._wait_s = min(self._wait_s * 2, self.max_wait_s) if confirmed else self.min_wait_s
        self._last_probe_end = self._clock()
        self._next_probe_at = self._last_probe_end + self._wait_s
        self._idle_read_at = None
