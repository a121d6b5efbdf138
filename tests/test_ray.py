"""`curate --ray` on a real local Ray cluster keeps exactly what one process keeps."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_kept, read_rejects
from sandbox_helpers import needs_bwrap

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'textbook-gen[ray]')")
# a hang guard, not a timing: Ray's steps start slowly on a loaded 2-core machine
pytestmark = pytest.mark.timeout(1200)

from textbook_gen.curate.pipeline import curate_corpus  # noqa: E402
from textbook_gen.curate.settings import CurationSettings  # noqa: E402

VOCAB = [f"w{i}" for i in range(4000)]


def _doc(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _exercise(ok: bool, n: int) -> str:
    name = "add" if ok else "mul"  # mul is wrong: it adds
    return (f"## Exercise {n}\nWrite {name}.\n\n### Solution\n```python\ndef {name}(a, b):\n"
            f"    return a + b\n```\n\n### Tests\n```python\nassert {name}(2, 3) =="
            f" {5 if ok else 6}\n```\n")


@pytest.fixture(scope="module")
def cluster():
    """A real Ray cluster on this machine, two CPUs, for the module's in-process runs."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=300 * 1024 * 1024, configure_logging=False)
    yield
    ray.shutdown()


def _files(tmp_path: Path, verify: bool) -> tuple[list[Path], Path]:
    """Three input files. Duplicates (exact and near) across files, ids repeated across files
    and records without ids, short records, spam, copies of a benchmark item, and documents
    with exercises, one of which fails (verification shortens that document's text)."""
    rng = random.Random(11)
    texts = [_doc(rng, rng.randint(120, 260)) for _ in range(900)]
    originals = list(range(0, 80))
    texts += [texts[i] if i % 2 else " ".join(
        rng.choice(VOCAB) if rng.random() < 0.01 else w for w in texts[i].split())
        for i in originals]
    texts += ["too short"] * 4 + ["buy now " * 150] * 2
    item = _doc(rng, 40)
    texts += [_doc(rng, 80) + " " + item + " " + _doc(rng, 80) for _ in range(3)]
    if verify:
        base = "\n".join(_doc(rng, 12) for _ in range(20))  # prose lines: no repetition
        texts += [base + "\n\n" + _exercise(True, 1) + "\n" + _exercise(False, 2),
                  base + "\n\n" + _exercise(True, 1)]  # the same once the failing one goes
    rng.shuffle(texts)
    files = []
    for k in range(3):
        part = texts[k::3]
        lines = []
        for i, t in enumerate(part):
            rec: dict = {"text": t}
            if i % 7 == 0:
                rec["id"] = f"shared{i % 5}"  # the same ids in every file: #2, #3 suffixes
            elif i % 11:
                rec["id"] = f"f{k}-{i}"
            lines.append(json.dumps(rec))  # else no id: file.jsonl:N
            if k == 1 and i == 0:  # an input id like a suffix the rule gives a repeated id
                lines.append(json.dumps({"id": "shared0#2", "text": _doc(rng, 150)}))
        path = tmp_path / f"part-{k}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"q": item}) + "\n")
    return files, bench


def _outcome(out: Path) -> tuple[dict, set, dict]:
    kept = {r["id"]: r for r in read_kept(out)}
    rejects = {(r["id"], r["rejected"]["stage"], r["rejected"]["reason"])
               for r in read_rejects(out)}
    return kept, rejects, json.loads((out / "manifest.json").read_text())["curation"]


def _check_same(tmp_path: Path, settings: CurationSettings, files: list[Path]) -> set:
    curate_corpus(files, tmp_path / "one", settings, workers=1)
    curate_corpus(files, tmp_path / "ray", settings, ray="local", workers=2, quiet=True)
    kept1, rejects1, cur1 = _outcome(tmp_path / "one")
    kept2, rejects2, cur2 = _outcome(tmp_path / "ray")
    for out in ("one", "ray"):  # every document has its own id
        ids = [r["id"] for r in [*read_kept(tmp_path / out), *read_rejects(tmp_path / out)]]
        assert len(ids) == len(set(ids))
    assert set(kept1) == set(kept2)
    for rid, rec in kept1.items():  # the same text (after verification) and quality fields
        assert kept2[rid]["text"] == rec["text"] and kept2[rid]["quality"] == rec["quality"]
    assert rejects1 == rejects2
    assert cur1["stages"] == cur2["stages"] and cur1["decontamination"] == cur2["decontamination"]
    return {reason.split(" ")[0] for _, _, reason in rejects1}


def test_ray_keeps_exactly_what_one_process_keeps(tmp_path, cluster):
    files, bench = _files(tmp_path, verify=False)
    settings = CurationSettings(verify_code=False, decontaminate=[str(bench)], min_tokens=20)
    reasons = _check_same(tmp_path, settings, files)
    # every kind of decision was compared, and ids were made unique the same way
    assert {"too_short", "repetition", "exact_duplicate", "near_duplicate",
            "contaminated"} <= reasons
    ids = {r["id"] for r in read_kept(tmp_path / "ray")}
    assert "shared0#2" in ids and any(i.startswith("part-1.jsonl:") for i in ids)
    assert "shared0#2#2" in ids  # the input's own shared0#2, after the rule gave that name
    kept = read_kept(tmp_path / "ray")
    assert any(r["quality"]["dup_cluster"] for r in kept)


@needs_bwrap
def test_ray_runs_exercises_in_the_sandbox_and_dedups_the_verified_text(tmp_path, cluster):
    files, bench = _files(tmp_path, verify=True)
    settings = CurationSettings(decontaminate=[str(bench)], min_tokens=20)
    _check_same(tmp_path, settings, files)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    verify = manifest["curation"]["stages"]["verify"]
    assert verify["in"] > 0
    # the document that lost its failing exercise became an exact copy of the other one
    dups = [r for r in read_rejects(tmp_path / "ray")
            if r["rejected"]["reason"].startswith("exact_duplicate")
            and "```python" in r["text"]]
    assert len(dups) == 1
    twin = {r["id"]: r for r in read_kept(tmp_path / "ray")}[
        dups[0]["rejected"]["reason"].split(" of ")[1]]
    removed = {dups[0]["quality"]["exercises_removed"], twin["quality"]["exercises_removed"]}
    assert removed == {None, 1}  # one lost its failing exercise; the other had none to lose


def test_cli_ray_local_and_a_record_without_text(tmp_path):
    files, _ = _files(tmp_path, verify=False)
    ok = subprocess.run([sys.executable, "-m", "textbook_gen", "curate", *map(str, files),
                         "--out", str(tmp_path / "out"), "--ray", "local", "--workers", "2",
                         "-q", "--format", "jsonl.zst"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["curation"]["kept"] == len(read_kept(tmp_path / "out")) > 0
    assert all(s["name"].endswith(".jsonl.zst") for s in manifest["shards"])
    with files[1].open("a") as f:
        f.write(json.dumps({"id": "x", "body": "no text here"}) + "\n")
    bad = subprocess.run([sys.executable, "-m", "textbook_gen", "curate", *map(str, files),
                          "--out", str(tmp_path / "bad"), "--ray", "local", "--workers", "2",
                          "-q"], capture_output=True, text=True)
    assert bad.returncode != 0
    n = len(files[1].read_text().splitlines())
    assert f"part-1.jsonl: record {n} has no 'text' string field" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_ray_address_where_nothing_listens(tmp_path):
    files, _ = _files(tmp_path, verify=False)
    p = subprocess.run([sys.executable, "-m", "textbook_gen", "curate", str(files[0]), "--out",
                        str(tmp_path / "out"), "--ray", "127.0.0.1:9"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 2
    assert "--ray 127.0.0.1:9: nothing answers there" in p.stderr and "Traceback" not in p.stderr


def test_cli_ray_without_ray_installed(tmp_path):
    files, _ = _files(tmp_path, verify=False)
    code = ("import sys; sys.modules['ray'] = None; from textbook_gen.cli import main; "
            "sys.argv = ['textbook-gen'] + sys.argv[1:]; main()")
    p = subprocess.run([sys.executable, "-c", code, "curate", str(files[0]), "--out",
                        str(tmp_path / "out"), "--ray", "local"], capture_output=True, text=True)
    assert p.returncode == 2
    assert 'pip install "textbook-gen[ray]"' in p.stderr and "Traceback" not in p.stderr
