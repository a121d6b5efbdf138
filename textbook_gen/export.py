"""``textbook-gen export``: hand a corpus to a training job as it is.

Token formats (one token file per split, EOS after each document, dtype from the vocabulary;
``export.json`` records the dtype written and the reader each format is meant for):

- ``datatrove``: ``<split>/00000_<split>.ds`` (little-endian uint16/uint32 tokens), ``.ds.index``
  (uint64 document ends, in tokens) and ``.ds.metadata`` (``tokenizer|token size``, count):
  the layout datatrove's DocumentTokenizer writes and nanotron reads;
- ``megatron``: ``<split>_text_document.bin`` and ``.idx`` (``MMIDIDX`` index, version 1,
  uint16 below a vocabulary of 65,500 else int32; one sequence per document), as
  megatron-core's IndexedDataset reads;
- ``llmc``: ``<split>_000000.bin``, a 256 x int32 header then the tokens: magic 20240520
  version 1 for uint16 tokens (GPT-2 style: llm.c's ``dataloader.h`` and ``train_gpt2.py``),
  20240801 version 7 for uint32 (llama-3 style: only ``train_llama3.py`` reads it;
  ``dataloader.h`` stops with "Bad magic");
- ``olmo``: ``<split>/part-00000.npy``, raw little-endian tokens with no header (the name Dolma's
  tokenizer writes), as OLMo's ``MemMapDataset`` reads it: ``np.memmap(path, dtype, mode="r")``;
- ``npy``: ``<split>/tokens.npy`` (a NumPy array with its NPY header, for ``np.load``; not for
  raw-memmap readers) and ``doc_ends.npy``.

``hf``: ``data/<split>-NNNNN-of-MMMMM-<sha256 prefix>.parquet`` and a ``README.md`` dataset card.
The card has no ``configs:`` block: ``datasets`` finds the splits from the file names and then
keys its cache on the files' paths (which name their content) and modification times, so a load
gives exactly this export's rows (with a ``configs:`` block it keys the cache on the folder's
basename and the patterns only).

Records stream from the runs' shards; selection (kinds, judge score, verified) and the
validation split are decided per document from a hash of its id and the seed, so splits are
disjoint and stable. Shuffling needs every document's place: the texts (hf) or tokens go to a
spool file first and are written in a seeded permutation, so memory holds a few numbers per
document (offsets and lengths), never the corpus. Everything is built in a folder beside
``--out`` and renamed into place with its manifest (``export.json``) last.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
from array import array
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from textbook_gen import __version__
from textbook_gen.errors import ConfigError, InputError
from textbook_gen.shards import (
    Snapshot,
    atomic_write_bytes,
    reading,
    sha256_file,
    writing,
)
from textbook_gen.shards import iter_records as read_file

FORMATS = ("datatrove", "megatron", "llmc", "olmo", "npy", "hf")
BATCH = 1000
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")


# ----------------------------------------------------------------------------- tokenizers


@dataclass
class Tokenizer:
    """A tokenizer as export uses it: batch encoding, its EOS id and its identity."""

    spec: str
    name: str
    sha256: str
    vocab_size: int
    eos_id: int | None
    _encode: Any

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = self._encode(texts)
        return out

    @property
    def dtype(self) -> Any:
        return np.uint16 if self.vocab_size <= 65536 else np.uint32


def load_tokenizer(spec: str, eos: str | None = None) -> Tokenizer:
    """``tiktoken:<encoding>`` (offline encodings) or a Hugging Face ``tokenizer.json``."""
    if spec.startswith("tiktoken:"):
        return _tiktoken(spec, spec.split(":", 1)[1], eos)
    path = Path(spec)
    if path.suffix == ".gguf":
        raise ConfigError(f"--tokenizer {spec}: the tokenizer inside a .gguf file is not read"
                          " yet; give the model's tokenizer.json, or tiktoken:cl100k_base")
    if not path.is_file():
        raise ConfigError(f"--tokenizer {spec}: no such file; give a tokenizer.json (Hugging"
                          " Face tokenizers) or tiktoken:<encoding>")
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise ConfigError("--tokenizer FILE needs Hugging Face's tokenizers: pip install"
                          " 'textbook-gen[export]'") from None
    raw = path.read_bytes()
    try:
        tok = HFTokenizer.from_str(raw.decode("utf-8"))
    except (UnicodeDecodeError, Exception) as e:  # noqa: BLE001 - the library raises plain Exception
        raise InputError(f"--tokenizer {spec}: not a Hugging Face tokenizer.json ({str(e)[:200]})"
                         ) from None
    eos_id = None
    for name in ([eos] if eos else EOS_NAMES):
        eos_id = tok.token_to_id(name)
        if eos_id is not None:
            break
    if eos_id is None and eos:
        raise ConfigError(f"--eos {eos!r}: not a token of {spec}")
    if eos_id is None:
        raise ConfigError(f"--tokenizer {spec}: no end-of-text token among {', '.join(EOS_NAMES)};"
                          " name it with --eos TOKEN, or pass --no-eos")

    # document text is text: a literal "</s>" or "<|endoftext|>" in it is encoded as the
    # characters it is, as tiktoken's encode_ordinary does, never as the special token's id
    tok.encode_special_tokens = True

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return Tokenizer(spec, path.name, hashlib.sha256(raw).hexdigest(), tok.get_vocab_size(),
                     eos_id, encode)


def _tiktoken(spec: str, name: str, eos: str | None) -> Tokenizer:
    import tiktoken

    try:
        enc = tiktoken.get_encoding(f"{name}_offline")
    except (KeyError, ValueError):
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # noqa: BLE001 - tiktoken tries to download unknown encodings
            raise ConfigError(f"--tokenizer {spec}: encoding {name!r} is not available offline"
                              f" ({str(e)[:120]}); cl100k_base is bundled") from None
    try:
        eos_id = enc.encode_single_token(eos) if eos else enc.eot_token
    except KeyError:
        raise ConfigError(f"--eos {eos!r}: not a token of {spec} (its end-of-text token is"
                          f" {enc.decode_single_token_bytes(enc.eot_token).decode()!r})"
                          ) from None
    digest = hashlib.sha256()
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        digest.update(token + rank.to_bytes(4, "little"))

    def encode(texts: list[str]) -> list[list[int]]:
        return enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    return Tokenizer(spec, name, digest.hexdigest(), enc.n_vocab, eos_id, encode)


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    kinds: tuple[str, ...] = ()
    min_score: float | None = None
    verified_only: bool = False
    validation: float = 0.0
    seed: int = 0

    def keeps(self, r: dict[str, Any]) -> bool:
        q = r.get("quality") or {}
        if self.kinds and r.get("kind") not in self.kinds:
            return False
        if self.min_score is not None:
            score = q.get("judge_score")
            if score is None or score < self.min_score:
                return False
        return not (self.verified_only and q.get("verified") is not True)

    def split(self, rid: str) -> str:
        if self.validation <= 0:
            return "train"
        return "validation" if _unit(f"{self.seed}:split:{rid}") < self.validation else "train"


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _sources(builds: list[Any], weights: list[float] | None,
             sel: Selection) -> Iterator[dict[str, Any]]:
    """Selected records of every run (a held build, ``shards.reading``, or a shard file);
    with weights, each run's share of the documents is its weight (a seeded sample of each
    run, no document repeated: two passes over the same build)."""

    def iter_records(run: Any) -> Iterator[dict[str, Any]]:
        return run.records() if isinstance(run, Snapshot) else read_file(run)

    if weights is None:
        for run in builds:
            for r in iter_records(run):
                if sel.keeps(r):
                    yield r
        return
    if len(weights) != len(builds) or any(w <= 0 for w in weights):
        raise ConfigError(f"--weights: give one positive weight per run ({len(builds)})")
    keys = [np.array([_unit(f"{sel.seed}:mix:{r.get('id')}") for r in iter_records(run)
                      if sel.keeps(r)]) for run in builds]
    total = sum(weights)
    shares = [w / total for w in weights]
    n = min(len(k) / s for k, s in zip(keys, shares, strict=True))  # the largest mix that fits
    for run, k, share in zip(builds, keys, shares, strict=True):
        take = int(n * share)
        cut = np.sort(k)[take - 1] if take else -1.0
        for r in iter_records(run):
            if sel.keeps(r) and _unit(f"{sel.seed}:mix:{r.get('id')}") <= cut:
                yield r


# ----------------------------------------------------------------------------- spool


@dataclass
class _Spool:
    """Per split: tokens (or record lines) appended to a file; per document its offset and
    length, so the split can be written back in any order."""

    path: Path
    itemsize: int
    # 16 bytes a document (machine integers, not Python ones): 16 MB for a million
    offsets: array[int] = field(default_factory=lambda: array("q"))
    lengths: array[int] = field(default_factory=lambda: array("q"))
    written: int = 0

    def __post_init__(self) -> None:
        self.f = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def add(self, data: bytes) -> None:
        self.offsets.append(self.written)
        self.lengths.append(len(data) // self.itemsize)
        with writing(self.path):
            self.f.write(data)
        self.written += len(data)

    def add_many(self, data: bytes, lengths: list[int]) -> None:
        """Several documents at once: their bytes end to end, and their lengths in items."""
        at = self.written
        for n in lengths:
            self.offsets.append(at)
            self.lengths.append(n)
            at += n * self.itemsize
        with writing(self.path):
            self.f.write(data)
        self.written += len(data)

    def close(self) -> None:
        with writing(self.path):
            self.f.close()

    def order(self, seed: int, shuffle: bool) -> np.ndarray:
        n = len(self.offsets)
        return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


# ----------------------------------------------------------------------------- writers


def file_dtype(fmt: str, tok: Tokenizer) -> np.dtype:
    """The dtype of the tokens in ``fmt``'s files: the one the writer writes and
    ``export.json`` records."""
    if fmt == "megatron" and tok.vocab_size >= 65500:
        return np.dtype("<i4")  # megatron-core's DType.optimal_dtype: int32 past 65,500
    return np.dtype(tok.dtype).newbyteorder("<")


def layout(fmt: str, dtype: np.dtype) -> dict[str, Any]:
    """What ``export.json`` says of the token files: how they are laid out and who reads them."""
    raw = f"raw little-endian {dtype.name}, no header"
    if fmt == "datatrove":
        return {"tokens": raw, "read_by": "datatrove's DatatroveFolderDataset, nanotron"}
    if fmt == "megatron":
        return {"tokens": f"{raw} (.bin); MMIDIDX index (.idx)",
                "read_by": "megatron-core's IndexedDataset (Megatron-LM, NeMo)"}
    if fmt == "llmc" and dtype.itemsize == 2:
        return {"tokens": "256 x int32 header (magic 20240520, version 1, token count), then"
                f" {dtype.name}", "read_by": "llm.c's dataloader.h (train_gpt2.c, train_gpt2.cu)"
                " and train_gpt2.py"}
    if fmt == "llmc":
        return {"tokens": "256 x int32 header (magic 20240801, version 7, token count), then"
                f" {dtype.name} (llama-3 style: the vocabulary does not fit uint16)",
                "read_by": "llm.c's train_llama3.py only; llm.c's dataloader.h (train_gpt2.c,"
                " train_gpt2.cu) stops with 'Bad magic'"}
    if fmt == "olmo":
        return {"tokens": raw, "read_by": f"OLMo's MemMapDataset and olmo-core's numpy datasets"
                f" with dtype {dtype.name}: np.memmap(path, dtype='{dtype.name}', mode='r')"}
    return {"tokens": f"NumPy .npy array of {dtype.name} (with its NPY header)",
            "read_by": "np.load(path, mmap_mode='r'); not raw-memmap readers (OLMo: --format"
            " olmo)"}


def _write_tokens(fmt: str, spool: _Spool, order: np.ndarray, split: str, out: Path,
                  tok: Tokenizer) -> tuple[list[Path], int]:
    dtype = file_dtype(fmt, tok)
    spooled = np.dtype(tok.dtype).newbyteorder("<")
    lengths = np.asarray(spool.lengths, dtype=np.int64)[order]
    offsets = np.asarray(spool.offsets, dtype=np.int64)[order]  # in bytes
    total = int(lengths.sum())
    fd = os.open(spool.path, os.O_RDONLY)

    def docs() -> Iterator[np.ndarray]:
        """The documents in the new order, read one by one (a memory map of the spool would
        count every page it touched in the process's memory)."""
        for at in range(0, len(offsets), 65536):  # Python ints for one chunk at a time
            chunk = zip(offsets[at:at + 65536].tolist(), lengths[at:at + 65536].tolist(),
                        strict=True)
            for o, n in chunk:
                raw = os.pread(fd, n * spool.itemsize, o)
                yield np.frombuffer(raw, spooled).astype(dtype, copy=False)

    def stream(f: Any, header: bytes = b"") -> None:
        f.write(header)
        for doc in docs():
            f.write(doc.tobytes())

    files: list[Path] = []
    if fmt == "datatrove":
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        ds = folder / f"00000_{split}.ds"
        with writing(ds), open(ds, "wb") as f:
            stream(f)
        with writing(folder / f"{ds.name}.index"):
            (folder / f"{ds.name}.index").write_bytes(np.cumsum(lengths).astype("<u8").tobytes())
        with writing(folder / f"{ds.name}.metadata"):
            (folder / f"{ds.name}.metadata").write_text(
                f"{tok.name}|{dtype.itemsize}\n{total}\n{total:,} tokens")
        files += [ds, folder / f"{ds.name}.index", folder / f"{ds.name}.metadata"]
    elif fmt == "megatron":
        prefix = out / f"{split}_text_document"
        with writing(prefix.with_suffix(".bin")), open(prefix.with_suffix(".bin"), "wb") as f:
            stream(f)
        code = 8 if dtype == np.dtype("<u2") else 4
        pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("<i8") * dtype.itemsize \
            if len(lengths) else np.zeros(0, "<i8")
        with writing(prefix.with_suffix(".idx")), open(prefix.with_suffix(".idx"), "wb") as f:
            f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
            f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(lengths) + 1))
            f.write(lengths.astype("<i4").tobytes() + pointers.astype("<i8").tobytes())
            f.write(np.arange(len(lengths) + 1, dtype="<i8").tobytes())
        files += [prefix.with_suffix(".bin"), prefix.with_suffix(".idx")]
    elif fmt == "llmc":
        header = np.zeros(256, dtype="<i4")
        header[:3] = (20240520, 1, total) if dtype.itemsize == 2 else (20240801, 7, total)
        path = out / f"{split}_000000.bin"
        with writing(path), open(path, "wb") as f:
            stream(f, header.tobytes())
        files.append(path)
    elif fmt == "olmo":
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "part-00000.npy"
        with writing(path), open(path, "wb") as f:
            stream(f)
        files.append(path)
    elif fmt == "npy":
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        with writing(folder / "tokens.npy"), open(folder / "tokens.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                    "shape": (total,)})
            stream(f)
        with writing(folder / "doc_ends.npy"):
            np.save(folder / "doc_ends.npy", np.cumsum(lengths).astype(np.uint64))
        files += [folder / "tokens.npy", folder / "doc_ends.npy"]
    os.close(fd)
    return files, total


def _write_hf(spool: _Spool, order: np.ndarray, split: str, out: Path,
              per_shard: int = 50_000) -> list[Path]:
    import pyarrow.parquet as pq

    from textbook_gen.shards import arrow_table

    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(order)
    shards = max(1, -(-n // per_shard))
    files = []
    with open(spool.path, "rb") as f:
        for s in range(shards):
            rows = []
            for i in order[s * per_shard:(s + 1) * per_shard]:
                f.seek(spool.offsets[i])
                rows.append(json.loads(f.read(spool.lengths[i])))
            path = folder / f"{split}-{s:05d}-of-{shards:05d}.parquet"
            with writing(path):
                pq.write_table(arrow_table(rows), path, compression="zstd")
            # the name carries the content's hash: datasets keys its cache on the file paths
            # (and mtimes, whose resolution is the file system's), so a path is one content
            named = path.with_name(f"{path.stem}-{sha256_file(path)[:16]}.parquet")
            path.rename(named)
            files.append(named)
    return files


# ----------------------------------------------------------------------------- the export


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]


def export(runs: list[Path], out: Path, *, fmt: str, tokenizer: str | None = None,
           eos: str | None = None, add_eos: bool = True, selection: Selection = Selection(),
           shuffle: bool = True, weights: list[float] | None = None,
           force: bool = False, progress: Any = None) -> ExportResult:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if not 0 <= selection.validation < 1:
        raise ConfigError("--validation: a fraction, at least 0 and under 1")
    if fmt != "hf" and tokenizer is None:
        raise ConfigError(f"--format {fmt} needs --tokenizer (a tokenizer.json or"
                          " tiktoken:cl100k_base)")
    out = Path(out)
    lock = _hold(out)
    try:
        _recover(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a folder; give a new folder")
        if out.exists() and any(out.iterdir()):
            if not (out / "export.json").is_file():  # the user's folder: never replaced
                raise ConfigError(f"--out {out}: exists and holds files that are not an export"
                                  " (no export.json); give a new folder")
            if not force:
                raise ConfigError(f"--out {out}: holds an export; give a new folder, or --force"
                                  " to replace it")
        tok = load_tokenizer(tokenizer, eos) if fmt != "hf" and tokenizer else None
        work = _hidden(out, "export")
        work.mkdir(parents=True)
        try:
            with ExitStack() as held:  # each run's build, held for every pass over it
                builds = [held.enter_context(reading(Path(r))) if Path(r).is_dir() else r
                          for r in runs]
                manifest = _build(runs, builds, work, fmt, tok, add_eos, selection, shuffle,
                                  weights, progress)
            atomic_write_bytes(work / "export.json",
                               (json.dumps(manifest, indent=2) + "\n").encode())
            if out.exists():  # a kill between these renames: the next export finishes them
                old = _hidden(out, "old")
                out.rename(old)
                work.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                work.rename(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        _release(lock, out)
    return ExportResult(out, manifest)


_HIDDEN = re.compile(r"\.(?P<name>.+)\.(?P<what>export|old)-(?P<pid>\d+)")


def _hidden(out: Path, what: str) -> Path:
    """A folder of this export beside ``out``: ``export`` (being built) or ``old`` (the export
    that ``--force`` replaces, between the two renames)."""
    return out.parent / f".{out.name}.{what}-{os.getpid()}"


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.export.lock"


def _hold(out: Path) -> int:
    """Take the lock of exports to ``out`` (refused while another export holds it): while it
    is held, every hidden folder of ``out`` is this export's or a dead one's."""
    import fcntl

    path = _lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create its folder ({e.strerror or e})") from None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"--out {out}: another export is writing it; wait for it to end,"
                              " or give another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file the export before this one removed as we opened it
            return fd
        os.close(fd)


def _release(fd: int, out: Path) -> None:
    _lock_path(out).unlink(missing_ok=True)
    os.close(fd)


def _recover(out: Path) -> None:
    """Finish after an export killed beside ``out`` (the lock is held: none is running). Killed
    between the two renames of ``--force``, ``out`` is absent: the new export takes its place
    if it was whole (its ``export.json`` is written, atomically, before the renames), else the
    old one is put back. Whatever else a dead export left is removed."""
    left: dict[tuple[str, int], Path] = {}
    for p in out.parent.iterdir():
        m = _HIDDEN.fullmatch(p.name)
        if m and m["name"] == out.name and p.is_dir():
            left[(m["what"], int(m["pid"]))] = p
    if not out.exists():
        for what, pid in sorted(left):
            if what != "old":
                continue
            work = left.get(("export", pid))
            if work is not None and (work / "export.json").is_file():
                work.rename(out)  # complete the swap (the old one is removed below)
                del left[("export", pid)]
            else:
                left.pop((what, pid)).rename(out)  # restore the export it replaced
            break
    for p in left.values():
        shutil.rmtree(p, ignore_errors=True)


def _build(runs: list[Path], builds: list[Any], work: Path, fmt: str, tok: Tokenizer | None,
           add_eos: bool,
           sel: Selection, shuffle: bool, weights: list[float] | None,
           progress: Any) -> dict[str, Any]:
    from textbook_gen.shards import dumps

    itemsize = np.dtype(tok.dtype).itemsize if tok is not None else 1
    spools = {s: _Spool(work / f".spool-{s}", itemsize) for s in ("train", "validation")}
    eos = [tok.eos_id] if tok is not None and add_eos and tok.eos_id is not None else []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if tok is None:
            for r in batch:
                spools[sel.split(str(r.get("id")))].add((dumps(r) + "\n").encode("utf-8"))
        else:
            ids = tok.encode_batch([str(r.get("text", "")) for r in batch])
            by_split: dict[str, list[list[int]]] = {}
            for r, t in zip(batch, ids, strict=True):
                by_split.setdefault(sel.split(str(r.get("id"))), []).append(t)
            for name, docs in by_split.items():  # one array and one write a batch and split
                lengths = [len(t) + len(eos) for t in docs]
                flat = np.fromiter(chain.from_iterable(t + eos for t in docs),
                                   dtype=np.dtype(tok.dtype).newbyteorder("<"),
                                   count=sum(lengths))
                spools[name].add_many(flat.tobytes(), lengths)
        batch.clear()

    for seen, r in enumerate(_sources(builds, weights, sel), 1):
        batch.append(r)
        if len(batch) >= BATCH:
            flush()
            if progress is not None:
                progress("tokenize" if tok else "read", seen, 0)
    flush()
    splits: dict[str, Any] = {}
    for name, spool in spools.items():
        spool.close()
        if name == "validation" and not spool.offsets:
            spool.path.unlink()
            continue
        order = spool.order(sel.seed, shuffle)
        if tok is None:
            files = _write_hf(spool, order, name, work)
            tokens = None
        else:
            files, tokens = _write_tokens(fmt, spool, order, name, work, tok)
        spool.path.unlink()
        splits[name] = {"documents": len(spool.offsets), "tokens": tokens,
                        "files": [{"name": str(f.relative_to(work)), "bytes": f.stat().st_size,
                                   "sha256": sha256_file(f)} for f in files]}
    if not any(s["documents"] for s in splits.values()):
        raise InputError(f"nothing to export: no record of {', '.join(map(str, runs))} passes the"
                         " selection (--kind, --min-score, --verified-only)")
    manifest = {
        "tool": f"textbook-gen {__version__}",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "format": fmt,
        "sources": [{"path": str(r), "weight": weights[i] if weights else None}
                    for i, r in enumerate(runs)],
        "selection": {"kinds": list(sel.kinds), "min_score": sel.min_score,
                      "verified_only": sel.verified_only, "validation": sel.validation,
                      "seed": sel.seed, "shuffle": shuffle},
        "tokenizer": None if tok is None else {
            "spec": tok.spec, "name": tok.name, "sha256": tok.sha256,
            "vocab_size": tok.vocab_size, "eos_id": tok.eos_id if eos else None,
            "dtype": file_dtype(fmt, tok).name},
        "token_files": None if tok is None else layout(fmt, file_dtype(fmt, tok)),
        "splits": splits,
    }
    if fmt == "hf":
        from textbook_gen.card import write_card

        with writing(work / "README.md"):
            write_card(work, runs, manifest)
    return manifest
