"""Deduplication: exact (normalised text hash) then near-duplicate (MinHash LSH over word
shingles, candidates confirmed by their true Jaccard similarity).

A chain of nouns, as datatrove has it: ``signature`` (word hashes -> shingle hashes ->
MinHash digests, computed by rensa in Rust) -> ``buckets`` (LSH banding in numpy) ->
``clusters`` (union-find over confirmed pairs) -> the pipeline keeps the best of each.
Only digests (num_perm x 4-8 bytes per document) stay in memory; shingle sets are rebuilt
for the candidate documents alone when confirming.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for combining word hashes
SEED = 1729


def word_hashes(text: str) -> np.ndarray:
    """64-bit hashes of the lower-cased words (stable within one process)."""
    words = _WORD.findall(text.lower())
    return np.fromiter((hash(w) for w in words), dtype=np.int64, count=len(words)).view(np.uint64)


def shingle_hashes(words: np.ndarray, k: int) -> np.ndarray:
    """Sorted unique hashes of every k-word shingle (a short text is one shingle)."""
    if len(words) == 0:
        return words
    if len(words) < k:
        k = len(words)
    with np.errstate(over="ignore"):
        acc = words[: len(words) - k + 1].copy()
        for j in range(1, k):
            acc = acc * _MULT + words[j: len(words) - k + 1 + j]
    return np.unique(acc)


def exact_key(words: np.ndarray) -> bytes:
    return hashlib.blake2b(words.tobytes(), digest_size=16).digest()


def lsh_params(threshold: float, num_perm: int, recall: float = 0.98) -> tuple[int, int]:
    """Bands and rows: the most rows per band (fewest false candidates) that still makes a
    pair at exactly ``threshold`` a candidate with probability >= ``recall``."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            best = (b, r)
    return best


@dataclass
class Signatures:
    """MinHash digests of many documents, filled in chunks."""

    num_perm: int
    k: int
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, shingle_sets: list[np.ndarray]) -> None:
        from rensa import RMinHash

        lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.uint64,
                              count=len(shingle_sets))
        offsets = np.concatenate([np.zeros(1, np.uint64), np.cumsum(lengths, dtype=np.uint64)])
        flat = np.concatenate(shingle_sets) if shingle_sets else np.zeros(0, np.uint64)
        matrix = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, self.num_perm, SEED)
        self.rows.append(np.array(matrix.to_rows(), dtype=np.uint32))

    def matrix(self) -> np.ndarray:
        if not self.rows:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        if len(self.rows) > 1:
            self.rows = [np.concatenate(self.rows)]
        return self.rows[0]


def candidate_pairs(digests: np.ndarray, threshold: float) -> np.ndarray:
    """(i, j) pairs, i < j, that share a band: each bucket links its members to its first."""
    n, num_perm = digests.shape
    bands, rows = lsh_params(threshold, num_perm)
    pairs = []
    for b in range(bands):
        band = np.ascontiguousarray(digests[:, b * rows:(b + 1) * rows])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = sorted_keys[1:] == sorted_keys[:-1]
        if not same.any():
            continue
        starts = np.flatnonzero(np.concatenate([[True], ~same]))
        group_first = np.repeat(order[starts], np.diff(np.append(starts, n)))
        members = order
        mask = members != group_first
        pairs.append(np.stack([group_first[mask], members[mask]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs)
    allp.sort(axis=1)
    return np.unique(allp, axis=0)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def confirm(pairs: np.ndarray, shingles: Callable[[int], np.ndarray],
            threshold: float) -> list[tuple[int, int, float]]:
    return [(int(i), int(j), s) for i, j in pairs
            if (s := jaccard(shingles(int(i)), shingles(int(j)))) >= threshold]


def clusters(n: int, edges: Iterable[tuple[int, int, float]]) -> dict[int, list[int]]:
    """Union-find: root -> members (only clusters with two or more)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return {root: members for root, members in groups.items() if len(members) > 1}


@dataclass(frozen=True)
class Duplicate:
    index: int
    kept: int  # the index kept in its cluster
    exact: bool


class Deduplicator:
    """Feed documents in order with ``add``; ``finish`` returns which to drop in favour of which.

    ``rank`` orders documents within a cluster: the highest rank is kept (ties: earliest).
    """

    def __init__(self, threshold: float, *, num_perm: int = 128, shingle_words: int = 5,
                 exact: bool = True, near: bool = True, chunk: int = 2048):
        self.threshold, self.k = threshold, shingle_words
        self.exact, self.near = exact, near
        self.signatures = Signatures(num_perm, shingle_words)
        self._exact_first: dict[bytes, int] = {}
        self._exact_edges: list[tuple[int, int, float]] = []
        self._pending: list[np.ndarray] = []
        self._near_index: list[int] = []  # document index of each signature row
        self.ranks: list[tuple[float, ...]] = []
        self._chunk = chunk

    def add(self, text: str, rank: tuple[float, ...] = ()) -> int:
        index = len(self.ranks)
        self.ranks.append(rank)
        words = word_hashes(text)
        if self.exact:
            first = self._exact_first.setdefault(exact_key(words), index)
            if first != index:
                self._exact_edges.append((first, index, 1.0))
                return index  # its exact twin stands for it in the near-duplicate search
        if self.near:
            self._pending.append(shingle_hashes(words, self.k))
            self._near_index.append(index)
            if len(self._pending) >= self._chunk:
                self._flush()
        return index

    def _flush(self) -> None:
        if self._pending:
            self.signatures.add(self._pending)
            self._pending = []

    def candidates(self) -> np.ndarray:
        """Candidate pairs as document indexes (call before ``finish``)."""
        self._flush()
        if not self.near or not self._near_index:
            return np.zeros((0, 2), dtype=np.int64)
        rows = candidate_pairs(self.signatures.matrix(), self.threshold)
        return np.asarray(self._near_index, dtype=np.int64)[rows] if len(rows) else rows

    def finish(self, pairs: np.ndarray, texts: Callable[[list[int]], dict[int, str]]
               ) -> tuple[list[Duplicate], dict[int, int]]:
        """Confirm candidates by true Jaccard; return the dropped documents and, for each kept
        document that had duplicates, its cluster size."""
        needed = sorted({int(x) for x in pairs.ravel()})
        shingles = {i: shingle_hashes(word_hashes(t), self.k) for i, t in texts(needed).items()}
        near = confirm(pairs, shingles.__getitem__, self.threshold) if len(pairs) else []
        groups = clusters(len(self.ranks), [*self._exact_edges, *near])
        exact_pairs = {(i, j) for i, j, _ in self._exact_edges}
        dropped: list[Duplicate] = []
        sizes: dict[int, int] = {}
        for members in groups.values():
            best = max(members, key=lambda m: (self.ranks[m], -m))
            sizes[best] = len(members)
            for m in members:
                if m != best:
                    pair = (min(m, best), max(m, best))
                    dropped.append(Duplicate(m, best, pair in exact_pairs))
        return dropped, sizes
