"""A corpus of broken inputs: each gets one message naming the file (and line or key where
there is one), a non-zero exit and no traceback, within a time limit (no hang).

Each case writes its files into a fresh folder, runs the real CLI in a subprocess and checks
exit code, that stderr names the place, and that no traceback escaped.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SMALL_SPEC

SPEC = SMALL_SPEC  # openai, 6 jobs, curation off


def _zst(records: list[dict]) -> bytes:
    import zstandard

    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    return zstandard.ZstdCompressor().compress(text)


def _parquet(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), sink)
    return sink.getvalue()


RECORDS = [{"id": f"r{i}", "text": f"Record number {i}. " * 40} for i in range(50)]


@dataclass
class Case:
    name: str
    files: dict[str, str | bytes | Callable[[Path], None]]
    args: list[str]
    code: int
    expect: list[str]  # fragments stderr must hold; "{d}" is the case's folder

    def __str__(self) -> str:
        return self.name


def spec_with(extra: str = "", base: str = SPEC) -> str:
    return base + extra


def templates(body: str | bytes) -> dict:
    return {"spec.yaml": spec_with("templates: tpl\n"), "tpl/chapter.md.j2": body}


def _zero_store_beside_outputs(d: Path) -> None:
    (d / "o").mkdir()
    (d / "o" / "run.sqlite").write_bytes(b"")
    (d / "o" / "manifest.json").write_text(json.dumps({"shards": [], "counts": {"records": 6}}))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))

CASES = [
    # ------------------------------------------------------------------ the spec
    Case("yaml syntax", {"spec.yaml": "name: x\nsubjects: [\n  - a\n"}, ["validate", "spec.yaml"],
         2, ["spec.yaml:", "YAML syntax"]),
    Case("unknown key", {"spec.yaml": spec_with("seeed: 3\n")}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:", "did you mean 'seed'"]),
    Case("misspelt key under prices", {"spec.yaml": spec_with(
        "prices:\n  gpt-4o-mini: {inptu: 0.1, output: 0.6}\n")}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:", "did you mean 'input'"]),
    Case("duplicate key", {"spec.yaml": spec_with("seed: 3\n")}, ["validate", "spec.yaml"], 2,
         ["appears twice"]),
    Case("alias bomb", {"spec.yaml": BOMB}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:", "aliases"]),
    Case("recursive alias", {"spec.yaml": "name: &a [*a]\n"}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:1", "recursive"]),
    Case("deep nesting", {"spec.yaml": "name: " + "[" * 5000 + "]" * 5000 + "\n"},
         ["validate", "spec.yaml"], 2, ["spec.yaml", "nested"]),
    Case("utf-16 spec", {"spec.yaml": SPEC.encode("utf-16")}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:1", "UTF-16"]),
    Case("non-utf-8 byte", {"spec.yaml": b"name: tiny\ndescription: ok\nseed: \xff\n"},
         ["validate", "spec.yaml"], 2, ["spec.yaml:3", "not UTF-8"]),
    Case("empty spec", {"spec.yaml": ""}, ["validate", "spec.yaml"], 2, ["spec.yaml:1"]),
    Case("spec is a list", {"spec.yaml": "- a\n- b\n"}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:1", "mapping"]),
    Case("missing spec", {}, ["validate", "nope.yaml"], 2, ["nope.yaml", "cannot read"]),
    Case("too many jobs", {"spec.yaml": SPEC.replace("weight: 2", "weight: 1000").replace(
        "[topic, audience]}", "[topic, audience], samples: 100000}").replace(
        "[children, adults]", "[" + ", ".join(f"a{i}" for i in range(100)) + "]")},
         ["validate", "spec.yaml"], 2, ["jobs", "most one spec may ask for"]),
    Case("colliding audiences", {"spec.yaml": SPEC.replace("[children, adults]",
                                                           "[Children, children]")},
         ["validate", "spec.yaml"], 2, ["spec.yaml:", "collides"]),
    Case("variable only some jobs reach", templates(
        "About {{ topic }}.\n{% if topic == 'fractions' %}{{ hint }}{% endif %}\n"),
         ["validate", "spec.yaml"], 2, ["chapter.md.j2:2", "'hint' is undefined"]),
    Case("division by zero", templates("About {{ topic }} {{ 1 / (sample * 0) }}\n"),
         ["validate", "spec.yaml"], 2, ["chapter.md.j2:1", "ZeroDivisionError"]),
    Case("type error", templates("About {{ topic + 1 }}\n"), ["validate", "spec.yaml"], 2,
         ["chapter.md.j2:1", "TypeError"]),
    Case("non-utf-8 template", templates(b"About \xff {{ topic }}\n"),
         ["validate", "spec.yaml"], 2, ["chapter.md.j2", "not UTF-8"]),
    Case("empty prompt", templates("{% if topic == 'nothing' %}x{% endif %}\n"),
         ["validate", "spec.yaml"], 2, ["chapter.md.j2", "empty prompt"]),
    Case("missing templates folder", {"spec.yaml": spec_with("templates: nowhere\n")},
         ["validate", "spec.yaml"], 2, ["spec.yaml:", "does not exist"]),
    Case("missing template file", {"spec.yaml": SPEC.replace("chapter.md.j2", "nope.md.j2")},
         ["validate", "spec.yaml"], 2, ["spec.yaml:", "'nope.md.j2' not found"]),
    Case("missing benchmark file", {"spec.yaml": SPEC.replace(
        "curation:\n  enabled: false", "curation:\n  decontaminate: [gone.jsonl]")},
         ["validate", "spec.yaml"], 2, ["spec.yaml:", "gone.jsonl", "does not exist"]),
    # ------------------------------------------------------------------ command-line values
    Case("negative max-cost", {"spec.yaml": SPEC}, ["run", "spec.yaml", "--max-cost", "-1"], 2,
         ["--max-cost"]),
    Case("nan max-cost", {"spec.yaml": SPEC}, ["run", "spec.yaml", "--max-cost", "nan"], 2,
         ["--max-cost"]),
    Case("zero max-tokens", {"spec.yaml": SPEC}, ["run", "spec.yaml", "--max-tokens", "0"], 2,
         ["--max-tokens"]),
    Case("unknown provider", {"spec.yaml": SPEC},
         ["run", "spec.yaml", "--provider", "nope", "--model", "m"], 2, ["--provider"]),
    Case("out is a file", {"spec.yaml": SPEC, "afile": "x"},
         ["run", "spec.yaml", "--out", "afile"], 2, ["afile", "not a directory"]),
    Case("out under a file", {"spec.yaml": SPEC, "afile": "x"},
         ["run", "spec.yaml", "--out", "afile/sub"], 2, ["afile"]),
    Case("lost store beside outputs", {"spec.yaml": SPEC, "o": _zero_store_beside_outputs},
         ["run", "spec.yaml", "--out", "o"], 2, ["run.sqlite is empty", "pay again"]),
    Case("curate unknown format", {"in.jsonl": "{\"text\": \"x\"}\n"},
         ["curate", "in.jsonl", "--out", "c", "--format", "xml"], 2, ["--format xml"]),
    Case("curate config typo", {"in.jsonl": "{\"text\": \"x\"}\n", "c.yaml": "min_tokns: 3\n"},
         ["curate", "in.jsonl", "--out", "c", "--config", "c.yaml"], 2,
         ["c.yaml:1", "did you mean 'min_tokens'"]),
    Case("curate missing input", {}, ["curate", "none.jsonl", "--out", "c"], 2, ["none.jsonl"]),
    Case("curate out is a file", {"in.jsonl": "{\"text\": \"x\"}\n", "afile": "x"},
         ["curate", "in.jsonl", "--out", "afile"], 2, ["afile", "not a directory"]),
    # ------------------------------------------------------------------ files read
    Case("corrupt manifest", {"o/manifest.json": "{not json"}, ["cat", "o"], 2,
         ["manifest.json"]),
    Case("manifest of another tool", {"o/manifest.json": "[1, 2]"}, ["cat", "o"], 2,
         ["manifest.json", "not a textbook-gen manifest"]),
    Case("truncated zst", {"x.jsonl.zst": _zst(RECORDS)[:-40]}, ["cat", "x.jsonl.zst"], 2,
         ["x.jsonl.zst", "truncated"]),
    Case("garbage zst", {"x.jsonl.zst": os.urandom(3000)}, ["cat", "x.jsonl.zst"], 2,
         ["x.jsonl.zst", "zstd"]),
    Case("truncated parquet", {"x.parquet": _parquet(RECORDS)[:-200]}, ["cat", "x.parquet"], 2,
         ["x.parquet", "Parquet"]),
    Case("fake parquet", {"x.parquet": b"PAR1 this is not parquet at all"},
         ["cat", "x.parquet"], 2, ["x.parquet", "Parquet"]),
    Case("non-utf-8 jsonl", {"x.jsonl": b'{"text": "a"}\n{"text": "\xff\xfe"}\n'},
         ["cat", "x.jsonl"], 2, ["x.jsonl:2", "not UTF-8"]),
    Case("curate truncated zst", {"x.jsonl.zst": _zst(RECORDS)[:-40]},
         ["curate", "x.jsonl.zst", "--out", "c"], 2, ["x.jsonl.zst", "truncated"]),
    Case("curate non-utf-8 jsonl", {"x.jsonl": b'{"text": "\xff"}\n'},
         ["curate", "x.jsonl", "--out", "c"], 2, ["x.jsonl:1"]),
    Case("binary benchmark", {"in.jsonl": "{\"text\": \"x\"}\n", "b.txt": b"\x00\x01\x02" * 50,
                              "c.yaml": "decontaminate: [b.txt]\nverify_code: false\n"},
         ["curate", "in.jsonl", "--out", "c", "--config", "c.yaml"], 2, ["b.txt", "binary"]),
    Case("non-utf-8 benchmark", {"in.jsonl": "{\"text\": \"x\"}\n", "b.txt": b"ok\n\xff\xfe\n",
                                 "c.yaml": "decontaminate: [b.txt]\nverify_code: false\n"},
         ["curate", "in.jsonl", "--out", "c", "--config", "c.yaml"], 2, ["b.txt:2", "UTF-8"]),
    Case("garbage jsonl benchmark", {"in.jsonl": "{\"text\": \"x\"}\n",
                                     "b.jsonl": b"\x00garbage\xff\n",
                                     "c.yaml": "decontaminate: [b.jsonl]\nverify_code: false\n"},
         ["curate", "in.jsonl", "--out", "c", "--config", "c.yaml"], 2, ["b.jsonl:1"]),
    Case("stats on a folder that is no run", {"notrun/notes.txt": "hello"},
         ["stats", "notrun"], 2, ["notrun", "no manifest.json"]),
    Case("curate records without text", {"in.jsonl": "{\"id\": \"a\", \"body\": \"x\"}\n"},
         ["curate", "in.jsonl", "--out", "c"], 2, ["in.jsonl", "record 1", "'text'"]),
    Case("validate a judge that run refuses", {"spec.yaml": SPEC.replace(
        "curation:\n  enabled: false", "curation:\n  judge: {enabled: true, provider: local,"
        " model: smollm2-135m-instruct}")}, ["validate", "spec.yaml"], 2,
         ["spec.yaml:", "curation.judge", "cannot judge"]),
    Case("validate --max-cost without a price", {"spec.yaml": SPEC.replace(
        "name: gpt-4o-mini", "name: gpt-5-pro").replace(
        "curation:", "engine: {max_cost_usd: 1.0}\ncuration:")}, ["validate", "spec.yaml"], 2,
         ["gpt-5-pro", "prices:"]),
    Case("template that reaches for Python", templates(
        "{{ cycler.__init__.__globals__.os.system('touch pwned') }}\n"),
         ["validate", "spec.yaml"], 2, ["chapter.md.j2:1", "unsafe"]),
]


def _write(folder: Path, files: dict) -> None:
    for name, content in files.items():
        path = folder / name
        if callable(content):
            content(folder)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_broken_input_gets_one_message_and_a_non_zero_exit(case: Case, tmp_path: Path):
    _write(tmp_path, case.files)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", *case.args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == case.code, proc.stderr
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr.split(":", 1)[0]
    flat = " ".join(proc.stderr.split())  # rich may wrap long lines
    for fragment in case.expect:
        assert fragment.format(d=tmp_path) in flat, proc.stderr


def test_plan_on_a_spec_of_a_billion_jobs_estimates_instead_of_rendering_each(tmp_path):
    spec = SPEC.replace("weight: 2", "weight: 1000").replace(
        "[topic, audience]}", "[topic, audience], samples: 100000}").replace(
        "[children, adults]", "[" + ", ".join(f"a{i}" for i in range(4)) + "]")
    (tmp_path / "spec.yaml").write_text(spec)
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "plan", "spec.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "estimated from 2,000 sampled jobs" in proc.stdout
    assert "400,400,000" in proc.stdout  # (1 + 1000) places x 4 audiences x 100,000 samples
