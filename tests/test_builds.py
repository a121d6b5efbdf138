"""Builds of an output directory: a build removes only files with its own names, refuses a
directory of someone else's files, and a reader (`cat`) reads one whole build while other
builds are committed beside it. Real subprocesses, a real tmpfs for the full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_kept

from textbook_gen.curate.pipeline import curate_corpus
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.errors import InputError
from textbook_gen.shards import Build

CLI = [sys.executable, "-m", "textbook_gen"]


def _jsonl(path: Path, n: int, prefix: str = "d") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": f"text number {i} " * 8})
                            + "\n" for i in range(n)))
    return path


def test_curate_refuses_an_out_holding_its_own_input_and_deletes_nothing(tmp_path):
    data = tmp_path / "data"
    source = _jsonl(data / "shards" / "part-0.jsonl", 5)
    before = source.read_bytes()
    p = subprocess.run([*CLI, "curate", str(source), "--out", str(data)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "did not write (shards/part-0.jsonl)" in p.stderr
    assert source.read_bytes() == before  # the input is still there, untouched
    assert not (data / "manifest.json").exists()


def test_a_run_directory_with_foreign_shards_and_no_manifest_is_refused(tmp_path):
    (tmp_path / "run" / "rejects").mkdir(parents=True)
    (tmp_path / "run" / "rejects" / "notes.txt").write_text("mine")
    (tmp_path / "run" / "run.sqlite").write_bytes(b"")  # a run directory's own store is fine
    with pytest.raises(InputError, match=r"did not write \(rejects/notes.txt\)"):
        Build(tmp_path / "run", whole_folder=False)
    assert (tmp_path / "run" / "rejects" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match=r"did not write \(notes.txt\)"):  # curate's --out
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
        Build(tmp_path / "out")


def test_a_build_removes_only_files_with_a_builds_own_names(tmp_path):
    out = tmp_path / "out"
    source = _jsonl(tmp_path / "in.jsonl", 6)
    settings = CurationSettings(enabled=False)
    curate_corpus([source], out, settings, fmt="jsonl", workers=1)
    first = {p.name for p in (out / "shards").iterdir()}
    # the user's files beside a textbook-gen output (it has a manifest), and what a killed
    # build left: shards with a build's names that no manifest lists, and a scratch file
    mine = {out / "shards" / "part-0.jsonl": "user", out / "shards" / "notes.txt": "user",
            out / "rejects" / "rejects-old.parquet": "user", out / "README": "user"}
    (out / "rejects").mkdir(exist_ok=True)
    for path, text in mine.items():
        path.write_text(text)
    killed = [out / "shards" / "part-0123abcd-00000.jsonl",
              out / "shards" / ".part-0123abcd-00001.jsonl.tmp",
              out / "rejects" / "rejects-0123abcd-00002-00000.parquet",
              out / ".build-0123abcd-curate-spool.jsonl.zst"]
    for path in killed:
        path.write_text("left by a killed build")
    curate_corpus([source], out, settings, fmt="jsonl", workers=1)
    for path, text in mine.items():
        assert path.read_text() == text
    assert not any(p.exists() for p in killed)
    assert not first & {p.name for p in (out / "shards").iterdir()}  # the old build's: gone
    assert [r["id"] for r in read_kept(out)] == [f"d{i}" for i in range(6)]


WRITER = """
import sys
from pathlib import Path
from textbook_gen.shards import Build

root, n, stop = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
count = Path(sys.argv[4])
i = 0
while not stop.exists():
    i += 1
    build = Build(root)
    w = build.writer("shards", "part", "jsonl", 10)
    w.write_all({"id": f"{i}-{j}", "build": i, "text": "x"} for j in range(n))
    build.commit({"shards": [s.to_dict() for s in w.close()]})
    count.write_text(str(i))
"""


def test_cat_reads_one_whole_build_while_builds_are_committed(tmp_path):
    """Each `cat` prints every record of exactly one build and exits 0, however many builds
    are committed (and the old ones swept) while it reads."""
    root, n = tmp_path / "out", 600
    stop, count = tmp_path / "stop", tmp_path / "count"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), str(stop),
                               str(count)], stderr=subprocess.PIPE, text=True)
    try:
        from conftest import wait_for

        wait_for(lambda: count.exists() and count.read_text() != "")
        overlapped = 0
        for _ in range(40):
            before = count.read_text()
            p = subprocess.run([*CLI, "cat", str(root)], capture_output=True, text=True,
                               timeout=120)
            assert p.returncode == 0, p.stderr
            lines = p.stdout.splitlines()
            assert len(lines) == n
            assert len({json.loads(line)["build"] for line in lines}) == 1
            overlapped += count.read_text() not in ("", before)
            if overlapped >= 5:
                break
        assert overlapped  # builds were committed while cat read
    finally:
        stop.write_text("")
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    # once no reader holds a build, the next commit leaves only the current one's files
    build = Build(root)
    build.commit({"shards": []})
    assert not list((root / "shards").iterdir())


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: writes past it fail with ENOSPC, as on a full disk."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                            str(where)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("fills", ["spool", "shard"])
def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, full_disk, fills):
    """Random text fills the disk with curate's (compressed) spool; repetitive text only with
    the (uncompressed) jsonl shard."""
    source = tmp_path / "in.jsonl"
    text = (lambda i: os.urandom(300).hex()) if fills == "spool" else (
        lambda i: f"{i} " + "abcdefgh " * 60)
    source.write_text("".join(json.dumps({"id": str(i), "text": text(i)}) + "\n"
                              for i in range(200)))
    config = tmp_path / "curation.yaml"
    config.write_text("enabled: false\n")  # keep every record: the shards outgrow the disk
    out = full_disk / "out"
    p = subprocess.run([*CLI, "curate", str(source), "--out", str(out), "--format", "jsonl",
                        "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    said = " ".join(p.stderr.split())  # rich wraps long lines
    assert "No space left on device" in said
    named = f"{out}/.build-" if fills == "spool" else f"{out}/shards/part-"
    assert f"error: {named}" in said, said  # the file, named
    assert not (out / "manifest.json").exists()
