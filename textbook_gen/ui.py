"""Terminal display for long work: a rich progress bar over the engine's live counters."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from textbook_gen.generator import GenerationStats
from textbook_gen.progress import Progress as RunProgress


class RichProgress(RunProgress):
    def __init__(self, console: Console, *, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self._stages: dict[str, TaskID] = {}
        self._stage_bar: Progress | None = None

    @contextlib.contextmanager
    def generation(self, stats: GenerationStats, label: str = "generate") -> Iterator[None]:
        if not self.enabled:
            yield
            return
        bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console, redirect_stdout=False,
            transient=False,
        )
        task = bar.add_task("generate", total=stats.total, detail="")
        with bar, _every(0.25, lambda: bar.update(task, completed=stats.done,
                                                  detail=describe(stats))):
            yield

    def stage(self, name: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._stage_bar is None:
            self._stage_bar = Progress(
                TextColumn("[bold]{task.description:>12}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console, redirect_stdout=False,
            )
            self._stage_bar.start()
        if name not in self._stages:
            self._stages[name] = self._stage_bar.add_task(name, total=total or None)
        self._stage_bar.update(self._stages[name], completed=done, total=total or None)

    def close(self) -> None:
        if self._stage_bar is not None:
            self._stage_bar.stop()
            self._stage_bar = None

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]{text}")


class PlainProgress(RunProgress):
    """Progress for pipes, logs and schedulers: one plain line on stderr every ``interval``
    seconds (and at the end of each stage), never a redrawn bar."""

    def __init__(self, console: Console, *, interval: float = 10.0):
        self.console = console
        self.interval = interval
        self._last: dict[str, float] = {}

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def generation(self, stats: GenerationStats, label: str = "generate") -> Iterator[None]:
        with _every(self.interval, lambda: self._line(
                f"{label}: {stats.done:,}/{stats.total:,} jobs · " + _plain(describe(stats)))):
            yield

    def stage(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last.get(name, 0.0) >= self.interval or (total and done >= total):
            self._last[name] = now
            self._line(f"{name}: {done:,}" + (f"/{total:,}" if total else "") + " documents")

    def message(self, text: str) -> None:
        self._line(text)


@contextlib.contextmanager
def _every(seconds: float, show: Callable[[], None]) -> Iterator[None]:
    """Call ``show`` every ``seconds`` from a thread while the block runs, and once at its end."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            show()

    poller = threading.Thread(target=loop, daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()
        show()


def _plain(text: str) -> str:
    import re

    return re.sub(r"\[/?[a-z ]*\]", "", text)


def make_progress(console: Console, *, quiet: bool) -> RunProgress:
    """A bar on a terminal, plain periodic lines elsewhere, nothing with --quiet."""
    if quiet:
        return RichProgress(console, enabled=False)
    return RichProgress(console) if console.is_terminal else PlainProgress(console)


def describe(s: GenerationStats) -> str:
    elapsed = max(time.monotonic() - s.started, 1e-6)
    rate = (s.done - s.cached) / elapsed
    made = s.output_tokens + s.streaming_tokens
    parts = [f"{rate:.1f} req/s", f"{made / elapsed:.0f} tok/s",
             f"{s.input_tokens + made:,} tok"]
    if s.cost_known:
        projected = s.projected_cost
        parts.append(f"${s.cost_usd:.4f}" + (f" of ~${projected:.4f}" if projected else ""))
    if s.cached:
        parts.append(f"{s.cached} stored")
    if s.retries:
        parts.append(f"{s.retries} retries")
    if s.failed:
        parts.append(f"[red]{s.failed} failed[/]")
    if s.in_flight:
        parts.append(f"{s.in_flight} in flight")
    return " · ".join(parts)
