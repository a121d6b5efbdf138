"""``textbook-gen curate --ray``: the curation of ``curate_corpus`` on a Ray cluster, keeping
exactly the records the single process keeps.

Every document has a number, ``file << 40 | row``, whose order is the single process's
reading order, so "the earliest" means the same thing in both. The steps:

1. **ids** (Ray Data map, then a groupby-count shuffle): a record's id, as ``_with_ids`` gives
   it; the driver runs the same rule (``pipeline.UniqueIds``) over the documents it can change,
   in document order, so ids are unique and the same as in one process.
2. **per-document stages** (a Ray Data map over input files on an actor pool): the stages of
   ``pipeline._Curation._per_document``, unchanged, on chunks of ``CHUNK`` records; survivors
   and rejects are spooled to the output directory by the worker that read them; what dedup
   needs of a survivor (its number, id, rank, exact key, LSH band keys) is a row of the
   result. A worker holds one chunk at a time, never the corpus.
3. **exact twins** and **LSH buckets** (Ray shuffles: groupby-count on the exact key and on
   (band, band key)): only keys and buckets with two or more documents come back.
4. **confirmation** (a Ray Data join of the candidate pairs with the shingle hashes of the
   candidate documents, read back from the spools by the workers): true Jaccard, as in the
   single process.
5. **clusters**: connected components over the confirmed edges, on the driver: its memory
   follows the edges, not the documents.
6. **shards** (a Ray Data map over the spools): each worker writes the shards of the files it
   read; the driver writes the manifest.

The output directory must be a filesystem every node sees (a shared mount); inputs may also
be URLs every node can read (object storage through fsspec); docs/ray.md.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from textbook_gen.curate.dedup import (
    band_keys,
    jaccard,
    lsh_params,
    shingle_hashes,
    word_hashes,
)
from textbook_gen.curate.facts import DocumentStage, default_workers
from textbook_gen.curate.pipeline import (
    CHUNK,
    STAGES,
    SUFFIXED,
    CurationResult,
    StageCount,
    UniqueIds,
    _chunks,
    _Curation,
)
from textbook_gen.curate.sandbox import sandbox_layers
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.errors import ConfigError, InputError, TextbookGenError
from textbook_gen.shards import (
    Build,
    ShardInfo,
    ShardWriter,
    Source,
    is_url,
    iter_records,
    source_name,
)

Record = dict[str, Any]
SHIFT = 40  # a document's number: file << SHIFT | row (a trillion rows a file)


def doc_number(file: int, row: int) -> int:
    return (file << SHIFT) | row


# -- the cluster


def connect(address: str, workers: int | None) -> int:
    """Join (or, for ``local``, start) a Ray cluster; the number of CPUs it has."""
    if address not in ("local", "auto"):
        _probe(address)  # Ray itself retries an address no one answers at for minutes
    # `ray start` clusters require the token it saved in ~/.ray; Ray's client sends it for
    # auto and local (saying so on the terminal) but not for an explicit address unless told
    # to (read when Ray is imported)
    if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    # Ray's C++ core logs to this terminal what is not the user's to act on (Ray Data's actors
    # keep their arguments in the object store, ray-project/ray#53727); it costs one line
    # saying the level was set
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
    except ImportError:
        raise ConfigError('--ray needs Ray: pip install "textbook-gen[ray]"') from None
    if not ray.is_initialized():
        quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                 "logging_level": "ERROR", "configure_logging": False}
        try:
            if address == "local":
                ray.init(address="local", num_cpus=workers or default_workers(), **quiet)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"--ray {address}: cannot join a Ray cluster there ({first}). Start one with "
                "`ray start --head` and pass its address (or auto), or use --ray local for a "
                "cluster on this machine only") from None
    return int(ray.cluster_resources().get("CPU", 1))


def _probe(address: str) -> None:
    """Refuse at once an address where nothing listens."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: not an address; give host:port (the one `ray start "
                          "--head` printed), ray://host:port, auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--ray {address}: nothing answers there ({e.strerror or e}). Start a "
                          "cluster with `ray start --head` and pass the address it prints (or "
                          "auto), or use --ray local for a cluster on this machine only") from None


def _data_context(quiet: bool) -> None:
    import logging

    import ray.data

    # a task's error reaches the user once, as our message (curate_on_ray), not as Ray's log
    # (its warnings are about its own settings, not the user's to act on)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL if quiet else logging.ERROR)
    logging.getLogger("ray.data._internal.execution").setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.execution_options.preserve_order = True
    ctx.enable_operator_progress_bars = False
    # Ray's shuffles merge up to 1 GiB of a node's input blocks into one map task (and
    # pre-aggregate it there): one worker then holds a node's share of the corpus. One task a
    # block keeps a worker's memory to the block's (at 1M documents its largest map worker went
    # from 1,667 MB to under 470 MB of its own).
    if hasattr(ctx, "shuffle_input_batch_bytes"):
        ctx.shuffle_input_batch_bytes = 0


def _col(name: str) -> Any:
    from ray.data.expressions import col

    return col(name)


SHUFFLE_ROWS = 250_000  # rows a shuffle partition holds at most: an aggregator's memory


def _partitions(ds: Any, at_least: int) -> int:
    """Partitions for a shuffle of ``ds``: enough that each holds SHUFFLE_ROWS rows at most."""
    return max(at_least, -(-ds.count() // SHUFFLE_ROWS))


def _more_than_one() -> Any:
    """A groupby-count row of a key seen twice or more."""
    return _col("count()") > 1


def _unwrap(e: BaseException) -> BaseException:
    """The error a Ray task raised, without Ray's wrapping (ours carry the user's message).
    Ray's wrapper subclasses the original's class, so it is the ``cause`` that is wanted."""
    for _ in range(8):
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and cause is not e:
            e = cause
        elif isinstance(e, TextbookGenError) or e.__cause__ is None:
            return e
        else:
            e = e.__cause__
    return e


def _columns(ds: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Columns of a (small) dataset on the driver, as numpy arrays."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in ds.iter_batches(batch_size=65_536, batch_format="numpy"):
        for n in names:
            parts[n].append(batch[n])
    return {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in parts.items()}


# -- 1. ids


def _read_file(path: str, file: int, renames: dict[int, str]) -> Iterator[tuple[int, Record]]:
    """A file's records with their numbers and ids (as ``pipeline._with_ids`` gives them)."""
    p: Source = path if is_url(path) else Path(path)
    for n, record in enumerate(iter_records(p), 1):
        if "text" not in record or not isinstance(record["text"], str):
            raise InputError(f"{p}: record {n} has no 'text' string field; each record "
                                   "needs one")
        doc = doc_number(file, n - 1)
        record["id"] = renames.get(doc) or str(record.get("id") or f"{source_name(p)}:{n}")
        yield doc, record


BLOCK = 8 * CHUNK  # rows a worker hands on at a time: its memory, whatever the file's size


def _ids(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    docs: list[int] = []
    ids: list[str] = []

    def block() -> dict[str, np.ndarray]:
        return {"doc": np.asarray(docs, dtype=np.int64), "rid": np.asarray(ids, dtype=object),
                "suffixed": np.asarray([bool(SUFFIXED.search(i)) for i in ids], dtype=bool)}

    for file, path in zip(batch["file"], batch["path"], strict=True):
        for doc, record in _read_file(str(path), int(file), {}):
            docs.append(doc)
            ids.append(record["id"])
            if len(docs) >= BLOCK:
                yield block()
                docs, ids = [], []
    yield block()
    # (the last block may be empty: Ray Data unifies an empty column's type with the others)


def _renames(files: Any) -> dict[int, str]:
    """Documents whose id the one rule (``pipeline.UniqueIds``) changes, with their new ids.
    The rule needs, in document order, the documents whose id is repeated and those whose id
    ends like a suffix (an input ``a#2`` can meet the ``a#2`` given to a repeated ``a``);
    every other document keeps its id."""
    ids = files.map_batches(_ids, batch_size=1).materialize()
    repeated = ids.groupby("rid", num_partitions=_partitions(ids, 2)).count().filter(
        expr=_more_than_one())
    again = {str(x) for x in _columns(repeated, ["rid"])["rid"]}
    if not again:
        return {}
    rows = _columns(ids.filter(expr=_col("rid").is_in(sorted(again)) | _col("suffixed")),
                    ["doc", "rid"])
    unique = UniqueIds()
    out = {}
    for doc, rid in sorted(zip(rows["doc"].tolist(), rows["rid"].tolist(), strict=True)):
        new = unique(str(rid))
        if new != rid:
            out[int(doc)] = new
    return out


# -- 2. per-document stages


def _spool_path(prefix: str, file: int) -> Path:
    return Path(f"{prefix}-spool-{file:05d}")


class _PerDocument:
    """A Ray Data actor: the per-document stages over whole input files."""

    def __init__(self, settings: CurationSettings, prefix: str, renames: dict[int, str]):
        if settings.verify.workers is None:  # a worker is one CPU of its node: one sandbox at a
            # time, not one per core of the node from each of the node's workers
            settings = settings.model_copy(update={
                "verify": settings.verify.model_copy(update={"workers": 1})})
        self.settings, self.prefix, self.renames = settings, prefix, renames
        self.stage = DocumentStage(settings)
        self.bands, self.rows = lsh_params(settings.near_dup_threshold, settings.dedup.num_perm)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        import zstandard

        d = self.settings.dedup
        cols: dict[str, list[Any]] = defaultdict(list)
        for file, path in zip(batch["file"], batch["path"], strict=True):
            c = _Curation(self.settings, None, "jsonl", 1, None, None, None, workers=1,
                          stage=self.stage)  # one decontamination index per actor
            numbers: dict[int, int] = {}
            for idx in self.stage.decontam.indexes:  # this file's hits alone
                idx.hit_documents, idx.hit_items = 0, set()
            compressor = zstandard.ZstdCompressor(level=3)
            with open(_spool_path(self.prefix, int(file)), "wb") as spool:
                records = _read_file(str(path), int(file), self.renames)
                for chunk in _chunks(self._numbered(records, numbers), CHUNK):
                    kept, keys, digests = c._per_document(chunk, self.stage(chunk))
                    docs = [numbers.pop(id(r)) for r in kept]
                    for r in chunk:
                        numbers.pop(id(r), None)
                    frame = pickle.dumps((list(zip(docs, kept, strict=True)), list(c.rejects)),
                                         protocol=pickle.HIGHEST_PROTOCOL)
                    c.rejects.clear()
                    packed = compressor.compress(frame)
                    spool.write(struct.pack("<Q", len(packed)) + packed)
                    cols["doc"].extend(docs)
                    cols["rid"].extend(str(r.get("id")) for r in kept)
                    for k, rank in enumerate(_Curation._rank(x) for x in kept):
                        cols["rank"].append(list(rank))
                        cols["key"].append(keys[k] if keys is not None else b"")
                    if d.near and digests is not None:
                        for b in range(self.bands):
                            part = digests[:, b * self.rows:(b + 1) * self.rows]
                            cols[f"band{b}"].extend(band_keys(part).tolist() if len(part) else [])
                    if len(cols["doc"]) >= BLOCK:
                        yield self._batch(cols)
                        cols = defaultdict(list)
            stats = {"counts": {k: v.to_dict() for k, v in c.counts.items()},
                     "decontam": [[i.hit_documents, sorted(i.hit_items)]
                                  for i in c.decontam.indexes]}
            Path(f"{self.prefix}-stats-{int(file):05d}.json").write_text(json.dumps(stats))
        yield self._batch(cols)

    def _batch(self, cols: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        d = self.settings.dedup
        out = {"doc": np.asarray(cols["doc"], dtype=np.int64),
               "rid": np.asarray(cols["rid"], dtype=object),
               "rank": np.asarray(cols["rank"], dtype=np.float64).reshape(-1, 3),
               "key": np.asarray(cols["key"], dtype=object)}
        if d.near:
            for b in range(self.bands):
                # as int64 (the same bits): Arrow's filters compare signed integers
                out[f"band{b}"] = np.asarray(cols[f"band{b}"], dtype=np.uint64).view(np.int64)
        return out

    @staticmethod
    def _numbered(records: Iterator[tuple[int, Record]], numbers: dict[int, int]
                  ) -> Iterator[Record]:
        for doc, record in records:
            numbers[id(record)] = doc
            yield record


# -- 3. exact twins and LSH buckets


def _exact_edges(facts: Any) -> list[tuple[int, int]]:
    """(first, twin): every later document with the same exact key as an earlier one."""
    twins = facts.select_columns(["doc", "key"]).groupby(
        "key", num_partitions=_partitions(facts, 2)).count().filter(
        expr=_more_than_one())
    keys = {bytes(k) for k in _columns(twins, ["key"])["key"] if k}
    if not keys:
        return []
    rows = _columns(facts.select_columns(["doc", "key"]).filter(
        expr=_col("key").is_in(sorted(keys))), ["doc", "key"])
    first: dict[bytes, int] = {}
    edges = []
    for doc, key in sorted(zip(rows["doc"].tolist(), (bytes(k) for k in rows["key"]),
                               strict=True)):
        if key in first:
            edges.append((first[key], doc))
        else:
            first[key] = doc
    return edges


def _explode(batch: dict[str, np.ndarray], bands: int) -> dict[str, np.ndarray]:
    """One row per (document, band): the band's key, and both folded into one int64."""
    n = len(batch["doc"])
    keys = (np.concatenate([batch[f"band{b}"] for b in range(bands)]) if n
            else np.zeros(0, np.int64))
    band = np.repeat(np.arange(bands, dtype=np.int64), n)
    with np.errstate(over="ignore"):
        folded = (keys.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                  + band.view(np.uint64)).view(np.int64)
    return {"bk": folded, "band": band, "bkey": keys, "doc": np.tile(batch["doc"], bands)}


def _candidate_pairs(facts: Any, bands: int, partitions: int) -> np.ndarray:
    """(i, j), i < j, sharing a bucket: each bucket links its members to its first, as
    ``dedup.candidate_pairs`` does in one process. The shuffle counts one int64 per
    (document, band), the band folded into its key; the members of keys counted twice or more
    come back and are grouped by (band, key) exactly, so a folding collision only brings back
    rows that are then left alone."""
    exploded = facts.select_columns(["doc", *[f"band{b}" for b in range(bands)]]).map_batches(
        _explode, fn_kwargs={"bands": bands}, batch_format="numpy")
    full = exploded.select_columns(["bk"]).groupby("bk", num_partitions=partitions).count(
    ).filter(expr=_more_than_one())
    keys = sorted({int(k) for k in _columns(full, ["bk"])["bk"].tolist()})
    if not keys:
        return np.zeros((0, 2), dtype=np.int64)
    members = _columns(exploded.filter(expr=_col("bk").is_in(keys)), ["band", "bkey", "doc"])
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for b, k, doc in zip(members["band"].tolist(), members["bkey"].tolist(),
                         members["doc"].tolist(), strict=True):
        groups[b, k].append(doc)
    pairs = [(min(g), m) for g in groups.values() if len(g) > 1 for m in g if m != min(g)]
    return np.unique(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=0)


# -- 4. confirmation


class _Shingles:
    """The shingle hashes of the wanted documents in a file's spool."""

    def __init__(self, prefix: str, wanted: np.ndarray, k: int):
        self.prefix, self.wanted, self.k = prefix, wanted, k

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        docs: list[int] = []
        shingles: list[bytes] = []
        for file in batch["file"]:
            for kept, _ in _spool_frames(_spool_path(self.prefix, int(file))):
                for doc, record in kept:
                    pos = np.searchsorted(self.wanted, doc)
                    if pos < len(self.wanted) and self.wanted[pos] == doc:
                        docs.append(doc)
                        shingles.append(shingle_hashes(word_hashes(record.get("text", "")),
                                                       self.k).tobytes())
                if len(docs) >= BLOCK:
                    yield {"doc": np.asarray(docs, dtype=np.int64),
                           "sh": np.asarray(shingles, dtype=object)}
                    docs, shingles = [], []
        yield {"doc": np.asarray(docs, dtype=np.int64), "sh": np.asarray(shingles, dtype=object)}


def _similar(batch: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    keep = [k for k in range(len(batch["i"]))
            if jaccard(np.frombuffer(batch["sh_i"][k], np.uint64),
                       np.frombuffer(batch["sh_j"][k], np.uint64)) >= threshold]
    return {"i": batch["i"][keep], "j": batch["j"][keep]}


def _confirmed(files: Any, pairs: np.ndarray, prefix: str, settings: CurationSettings,
               partitions: int) -> list[tuple[int, int]]:
    import pyarrow as pa
    import ray.data

    if not len(pairs):
        return []
    wanted = np.unique(pairs.ravel())
    shingles = files.map_batches(_Shingles, batch_size=1,
                                 compute=ray.data.ActorPoolStrategy(size=partitions),
                                 fn_constructor_args=(prefix, wanted,
                                                      settings.dedup.shingle_words)).materialize()
    left = shingles.rename_columns({"doc": "i", "sh": "sh_i"})
    right = shingles.rename_columns({"doc": "j", "sh": "sh_j"})
    ds = ray.data.from_arrow(pa.table({"i": pairs[:, 0], "j": pairs[:, 1]}))
    joined = (ds.join(left, "inner", partitions, on=("i",))
              .join(right, "inner", partitions, on=("j",)))
    threshold = settings.near_dup_threshold
    out = _columns(joined.map_batches(lambda b: _similar(b, threshold), batch_format="numpy"),
                   ["i", "j"])
    return list(zip(out["i"].tolist(), out["j"].tolist(), strict=True))


# -- 5. clusters


def _components(edges: list[tuple[int, int]]) -> dict[int, list[int]]:
    """Union-find over the documents that have an edge: root -> members (sorted)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = defaultdict(list)
    for node in sorted({x for e in edges for x in e}):
        groups[find(node)].append(node)
    return groups


# -- 6. shards


def _spool_frames(path: Path) -> Iterator[tuple[list[tuple[int, Record]], list[Record]]]:
    import zstandard

    d = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        while header := f.read(8):
            (size,) = struct.unpack("<Q", header)
            yield pickle.loads(d.decompress(f.read(size)))


class _Write:
    """Write a file's kept records and rejects from its spool (a Ray Data actor)."""

    def __init__(self, prefix: str, root: str, build_id: str, fmt: str, per_shard: int,
                 dropped: dict[int, tuple[str, bool]], sizes: dict[int, int]):
        self.prefix, self.root, self.build_id = prefix, Path(root), build_id
        self.fmt, self.per_shard, self.dropped, self.sizes = fmt, per_shard, dropped, sizes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list[Any]] = defaultdict(list)
        for file in batch["file"]:
            f = int(file)
            kept = ShardWriter(self.root, subdir="shards", prefix=f"part-{self.build_id}-{f:05d}",
                               fmt=self.fmt, max_records=self.per_shard)
            rejects = ShardWriter(self.root, subdir="rejects",
                                  prefix=f"rejects-{self.build_id}-{f:05d}", fmt=self.fmt,
                                  max_records=self.per_shard)
            seen = exact = near = 0
            spool = _spool_path(self.prefix, f)
            for survivors, rejected in _spool_frames(spool):
                rejects.write_all(rejected)
                for doc, record in survivors:
                    seen += 1
                    dup = self.dropped.get(doc)
                    if dup is not None:
                        exact += dup[1]
                        near += not dup[1]
                        rejects.write({**record, "rejected": {
                            "stage": "dedup", "detail": "", "chosen": None,
                            "reason": f"{'exact' if dup[1] else 'near'}_duplicate of {dup[0]}"}})
                        continue
                    if doc in self.sizes:
                        record["quality"]["dup_cluster"] = f"{record.get('id')}~{self.sizes[doc]}"
                    kept.write(record)
            spool.unlink(missing_ok=True)
            for info, kind in [(s, "kept") for s in kept.close()] + [
                    (s, "rejects") for s in rejects.close()]:
                rows["name"].append(info.name)
                rows["records"].append(info.records)
                rows["bytes"].append(info.bytes)
                rows["sha256"].append(info.sha256)
                rows["kind"].append(kind)
            rows["file"].append(f)
            rows["dedup"].append([seen, exact, near])
        names = ("name", "records", "bytes", "sha256", "kind")
        shards = {n: np.asarray(rows[n], dtype=object) for n in names}
        # one row per shard; the dedup counts of each file ride on its first row (or an empty
        # shard row where a file wrote no shard)
        n = len(shards["name"])
        counts = np.zeros((n, 3), dtype=np.int64)
        if n:
            counts[0] = np.asarray(rows["dedup"]).sum(axis=0)
            return {**shards, "dedup": counts}
        return {"name": np.asarray([""], dtype=object), "records": np.asarray([0], dtype=object),
                "bytes": np.asarray([0], dtype=object), "sha256": np.asarray([""], dtype=object),
                "kind": np.asarray([""], dtype=object),
                "dedup": np.asarray(rows["dedup"] or [[0, 0, 0]]).sum(axis=0, keepdims=True)}


# -- the whole


class _Clock:
    """Seconds each step took (into the manifest), and a line per step as it ends."""

    def __init__(self, phases: dict[str, float], quiet: bool):
        import time

        self.phases, self.quiet, self.now = phases, quiet, time.perf_counter
        self.last = self.now()

    def __call__(self, step: str) -> None:
        t = self.now()
        self.phases[step] = t - self.last
        self.last = t
        if not self.quiet:
            import sys

            print(f"ray: {step} done in {self.phases[step]:.1f} s", file=sys.stderr)


def curate_on_ray(inputs: list[Source], build: Build, settings: CurationSettings, *,
                  fmt: str, shard_max_records: int, address: str, workers: int | None,
                  quiet: bool = False) -> CurationResult:
    """Curate ``inputs`` into ``build`` on the Ray cluster at ``address`` (``auto``, an
    address, or ``local``), with ``workers`` actors (default: every CPU of the cluster)."""
    cpus = connect(address, workers)
    import ray
    import ray.data

    _data_context(quiet)
    if not settings.enabled:
        settings = settings.all_stages_off()
    size = max(1, min(workers or cpus, len(inputs)))
    prefix = str(build.temp_path("ray"))
    files = ray.data.from_items([{"file": i, "path": p if is_url(p) else str(Path(p).absolute())}
                                 for i, p in enumerate(inputs)], override_num_blocks=len(inputs))
    try:
        phases: dict[str, float] = {}
        clock = _Clock(phases, quiet)
        renames = _renames(files)
        clock("ids")
        facts = files.map_batches(_PerDocument, batch_size=1,
                                  compute=ray.data.ActorPoolStrategy(size=size),
                                  fn_constructor_args=(settings, prefix, renames),
                                  batch_format="numpy").materialize()
        clock("per-document stages")
        counts = {name: StageCount() for name in STAGES}
        decontam = DocumentStage(settings).decontam
        for i in range(len(inputs)):
            stats = json.loads(Path(f"{prefix}-stats-{i:05d}.json").read_text())
            for name, c in stats["counts"].items():
                counts[name].seen += c["in"]
                counts[name].kept += c["kept"]
                counts[name].dropped.update(c["dropped"])
            for idx, (documents, items) in zip(decontam.indexes, stats["decontam"], strict=True):
                idx.hit_documents += documents
                idx.hit_items.update(items)
            Path(f"{prefix}-stats-{i:05d}.json").unlink()
        d = settings.dedup
        exact = _exact_edges(facts) if d.exact else []
        clock("exact twins")
        near: list[tuple[int, int]] = []
        if d.near:
            bands, _ = lsh_params(settings.near_dup_threshold, d.num_perm)
            pairs = _candidate_pairs(facts, bands, _partitions(facts, size) * bands)
            clock("LSH buckets")
            near = _confirmed(files, pairs, prefix, settings, size)
            clock("confirmation")
        dropped, sizes = _dropped(facts, exact, near)
        clock("clusters")
        written = files.map_batches(
            _Write, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size),
            batch_format="numpy",
            fn_constructor_args=(prefix, str(build.root), build.id, fmt, shard_max_records,
                                 dropped, sizes))
        cols = _columns(written, ["name", "records", "bytes", "sha256", "kind", "dedup"])
        clock("shards")
    except Exception as e:  # a task's error: ours carry the message meant for the user
        inner = _unwrap(e)
        if isinstance(inner, TextbookGenError):
            raise inner from None
        raise
    finally:
        for leftover in Path(prefix).parent.glob(Path(prefix).name + "-*"):
            leftover.unlink(missing_ok=True)
    shards: list[ShardInfo] = []
    rejects: list[ShardInfo] = []
    for name, records, size_b, sha, kind in zip(cols["name"], cols["records"], cols["bytes"],
                                                cols["sha256"], cols["kind"], strict=True):
        if name:
            (shards if kind == "kept" else rejects).append(
                ShardInfo(str(name), int(records), int(size_b), str(sha)))
    seen, n_exact, n_near = (int(x) for x in np.asarray(cols["dedup"]).reshape(-1, 3).sum(axis=0))
    dd = counts["dedup"]
    dd.seen, dd.kept = seen, seen - n_exact - n_near
    if n_exact:
        dd.dropped["exact_duplicate"] = n_exact
    if n_near:
        dd.dropped["near_duplicate"] = n_near
    if not shards:  # an empty corpus is one empty shard, as in one process
        shards = build.writer("shards", "part", fmt, shard_max_records, keep_empty=True).close()
    shards.sort(key=lambda s: s.name)
    rejects.sort(key=lambda s: s.name)
    sandbox = sandbox_layers(settings.verify) if counts["verify"].seen and settings.verify_code \
        else []
    return CurationResult(shards, rejects, counts, decontam.report(), sandbox, phases=phases)


def _dropped(facts: Any, exact: list[tuple[int, int]], near: list[tuple[int, int]]
             ) -> tuple[dict[int, tuple[str, bool]], dict[int, int]]:
    """Which documents dedup drops (-> the id kept in their stead, exact or not) and the size
    of each kept document's cluster: the best of a cluster by rank, ties to the earliest."""
    groups = _components([*exact, *near])
    if not groups:
        return {}, {}
    nodes = {x for g in groups.values() for x in g}
    info = _columns(facts.select_columns(["doc", "rid", "rank"]).filter(
        expr=_col("doc").is_in(sorted(nodes))), ["doc", "rid", "rank"])
    rank = {int(doc): (tuple(float(x) for x in r), str(rid))
            for doc, r, rid in zip(info["doc"], info["rank"], info["rid"], strict=True)}
    exact_pairs = set(exact)
    dropped: dict[int, tuple[str, bool]] = {}
    sizes: dict[int, int] = {}
    for members in groups.values():
        best = max(members, key=lambda m: (rank[m][0], -m))
        sizes[best] = len(members)
        for m in members:
            if m != best:
                dropped[m] = (rank[best][1], (min(m, best), max(m, best)) in exact_pairs)
    return dropped, sizes
