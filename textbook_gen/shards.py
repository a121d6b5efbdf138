"""Shard writers and readers: the last stage of the flow, and the first of ``cat`` / ``curate``.

A shard is written under a temporary name, fsynced, then renamed, so a shard that exists is
complete. Writers handle rotation and naming once; formats only differ in ``_encode``.

A directory's outputs change as a whole: a ``Build`` writes new shards under names no earlier
build used, beside the old ones; its manifest, written last with one atomic rename, is the
switch; files no manifest lists are removed after. A kill at any moment leaves either the old
corpus or the new one. Readers trust the manifest, never a listing of the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from textbook_gen.errors import TextbookGenError

FORMATS = ("jsonl.zst", "jsonl", "parquet")


@dataclass(frozen=True)
class ShardInfo:
    name: str  # relative to the run directory, e.g. "shards/chapter-00000.jsonl.zst"
    records: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Writes records into numbered shards of at most ``max_records`` each under ``root/subdir``.

    Use as a context manager; ``shards`` lists the completed ones. A writer that is never
    given a record writes no file.
    """

    def __init__(
        self,
        root: Path,
        *,
        subdir: str = "shards",
        prefix: str = "part",
        fmt: str = "jsonl.zst",
        max_records: int = 10_000,
    ):
        if fmt not in FORMATS:
            raise TextbookGenError(f"unknown shard format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.root = Path(root)
        self.dir = self.root / subdir
        self.subdir = subdir
        self.prefix = prefix
        self.fmt = fmt
        self.max_records = max_records
        self.shards: list[ShardInfo] = []
        self._buffer: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.max_records:
            self._flush()

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> list[ShardInfo]:
        if self._buffer:
            self._flush()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()

    def _flush(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.{self.fmt}"
        data = _encode(self._buffer, self.fmt)
        atomic_write_bytes(self.dir / name, data)
        self.shards.append(
            ShardInfo(f"{self.subdir}/{name}", len(self._buffer), len(data),
                      hashlib.sha256(data).hexdigest())
        )
        self._buffer = []


def _encode(records: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records), sink, compression="zstd")
        return sink.getvalue()
    text = "".join(dumps(r) + "\n" for r in records).encode("utf-8")
    if fmt == "jsonl.zst":
        import zstandard

        return zstandard.ZstdCompressor(level=10).compress(text)
    return text


# ----------------------------------------------------------------------------- reading


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records from a shard file, a plain/zst JSONL or Parquet file, or a run directory."""
    path = Path(path)
    if path.is_dir():
        for shard in shard_files(path):
            yield from iter_records(shard)
        return
    if not path.exists():
        raise TextbookGenError(f"{path}: no such file or run directory")
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    yield from _iter_jsonl(path, _open_text(path))


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".zst"):
        import zstandard

        # the reader owns the file (closefd) and the caller closes the reader
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_jsonl(path: Path, stream: io.TextIOBase) -> Iterator[dict[str, Any]]:
    with stream:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TextbookGenError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise TextbookGenError(f"{path}:{lineno}: each line must be a JSON object")
            yield record


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """A directory's manifest, None if it has none; an unreadable one is an error."""
    path = Path(run_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TextbookGenError(
            f"{path}: cannot read the manifest ({e}); rebuild the outputs with the command that"
            " made them (a rerun of `textbook-gen run` sends nothing already stored)") from None
    if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
        raise TextbookGenError(f"{path}: not a textbook-gen manifest (no 'shards' list)")
    return data


def shard_files(run_dir: Path, subdir: str = "shards") -> list[Path]:
    """The shards of a run directory as its manifest lists them, each checked to be whole."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        if (run_dir / "run.sqlite").exists():
            why = ("its outputs were never completed (a run stopped before writing them);"
                   " run the same `textbook-gen run` command again to rebuild them from the"
                   " store: nothing stored is sent again")
        else:
            why = "is this a run or curate output directory?"
        raise TextbookGenError(f"{run_dir}: no manifest.json, so its shards cannot be trusted: {why}")
    files = []
    for s in manifest["shards"]:
        name = str(s.get("name", ""))
        if not name.startswith(subdir + "/"):
            continue
        path = run_dir / name
        size = path.stat().st_size if path.is_file() else None
        if size != s.get("bytes"):
            found = "is missing" if size is None else f"has {size} bytes, not {s.get('bytes')}"
            raise TextbookGenError(f"{path}: listed in the manifest but {found}; rebuild the"
                                   " outputs with the command that made them")
        files.append(path)
    return files


class Build:
    """One build of a directory's outputs (see the module docstring)."""

    SUBDIRS = ("shards", "rejects")

    def __init__(self, root: Path):
        self.root = Path(root)
        self.id = uuid.uuid4().hex[:8]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TextbookGenError(f"{self.root}: cannot create the output directory"
                                   f" ({e.strerror or e})") from None
        if not self.root.is_dir():
            raise TextbookGenError(f"{self.root}: exists and is not a directory; give --out a"
                                   " directory")
        self.sweep()

    def writer(self, subdir: str, prefix: str, fmt: str, max_records: int) -> ShardWriter:
        return ShardWriter(self.root, subdir=subdir, prefix=f"{prefix}-{self.id}", fmt=fmt,
                           max_records=max_records)

    def temp_path(self, name: str) -> Path:
        """A scratch file of this build, removed by the next sweep if a crash leaves it."""
        return self.root / f".build-{self.id}-{name}"

    def commit(self, manifest: dict[str, Any]) -> None:
        """Switch to this build's outputs (one atomic rename), then remove the old ones."""
        write_manifest(self.root, manifest)
        self.sweep()

    def sweep(self) -> None:
        """Remove output files the current manifest does not list: an older build's, or those
        of a build that was killed before its manifest was written."""
        try:
            listed = {s.get("name") for s in (read_manifest(self.root) or {"shards": []})["shards"]}
        except TextbookGenError:
            listed = set()  # unreadable: nothing in the folders can be trusted
        for old in self.root.glob(".build-*"):
            if not old.name.startswith(f".build-{self.id}-"):
                old.unlink(missing_ok=True)
        for sub in self.SUBDIRS:
            folder = self.root / sub
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.is_file() and f"{sub}/{f.name}" not in listed and self.id not in f.name:
                    f.unlink(missing_ok=True)


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write_bytes(run_dir / "manifest.json", text.encode("utf-8"))
