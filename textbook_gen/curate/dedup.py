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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for combining word hashes
_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
SEED = 1729

# word characters: ASCII letters and digits, '_' and every byte of a multi-byte UTF-8 letter
_WORDCHAR = np.zeros(256, dtype=bool)
for _c in b"0123456789abcdefghijklmnopqrstuvwxyz_":
    _WORDCHAR[_c] = True
_WORDCHAR[128:] = True
_powers: dict[str, np.ndarray] = {"p": np.ones(1, np.uint64), "inv": np.ones(1, np.uint64)}


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(_powers["p"]) < n:
        size = max(n, 2 * len(_powers["p"]))
        with np.errstate(over="ignore"):
            for name, base in (("p", _P), ("inv", _P_INV)):
                factors = np.full(size, base, np.uint64)
                factors[0] = 1
                _powers[name] = np.cumprod(factors, dtype=np.uint64)  # base**0 .. base**(size-1)
    return _powers["p"][:n], _powers["inv"][:n]


def _hash_words(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end byte offsets and 64-bit hashes of the words in lower-cased UTF-8 bytes.
    Vectorised polynomial hashing: no Python loop per word."""
    edges = np.diff(_WORDCHAR[data].astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    powers, inverse = _power_tables(len(data) + 1)
    with np.errstate(over="ignore"):
        prefix = np.concatenate([np.zeros(1, np.uint64),
                                 np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[:len(data)],
                                           dtype=np.uint64)])
        h = (prefix[ends] - prefix[starts]) * inverse[starts]
        h ^= h >> np.uint64(31)  # splitmix64 finaliser: spread the bits
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
    return starts, ends, h


def chunk_word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the lower-cased words of many texts at once, and each text's word
    offsets."""
    data = np.frombuffer("\x00".join(texts).lower().encode("utf-8"), dtype=np.uint8)
    starts, _, h = _hash_words(data)
    # which text each word belongs to: texts are separated by one NUL byte
    lengths = np.fromiter((len(t.encode("utf-8")) + 1 for t in texts), dtype=np.int64,
                          count=len(texts)) if len(texts) > 1 else np.array([len(data) + 1])
    text_ends = np.cumsum(lengths)
    owner = np.searchsorted(text_ends, starts, side="right")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(texts)))])
    return h, offsets


def word_hashes(text: str) -> np.ndarray:
    """64-bit hashes of the lower-cased words of one text (same values as in a chunk)."""
    return words_with_lengths(text)[0]


def words_with_lengths(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes of one text and each word's length in UTF-8 bytes (for the repetition
    rules, which weigh n-grams by their characters)."""
    _, starts, ends, h = word_spans(text)
    return h, ends - starts


def word_spans(text: str) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """The lower-cased UTF-8 bytes of a text, and the start and end offsets and hashes of its
    words in them (to show which words matched)."""
    low = text.lower().encode("utf-8")
    starts, ends, h = _hash_words(np.frombuffer(low, dtype=np.uint8))
    return low, starts, ends, h


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """The hash of the n words starting at each position (not deduplicated, in order)."""
    with np.errstate(over="ignore"):
        acc = words[: max(0, len(words) - n + 1)].copy()
        for j in range(1, n):
            acc = acc * _MULT + words[j: len(words) - n + 1 + j]
    return acc


def shingle_hashes(words: np.ndarray, k: int) -> np.ndarray:
    """Sorted unique hashes of every k-word shingle (a short text is one shingle)."""
    if len(words) == 0:
        return words
    return np.unique(ngram_hashes(words, min(k, len(words))))


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


def signature_rows(flat: np.ndarray, counts: np.ndarray, num_perm: int) -> np.ndarray:
    """MinHash digests (one uint32 row of ``num_perm`` per document) of documents whose
    shingle hashes lie back to back in ``flat``, ``counts`` of them each (rensa, in Rust)."""
    from rensa import RMinHash

    offsets = np.concatenate([np.zeros(1, np.uint64), np.cumsum(counts, dtype=np.uint64)])
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, SEED)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(len(counts), num_perm)


def chunk_signatures(texts: list[str], *, k: int, num_perm: int, exact: bool = True,
                     near: bool = True) -> tuple[list[bytes] | None, np.ndarray | None]:
    """What dedup needs of each text, computed for a chunk at once and for each text alone
    (no text's values depend on the others): the exact key of its words, and the MinHash
    digest of its k-word shingles. A pure function, so that any process can compute it."""
    if not texts:
        return ([] if exact else None), (np.zeros((0, num_perm), np.uint32) if near else None)
    words, offsets = chunk_word_hashes(texts)
    keys = ([exact_key(words[offsets[j]:offsets[j + 1]]) for j in range(len(texts))]
            if exact else None)
    if not near:
        return keys, None
    owner = np.repeat(np.arange(len(texts)), np.diff(offsets))
    with np.errstate(over="ignore"):
        acc = words[: max(0, len(words) - k + 1)].copy()
        for j in range(1, k):
            acc = acc * _MULT + words[j: len(words) - k + 1 + j]
    start_owner = owner[: len(acc)]
    keep = start_owner == owner[k - 1:k - 1 + len(acc)]  # a shingle inside one text
    counts = np.bincount(start_owner[keep], minlength=len(texts))
    return keys, signature_rows(acc[keep], counts, num_perm)


@dataclass
class Signatures:
    """MinHash digests of many documents, filled in chunks."""

    num_perm: int
    k: int
    rows: list[np.ndarray] = field(default_factory=list)

    def add_rows(self, matrix: np.ndarray) -> None:
        if len(matrix):
            self.rows.append(np.ascontiguousarray(matrix, dtype=np.uint32))

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows)

    def band(self, start: int, stop: int) -> np.ndarray:
        """Columns ``start:stop`` of every digest. Built one band at a time, so the whole
        matrix is never copied (at 1M documents it is 512 MB)."""
        if not self.rows:
            return np.zeros((0, stop - start), dtype=np.uint32)
        return np.concatenate([r[:, start:stop] for r in self.rows])


def band_keys(band: np.ndarray) -> np.ndarray:
    """One 64-bit key per digest for one LSH band (its columns): sorting integers is far
    faster than sorting raw rows, and a rare key collision only adds a candidate that
    confirmation then rejects."""
    keys = band[:, 0].astype(np.uint64)
    with np.errstate(over="ignore"):
        for col in range(1, band.shape[1]):
            keys = keys * _MULT + band[:, col]
    return keys


def candidate_pairs(signatures: Signatures, threshold: float) -> np.ndarray:
    """(i, j) pairs, i < j, that share a band: each bucket links its members to its first."""
    n, num_perm = len(signatures), signatures.num_perm
    bands, rows = lsh_params(threshold, num_perm)
    pairs = []
    for b in range(bands):
        keys = band_keys(signatures.band(b * rows, (b + 1) * rows))
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
                 exact: bool = True, near: bool = True, chunk: int = 256):
        self.threshold, self.k = threshold, shingle_words
        self.exact, self.near = exact, near
        self.signatures = Signatures(num_perm, shingle_words)
        self._exact_first: dict[bytes, int] = {}
        self._exact_edges: list[tuple[int, int, float]] = []
        self._pending: list[tuple[str, tuple[float, ...]]] = []
        self._near_index: list[int] = []  # document index of each signature row
        self.ranks: list[tuple[float, ...]] = []
        self._chunk = chunk

    def add(self, text: str, rank: tuple[float, ...] = ()) -> int:
        self._pending.append((text, rank))
        if len(self._pending) >= self._chunk:
            self._flush()
        return len(self.ranks) + len(self._pending) - 1

    def _flush(self) -> None:
        """Hash the texts added so far at once."""
        if not self._pending:
            return
        texts, ranks = zip(*self._pending, strict=True)
        self._pending = []
        keys, digests = chunk_signatures(list(texts), k=self.k, num_perm=self.signatures.num_perm,
                                         exact=self.exact, near=self.near)
        self.add_signed(keys, digests, list(ranks))

    def add_signed(self, keys: list[bytes] | None, digests: np.ndarray | None,
                   ranks: list[tuple[float, ...]]) -> None:
        """Add documents whose signatures were computed elsewhere (``chunk_signatures``, in
        this process or another): the result is the same as ``add`` of their texts."""
        if self._pending:
            self._flush()
        first_index = len(self.ranks)
        self.ranks.extend(ranks)
        near = np.ones(len(ranks), dtype=bool)
        if self.exact and keys is not None:
            for j, key in enumerate(keys):
                index = first_index + j
                first = self._exact_first.setdefault(key, index)
                if first != index:  # its exact twin stands for it in the near search
                    self._exact_edges.append((first, index, 1.0))
                    near[j] = False
        if not self.near or digests is None or not near.any():
            return
        self.signatures.add_rows(digests[near])
        self._near_index.extend(int(first_index + j) for j in np.flatnonzero(near))

    def candidates(self) -> np.ndarray:
        """Candidate pairs as document indexes (call before ``finish``)."""
        self._flush()
        if not self.near or not self._near_index:
            return np.zeros((0, 2), dtype=np.int64)
        rows = candidate_pairs(self.signatures, self.threshold)
        return np.asarray(self._near_index, dtype=np.int64)[rows] if len(rows) else rows

    def finish(self, pairs: np.ndarray,
               texts: Callable[[list[int]], dict[int, str] | Iterable[tuple[int, str]]]
               ) -> tuple[list[Duplicate], dict[int, int]]:
        """Confirm candidates by true Jaccard; return the dropped documents and, for each kept
        document that had duplicates, its cluster size. ``texts`` gives the texts of the
        candidate documents, as a dict or streamed as (index, text) pairs: streamed, only
        their shingle sets are held, never the texts."""
        needed = sorted({int(x) for x in pairs.ravel()})
        got = texts(needed) if needed else {}
        items = got.items() if isinstance(got, dict) else got
        shingles = {i: shingle_hashes(word_hashes(t), self.k) for i, t in items}
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
