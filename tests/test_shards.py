"""Shard writing and reading: rotation, atomic files, formats, manifest-listed shards only."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from textbook_gen.errors import TextbookGenError
from textbook_gen.shards import ShardWriter, iter_records, shard_files, write_manifest


@pytest.mark.parametrize("fmt", ["jsonl.zst", "jsonl", "parquet"])
def test_rotation_roundtrip_and_checksums(tmp_path, fmt):
    records = [{"id": str(i), "text": f"doc {i}", "quality": {"tokens": i}} for i in range(7)]
    with ShardWriter(tmp_path, fmt=fmt, max_records=3) as w:
        w.write_all(records)
    assert [s.records for s in w.shards] == [3, 3, 1]
    for s in w.shards:
        assert hashlib.sha256((tmp_path / s.name).read_bytes()).hexdigest() == s.sha256
    write_manifest(tmp_path, {"shards": [s.to_dict() for s in w.shards]})
    assert list(iter_records(tmp_path)) == records
    assert not list(tmp_path.glob("shards/.*"))  # no temporary files left behind
    if fmt == "parquet":
        assert pq.read_table(tmp_path / w.shards[0].name).num_rows == 3


def test_reader_uses_only_shards_in_the_manifest(tmp_path):
    with ShardWriter(tmp_path, fmt="jsonl", max_records=2) as w:
        w.write_all({"id": str(i), "text": "t"} for i in range(3))
    write_manifest(tmp_path, {"shards": [w.shards[0].to_dict()]})
    assert [p.name for p in shard_files(tmp_path)] == ["part-00000.jsonl"]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n{broken\n")
    with pytest.raises(TextbookGenError, match=r"in.jsonl:2: not valid JSON"):
        list(iter_records(path))


def test_text_separator_keeps_documents_that_contain_blank_lines(tmp_path):
    import subprocess
    import sys

    docs = ["First para.\n\nSecond para.", "Another\n\n\nwith gaps.\n", "third"]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)))
    run = [sys.executable, "-m", "textbook_gen", "cat", str(path), "--text"]
    out = subprocess.run(run, capture_output=True, check=True).stdout.decode()
    assert out.split("\0")[:-1] == docs  # the default NUL separator round-trips
    out = subprocess.run([*run, "--separator", "\\n<|doc|>\\n"], capture_output=True,
                         check=True).stdout.decode()
    assert out.split("\n<|doc|>\n")[:-1] == docs
    clash = subprocess.run([*run, "--separator", "\\n\\n"], capture_output=True, text=True)
    assert clash.returncode == 2 and "contains the separator" in clash.stderr


@pytest.mark.parametrize("fmt", ["jsonl.zst", "jsonl", "parquet"])
def test_zero_kept_records_make_a_valid_empty_corpus(tmp_path, fmt):
    from conftest import curate_dir

    from textbook_gen.curate.settings import CurationSettings

    result = curate_dir([{"id": "a", "text": "too short"}], CurationSettings(min_tokens=50),
                        tmp_path, fmt=fmt)
    assert [s.records for s in result.shards] == [0]
    assert list(iter_records(tmp_path)) == []  # reads as an empty corpus, not an error


def test_parquet_shards_of_one_corpus_share_one_schema(tmp_path):
    """A shard where a quality field is null throughout, or an int where another shard has a
    float, still has the corpus's schema: the shards read together as one table."""
    import pyarrow.dataset as ds

    def rec(i, judge, words):
        return {"id": str(i), "text": "t", "seed_words": words,
                "quality": {"tokens": 5, "verified": None, "judge_score": judge,
                            "dup_cluster": None, "exercises_total": None,
                            "exercises_passed": None, "exercises_removed": None}}

    w = ShardWriter(tmp_path, fmt="parquet", max_records=2)
    w.write_all([rec(0, None, []), rec(1, None, []), rec(2, 4, ["a"]), rec(3, 3.5, ["b"])])
    w.close()
    schemas = [pq.read_schema(tmp_path / s.name) for s in w.shards]
    assert len(schemas) == 2 and schemas[0] == schemas[1]
    table = ds.dataset([str(tmp_path / s.name) for s in w.shards], format="parquet").to_table()
    assert table.column("quality").combine_chunks().field("judge_score").to_pylist() == [
        None, None, 4.0, 3.5]
