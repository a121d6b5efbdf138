"""The live watch: catches collapse while the run is paid for.

Over a sliding window of the most recent answers of each document kind it tracks the share of
the most common opening (``measures.opening``) and the share of answers that have a near
duplicate in the window: a 64-permutation MinHash of word 5-grams per answer, banded 8 x 8
(LSH), so an answer is checked against the whole window by 8 dictionary lookups. Crossing a
threshold raises an ``Alarm`` once per kind and problem (again only after the window
recovered); the run shows it, logs it, and stops when asked to.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from textbook_gen.curate.dedup import ngram_hashes
from textbook_gen.measures import opening
from textbook_gen.spec import WatchSettings

WATCH_CHARS = 4000  # near-copies share their beginnings: the watch reads that much of each
PERMUTATIONS, BANDS = 64, 8  # 8 bands of 8 rows: P(candidate) 0.77 at Jaccard 0.8, 0.03 at 0.5
_RNG = np.random.default_rng(20241125)
_A = _RNG.integers(1, 2**63, PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
_B = _RNG.integers(0, 2**63, PERMUTATIONS, dtype=np.uint64)


@dataclass(frozen=True)
class Alarm:
    kind: str
    problem: str  # "opening" | "near_duplicates"
    share: float
    window: int
    detail: str  # the opening, or the near-duplicate rate
    cells: tuple[str, ...]  # where the offending answers come from

    def message(self) -> str:
        where = ", ".join(self.cells[:5]) + (" ..." if len(self.cells) > 5 else "")
        if self.problem == "opening":
            return (f"collapse watch: {self.share:.0%} of the last {self.window} {self.kind}"
                    f" answers open with {self.detail!r} (cells: {where})")
        return (f"collapse watch: {self.share:.0%} of the last {self.window} {self.kind}"
                f" answers have a near-duplicate among them (cells: {where})")


@dataclass
class _KindWindow:
    size: int
    openings: deque[tuple[str, str]] = field(default_factory=deque)  # (opening, cell)
    counts: Counter[str] = field(default_factory=Counter)
    bands: deque[tuple[tuple[int, ...], str]] = field(default_factory=deque)  # (keys, cell)
    band_counts: Counter[int] = field(default_factory=Counter)
    dup_flags: deque[bool] = field(default_factory=deque)
    dups: int = 0  # True flags in dup_flags
    raised: dict[str, str] = field(default_factory=dict)  # problem -> what it was raised for


class Watch:
    def __init__(self, settings: WatchSettings):
        self.s = settings
        self.windows: dict[str, _KindWindow] = {}
        self.alarms: list[Alarm] = []

    def add(self, kind: str, cell: str, text: str) -> list[Alarm]:
        """Take one answer; return the alarms it raised (usually none)."""
        w = self.windows.setdefault(kind, _KindWindow(self.s.window))
        key = opening(text[:2000], self.s.opening_words)  # an opening is near the start
        w.openings.append((key, cell))
        w.counts[key] += 1
        if len(w.openings) > w.size:
            old, _ = w.openings.popleft()
            w.counts[old] -= 1
        keys = _band_keys(text)
        flag = any(w.band_counts[k] for k in keys)
        w.dup_flags.append(flag)
        w.dups += flag
        w.bands.append((keys, cell))
        w.band_counts.update(keys)
        if len(w.bands) > w.size:
            old_keys, _ = w.bands.popleft()
            w.band_counts.subtract(old_keys)
            w.dups -= w.dup_flags.popleft()
        n = len(w.openings)
        if n < self.s.min_answers:
            return []
        # only the count of this answer's opening rose; a raised one is followed until it falls
        watched = w.raised.get("opening", key)
        raised = self._check(w, kind, "opening", w.counts[watched] / n if watched else 0.0,
                             self.s.max_opening_share, n, watched,
                             lambda: {c for k, c in w.openings if k == watched})
        dup_share = w.dups / len(w.dup_flags)
        raised += self._check(
            w, kind, "near_duplicates", dup_share, self.s.max_near_dup_share, n,
            f"{dup_share:.0%}",
            lambda: {c for (_, c), f in zip(w.bands, w.dup_flags, strict=True) if f})
        self.alarms += raised
        return raised

    @staticmethod
    def _check(w: _KindWindow, kind: str, problem: str, share: float, limit: float, n: int,
               detail: str, cells: Callable[[], set[str]]) -> list[Alarm]:
        if share > limit and problem not in w.raised:
            w.raised[problem] = detail
            return [Alarm(kind, problem, share, n, detail, tuple(sorted(cells())))]
        if share <= limit / 2:
            w.raised.pop(problem, None)  # recovered: a new surge is reported again
        return []


def _band_keys(text: str) -> tuple[int, ...]:
    """The LSH band keys of the text's MinHash over word 5-grams (none for an empty text)."""
    # Python's own string hash: fast, and stable within the process, which is all a
    # window needs (curation's dedup uses reproducible hashes instead)
    tokens = text[:WATCH_CHARS].lower().split()
    words = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
    shingles = ngram_hashes(words, min(5, len(words)))  # repeats do not change a minimum
    if not len(shingles):
        return ()
    with np.errstate(over="ignore"):
        signature = (np.multiply.outer(shingles, _A) + _B).min(axis=0)
    return tuple(hash((b, row.tobytes()))
                 for b, row in enumerate(signature.reshape(BANDS, PERMUTATIONS // BANDS)))
