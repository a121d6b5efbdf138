"""Shard writers and readers: the last stage of the flow, and the first of ``cat`` / ``curate``.

A shard is written under a temporary name, fsynced, then renamed, so a shard that exists is
complete. Writers handle rotation and naming once; formats only differ in ``_encode``.

A directory's outputs change as a whole: a ``Build`` writes new shards under names no earlier
build used, beside the old ones; its manifest, written last with one atomic rename, is the
switch. A kill at any moment leaves either the old corpus or the new one. Readers trust the
manifest, never a listing of the folder.

What a build removes it can prove it wrote: files of ``shards/`` and ``rejects/`` with a build's
own names (``OWN_NAME``) that the current manifest does not list. Anything else there is the
user's and is never touched; a directory that holds such files and no manifest is refused.

Readers see one build: ``reading`` takes a shared lock on the directory's ``LOCK`` file before
it reads the manifest and holds it until the last record is read; a sweep takes the lock
exclusively without waiting, and when a reader holds it the sweep leaves the old files for a
later one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import fcntl
except ImportError:  # not POSIX: no locks, and a sweep may remove what a reader is reading
    fcntl = None  # type: ignore[assignment]

from textbook_gen.errors import InputError, TextbookGenError

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


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` raised while writing it: a write that fails (a full
    disk) raises one without a file name, and the CLI's one line would name nothing."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk keeps no half file
            raise
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
        fmt: str = "parquet",
        max_records: int = 10_000,
        keep_empty: bool = False,
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
        self.keep_empty = keep_empty  # write one empty shard if no record came: a valid, empty corpus

    def write(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.max_records:
            self._flush()

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> list[ShardInfo]:
        if self._buffer or (self.keep_empty and not self.shards):
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


# Parquet types of the record fields textbook-gen writes: every shard of a corpus gets the same
# schema, even one where a field is null throughout (a type pyarrow cannot infer) or an int
# where another shard has a float. Other fields are inferred; an all-null one becomes a string.
KNOWN_TYPES = {
    "seed_words[]": "string",
    "quality.tokens": "int64", "quality.verified": "bool", "quality.judge_score": "float64",
    "quality.dup_cluster": "string", "quality.exercises_total": "int64",
    "quality.exercises_passed": "int64", "quality.exercises_removed": "int64",
    "provenance.params.temperature": "float64", "provenance.params.max_tokens": "int64",
    "provenance.params.top_p": "float64", "provenance.params.truncation_retry": "int64",
    "provenance.seed": "int64", "provenance.cost_usd": "float64",
    "provenance.answer_start_chars": "int64",
    "provenance.usage.input": "int64", "provenance.usage.output": "int64",
    "provenance.loop.n": "int64", "provenance.loop.target": "int64",
    "provenance.loop.candidate": "int64", "provenance.loop.revision": "int64",
    "provenance.loop.draft_score": "float64", "rejected.chosen": "string",
}


def arrow_table(records: list[dict[str, Any]]) -> Any:
    """A pyarrow table of the records with the corpus-wide types above."""
    import pyarrow as pa

    if not records:
        return pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    table = pa.Table.from_pylist(records)

    def fix(t: Any, path: str) -> Any:
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, fix(f.type, f"{path}.{f.name}".lstrip(".")))
                              for f in t])
        if pa.types.is_list(t):
            return pa.list_(fix(t.value_type, f"{path}[]"))
        if path in KNOWN_TYPES:
            return pa.type_for_alias(KNOWN_TYPES[path])
        return pa.string() if pa.types.is_null(t) else t

    schema = pa.schema([pa.field(f.name, fix(f.type, f.name)) for f in table.schema])
    return table.cast(schema)


def _encode(records: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(arrow_table(records), sink, compression="zstd")
        return sink.getvalue()
    text = "".join(dumps(r) + "\n" for r in records).encode("utf-8")
    if fmt == "jsonl.zst":
        import zstandard

        return zstandard.ZstdCompressor(level=10).compress(text)
    return text


# ----------------------------------------------------------------------------- reading


def sha256_file(path: Path, digest: Any = None) -> str:
    """The sha256 of a file, read in chunks (or fed into ``digest`` and its hex returned)."""
    h = digest or hashlib.sha256()
    for chunk in file_chunks(path):
        h.update(chunk)
    return str(h.hexdigest())


Source = Path | str  # a local path, or a URL fsspec reads (s3://, gs://, https://, ...)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: C:// is a path
_WEB = ("http", "https")


def is_url(name: str | Path) -> bool:
    """Whether ``name`` is a URL (``s3://bucket/key``) rather than a local path."""
    return isinstance(name, str) and bool(_SCHEME.match(name))


def _url_path(url: str) -> str:
    """The part of a URL that names the object: a web URL's query (a presigned URL's
    signature) is not part of its name."""
    if url.split("://", 1)[0].lower() in _WEB:
        return urlsplit(url).path
    return url.split("://", 1)[1]


def source_name(source: Source) -> str:
    """A source's last part (``a.jsonl`` of ``s3://bucket/corpus/a.jsonl``)."""
    if isinstance(source, str):
        return _url_path(source).rstrip("/").rsplit("/", 1)[-1]
    return source.name


def input_sources(args: Iterable[str | Path]) -> list[Source]:
    """Inputs as given: local paths stay paths (the shell expanded their globs); a URL is read
    through fsspec, and a URL with a glob (``s3://bucket/corpus/*.jsonl.zst``) stands for the
    objects it matches, in name order (web URLs are never globs)."""
    out: list[Source] = []
    for arg in args:
        if not is_url(arg):
            out.append(Path(arg))
            continue
        url = str(arg)
        fs, protocol = _url_fs(url)
        if protocol.lower() in _WEB:  # asking a web server whether a URL is a folder can
            out.append(url)             # download it; a page read as JSONL fails by itself
            continue
        if not any(c in url for c in "*?["):
            try:
                folder = fs.isdir(url)
            except Exception as e:  # the filesystem's own errors (credentials, network)
                raise InputError(f"{url}: cannot read it ({_why(e)})") from None
            if folder:  # read as one object, it would be empty: nothing curated, no error
                raise InputError(f"{url}: a folder of objects, not one; name the objects, or "
                                 f"a glob of them in quotes: '{url.rstrip('/')}/*.jsonl.zst'")
            out.append(url)
            continue
        try:
            # folders a glob matches are left out: S3 would give each as an empty object
            found = sorted(path for path, info in fs.glob(url, detail=True).items()
                           if info.get("type") == "file")
        except Exception as e:  # the filesystem's own errors (credentials, permissions, network)
            raise InputError(f"{url}: cannot list it ({_why(e)})") from None
        if not found:
            raise InputError(f"{url}: matches no objects; check the bucket and the pattern")
        out.extend(fs.unstrip_protocol(f) for f in found)
    return out


def _url_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for a URL, and its protocol."""
    protocol = url.split("://", 1)[0]
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{url}: reading URLs needs fsspec and the package for {protocol}:// "
                         '(pip install "textbook-gen[s3]" for s3://, or the gcsfs/adlfs '
                         "package fsspec names)") from None
    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise InputError(f"{url}: fsspec cannot read {protocol}:// here ({_why(e)})") from None
    return fs, protocol


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def iter_records(path: Source, subdir: str = "shards") -> Iterator[dict[str, Any]]:
    """Records from a shard file, a plain/zst JSONL or Parquet file, or a run directory (its
    ``subdir``: "shards" or "rejects", of one build: see ``reading``); a URL (``is_url``) names
    one file, read through fsspec. A file that is cut short, corrupt or not UTF-8 raises
    ``InputError`` naming it."""
    if is_url(path):
        yield from _iter_url(str(path))
        return
    path = Path(path)
    if path.is_dir():
        with reading(path) as build:
            yield from build.records(subdir)
        return
    if not path.exists():
        raise InputError(f"{path}: no such file or run directory")
    with open(path, "rb") as f:
        yield from _records_of(path, f, iter(lambda: f.read(1 << 20), b""))


def _iter_url(url: str) -> Iterator[dict[str, Any]]:
    fs, _ = _url_fs(url)
    try:
        f = fs.open(url, "rb")
    except Exception as e:  # the filesystem's own errors (missing, credentials, network)
        raise InputError(f"{url}: cannot open it ({_why(e)})") from None
    with f:
        yield from _records_of(url, f, _read_chunks(url, f))


def _records_of(name: Source, f: Any, raw: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The records of one open file (``raw``: its bytes), in the format its name says."""
    base = source_name(name)
    if base.endswith(".parquet"):
        yield from _iter_parquet(name, f)
        return
    yield from _iter_jsonl(name, _zstd_chunks(name, raw) if base.endswith(".zst") else raw)


def _read_chunks(url: str, f: Any, size: int = 1 << 20) -> Iterator[bytes]:
    try:
        while chunk := f.read(size):
            yield chunk
    except Exception as e:  # a connection lost halfway is the input's error, named
        raise InputError(f"{url}: reading it failed ({_why(e)})") from None


def _iter_parquet(name: Source, where: Any) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(where).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{name}: not a readable Parquet file ({e})") from None
    except Exception as e:  # a remote filesystem's own errors, met halfway through the file
        if not is_url(name):
            raise
        raise InputError(f"{name}: reading it failed ({_why(e)})") from None


def file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in chunks of ``size``."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _zstd_chunks(path: Source, raw_chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompressed bytes of every frame; a frame cut short is an error, not an early end."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    started = False
    try:
        for raw in raw_chunks:
            while raw:
                started = True
                out = d.decompress(raw)
                if out:
                    yield out
                if not d.eof:
                    break
                raw = d.unused_data  # the next frame
                d = dctx.decompressobj()
                started = False
    except zstandard.ZstdError as e:
        raise InputError(f"{path}: not valid zstd data ({e})") from None
    if started:
        raise InputError(f"{path}: the zstd data is cut short (the file is truncated); rebuild"
                         " it with the command that made it")


def _iter_jsonl(path: Source, chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    lineno = 0
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for raw in lines:
            lineno += 1
            record = _parse_line(path, lineno, raw)
            if record is not None:
                yield record
    if rest:
        record = _parse_line(path, lineno + 1, rest)
        if record is not None:
            yield record


def _parse_line(path: Source, lineno: int, raw: bytes) -> dict[str, Any] | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column"
                         f" {e.start + 1}); JSONL must be UTF-8") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}:{lineno}: each line must be a JSON object")
    return record


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """A directory's manifest, None if it has none; an unreadable one is an error."""
    path = Path(run_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(
            f"{path}: cannot read the manifest ({e}); rebuild the outputs with the command that"
            " made them (a rerun of `textbook-gen run` sends nothing already stored)") from None
    if not isinstance(data, dict) or not isinstance(data.get("shards"), list) or not all(
            isinstance(x, dict) for x in data["shards"]):
        raise InputError(f"{path}: not a textbook-gen manifest (no list of shards); rebuild the"
                         " outputs with the command that made them")
    return data


LOCK = ".textbook-gen.lock"  # readers share it; a sweep takes it alone (module docstring)
# the names a build gives its shards (ShardWriter: "<prefix>-<build id>[-<file>]-<n>.<format>",
# and ".<name>.tmp" while one is written) and its scratch files (Build.temp_path)
OWN_NAME = re.compile(r"\.?(?:part|rejects)-(?P<build>[0-9a-f]{8})(?:-\d{5})+"
                      r"\.(?:jsonl\.zst|jsonl|parquet)(?:\.tmp)?")
TEMP_NAME = re.compile(r"\.build-(?P<build>[0-9a-f]{8})-.+")


def _lock_fd(run_dir: Path, create: bool) -> int | None:
    """An open descriptor of the directory's lock file; None where there is none to open."""
    if fcntl is None:
        return None
    flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    for f in (flags, os.O_RDONLY):  # another user's directory: a read-only descriptor locks too
        try:
            return os.open(run_dir / LOCK, f | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
    return None


class Snapshot:
    """One build of a directory, as a reader holds it (``reading``): its manifest, and the
    files it lists, which stay until the reader lets go."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any]):
        self.root = run_dir
        self.manifest = manifest

    def files(self, subdir: str = "shards") -> list[Path]:
        """The build's shards of ``subdir``, each checked to be whole."""
        files = []
        for s in self.manifest["shards"]:
            name = str(s.get("name", ""))
            if not name.startswith(subdir + "/"):
                continue
            path = self.root / name
            size = path.stat().st_size if path.is_file() else None
            if size != s.get("bytes"):
                found = "is missing" if size is None else f"has {size} bytes, not {s.get('bytes')}"
                raise TextbookGenError(f"{path}: listed in the manifest but {found}; rebuild"
                                       " the outputs with the command that made them")
            files.append(path)
        return files

    def records(self, subdir: str = "shards") -> Iterator[dict[str, Any]]:
        for shard in self.files(subdir):
            yield from iter_records(shard)


@contextmanager
def reading(run_dir: Path) -> Iterator[Snapshot]:
    """Hold the build a directory's manifest names: while inside, no sweep removes its files,
    though a new build may be committed beside it (the next ``reading`` sees that one)."""
    run_dir = Path(run_dir)
    # a lock file only where there are outputs: a folder that is not one gets no file from us
    fd = _lock_fd(run_dir, create=True) if (run_dir / "manifest.json").exists() else None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a sweep holds it for a moment at most
        manifest = read_manifest(run_dir)
        if manifest is None:
            if (run_dir / "run.sqlite").exists():
                why = ("its outputs were never completed (a run stopped before writing them);"
                       " run the same `textbook-gen run` command again to rebuild them from the"
                       " store: nothing stored is sent again")
            else:
                why = "is this a run or curate output directory?"
            raise InputError(f"{run_dir}: no manifest.json, so its shards cannot be"
                                   f" trusted: {why}")
        yield Snapshot(run_dir, manifest)
    finally:
        if fd is not None:
            os.close(fd)


def shard_files(run_dir: Path, subdir: str = "shards") -> list[Path]:
    """The shards of a run directory as its manifest lists them, each checked to be whole
    (a later build may remove them: to read them, hold the build with ``reading``)."""
    with reading(run_dir) as build:
        return build.files(subdir)


def foreign_files(root: Path, whole_folder: bool) -> list[str]:
    """What a build at ``root`` did not write: in ``shards/`` and ``rejects/``, any name that
    is not a build's own; with ``whole_folder`` (curate's ``--out``), anything else at the top
    too. A run directory holds the run's store besides, so there only the two folders count."""
    found = []
    for sub in Build.SUBDIRS:
        folder = root / sub
        if folder.is_dir():
            found += [f"{sub}/{f.name}" for f in sorted(folder.iterdir())
                      if not (f.is_file() and OWN_NAME.fullmatch(f.name))]
        elif folder.exists() or folder.is_symlink():
            found.append(sub)
    if whole_folder:
        ours = {*Build.SUBDIRS, "manifest.json", ".manifest.json.tmp", LOCK}
        found += [f.name for f in sorted(root.iterdir())
                  if f.name not in ours and not TEMP_NAME.fullmatch(f.name)]
    return found


class Build:
    """One build of a directory's outputs (see the module docstring). ``whole_folder``: the
    directory is the outputs' alone (curate's ``--out``), not a run directory."""

    SUBDIRS = ("shards", "rejects")
    PREFIXES = ("part", "rejects")  # the shard names OWN_NAME knows

    def __init__(self, root: Path, *, whole_folder: bool = True):
        self.root = Path(root)
        self.id = uuid.uuid4().hex[:8]
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: exists and is not a directory; give --out a"
                             " directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{self.root}: cannot create the output directory"
                             f" ({e.strerror or e}); give --out a directory you can write") from None
        try:
            has_manifest = read_manifest(self.root) is not None
        except TextbookGenError:
            has_manifest = False
        foreign = [] if has_manifest else foreign_files(self.root, whole_folder)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                               if len(foreign) > 3 else "")
            raise InputError(f"{self.root}: holds files textbook-gen did not write ({shown}) and"
                             " no manifest.json of its outputs; write the outputs to a new or"
                             " empty directory (nothing there was touched)")
        self.sweep()

    def writer(self, subdir: str, prefix: str, fmt: str, max_records: int,
               keep_empty: bool = False) -> ShardWriter:
        if subdir not in self.SUBDIRS or prefix not in self.PREFIXES:
            raise ValueError(f"a build writes {self.PREFIXES} shards to {self.SUBDIRS}")
        return ShardWriter(self.root, subdir=subdir, prefix=f"{prefix}-{self.id}", fmt=fmt,
                           max_records=max_records, keep_empty=keep_empty)

    def temp_path(self, name: str) -> Path:
        """A scratch file of this build, removed by the next sweep if a crash leaves it."""
        return self.root / f".build-{self.id}-{name}"

    def commit(self, manifest: dict[str, Any]) -> None:
        """Switch to this build's outputs (one atomic rename), then remove the old ones."""
        write_manifest(self.root, manifest)
        self.sweep()

    def sweep(self) -> None:
        """Remove files with a build's own names (``OWN_NAME``, ``TEMP_NAME``) that are not
        this build's and that the current manifest does not list: an older build's, or those of
        a build killed before its manifest was written. Skipped while a reader holds a build
        (``reading``): a later sweep removes them."""
        fd = _lock_fd(self.root, create=True)
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
            try:
                listed = {s.get("name") for s in
                          (read_manifest(self.root) or {"shards": []})["shards"]}
            except TextbookGenError:
                listed = set()  # unreadable: none of the build files can be trusted
            for old in self.root.iterdir():
                m = TEMP_NAME.fullmatch(old.name)
                if m and m["build"] != self.id and old.is_file():
                    old.unlink(missing_ok=True)
            for sub in self.SUBDIRS:
                folder = self.root / sub
                if not folder.is_dir():
                    continue
                for f in folder.iterdir():
                    m = OWN_NAME.fullmatch(f.name)
                    if (m and m["build"] != self.id and f.is_file()
                            and f"{sub}/{f.name}" not in listed):
                        f.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write_bytes(run_dir / "manifest.json", text.encode("utf-8"))
