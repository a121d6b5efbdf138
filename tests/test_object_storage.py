"""`curate` reads its inputs from object storage through fsspec: the real s3fs client against
moto's S3 server on 127.0.0.1, with and without a Ray cluster."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_kept, read_rejects

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'textbook-gen[s3]')")
pytest.importorskip("moto.server", reason="moto[server] is not installed (the test extra)")

BUCKET = "corpus-bucket"
VOCAB = [f"w{i}" for i in range(3000)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server in its own process; the environment that points clients at it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as f:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", str(port)], stdout=f, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir(BUCKET)
            yield fs, env
    finally:
        server.terminate()
        server.wait(timeout=30)


def _corpus(tmp_path: Path) -> list[Path]:
    """Local files: a zstd JSONL, a plain JSONL and a Parquet file, with exact and near
    duplicates across them, records without ids, and short ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rng = random.Random(5)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(120, 220))) for _ in range(240)]
    texts += texts[:20]  # exact copies
    texts += [" ".join(rng.choice(VOCAB) if rng.random() < 0.01 else w for w in t.split())
              for t in texts[20:40]]  # near copies
    texts += ["too short"] * 3
    rng.shuffle(texts)
    parts = [texts[k::3] for k in range(3)]
    records = [[({"id": f"p{k}-{i}", "text": t} if i % 4 else {"text": t})
                for i, t in enumerate(part)] for k, part in enumerate(parts)]
    a = tmp_path / "a.jsonl.zst"
    a.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in records[0]).encode()))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps(r) + "\n" for r in records[1]))
    c = tmp_path / "c.parquet"
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"id": r.get("id"), "text": r["text"]}
                                         for r in records[2]]), sink)
    c.write_bytes(sink.getvalue())
    return [a, b, c]


def _upload(fs, files: list[Path], prefix: str) -> None:
    for f in files:
        fs.pipe(f"{BUCKET}/{prefix}/{f.name}", f.read_bytes())


def _curate(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textbook_gen", "curate", *args, "-q"],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=timeout)


def _outcome(out: Path) -> tuple[dict, set]:
    kept = {r["id"]: r["text"] for r in read_kept(out)}
    rejects = {(r["id"], r["rejected"]["reason"]) for r in read_rejects(out)}
    return kept, rejects


def test_s3_inputs_keep_what_the_same_local_files_keep(tmp_path, s3):
    fs, env = s3
    files = _corpus(tmp_path)
    _upload(fs, files, "run1")
    local = _curate([*map(str, files), "--out", str(tmp_path / "local"),
                     "--config", str(_config(tmp_path))], env)
    assert local.returncode == 0, local.stderr
    # a quoted glob is expanded by the tool, in name order, as the shell orders local files
    remote = _curate([f"s3://{BUCKET}/run1/*.jsonl*", f"s3://{BUCKET}/run1/c.parquet",
                      "--out", str(tmp_path / "remote"), "--config", str(_config(tmp_path))],
                     env)
    assert remote.returncode == 0, remote.stderr
    kept_local, rejects_local = _outcome(tmp_path / "local")
    kept_remote, rejects_remote = _outcome(tmp_path / "remote")
    assert kept_remote == kept_local
    assert rejects_remote == rejects_local
    reasons = {reason.split(" ")[0] for _, reason in rejects_remote}
    assert {"too_short", "exact_duplicate", "near_duplicate"} <= reasons
    # records without ids are named after the object, as after a local file
    assert any(rid.startswith("b.jsonl:") for rid in kept_remote)
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["inputs"] == [f"s3://{BUCKET}/run1/{n}"
                                  for n in ("a.jsonl.zst", "b.jsonl", "c.parquet")]


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "curation.yaml"
    p.write_text("verify_code: false\nmin_tokens: 20\n")
    return p


@pytest.mark.timeout(1200)  # a hang guard: Ray starts slowly on a loaded machine
def test_ray_workers_read_the_objects_themselves(tmp_path, s3):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'textbook-gen[ray]')")
    fs, env = s3
    files = _corpus(tmp_path)
    _upload(fs, files, "run2")
    fs.pipe(f"{BUCKET}/run2/older/a.jsonl", files[1].read_bytes())  # a folder the glob matches
    one = _curate([*map(str, files), "--out", str(tmp_path / "one"),
                   "--config", str(_config(tmp_path))], env)
    assert one.returncode == 0, one.stderr
    # the local cluster's workers get the endpoint and credentials from this environment, as
    # a real cluster's nodes get theirs from their own (an instance role, env vars)
    on_ray = _curate([f"s3://{BUCKET}/run2/*", "--out", str(tmp_path / "ray"), "--config",
                      str(_config(tmp_path)), "--ray", "local", "--workers", "2"], env,
                     timeout=600)
    assert on_ray.returncode == 0, on_ray.stderr
    assert _outcome(tmp_path / "ray") == _outcome(tmp_path / "one")
    # the folder is not an input (read as an object, S3 would give it empty)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["inputs"] == [f"s3://{BUCKET}/run2/{n}"
                                  for n in ("a.jsonl.zst", "b.jsonl", "c.parquet")]


def test_missing_objects_and_urls_as_outputs_get_one_message(tmp_path, s3):
    fs, env = s3
    files = _corpus(tmp_path)
    _upload(fs, files, "run3")
    cases = [
        ([f"s3://{BUCKET}/run3/nothing-*.jsonl"],
         f"s3://{BUCKET}/run3/nothing-*.jsonl: matches no objects"),
        ([f"s3://{BUCKET}/run3/gone.jsonl"],
         f"s3://{BUCKET}/run3/gone.jsonl: cannot open it (FileNotFoundError"),
        (["nosuchproto://x/y.jsonl"], "nosuchproto://x/y.jsonl: fsspec cannot read"),
        # a folder read as one object would be empty: no records and no error
        ([f"s3://{BUCKET}/run3/"], f"s3://{BUCKET}/run3/: a folder of objects, not one"),
        ([f"s3://{BUCKET}/run3"], f"s3://{BUCKET}/run3: a folder of objects, not one"),
    ]
    for inputs, message in cases:
        p = _curate([*inputs, "--out", str(tmp_path / "out")], env)
        assert p.returncode == 2, (inputs, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr
    p = _curate([f"s3://{BUCKET}/run3/a.jsonl.zst", "--out", f"s3://{BUCKET}/cleaned"], env)
    assert p.returncode == 2
    assert f"--out s3://{BUCKET}/cleaned: shards are written to a directory" in p.stderr
    assert "Traceback" not in p.stderr
    assert not fs.exists(f"{BUCKET}/cleaned")
    # an object cut short names itself, as a local file does
    fs.pipe(f"{BUCKET}/run3/cut.jsonl.zst", files[0].read_bytes()[:-20])
    p = _curate([f"s3://{BUCKET}/run3/cut.jsonl.zst", "--out", str(tmp_path / "cut")], env)
    assert p.returncode == 2
    assert f"s3://{BUCKET}/run3/cut.jsonl.zst: the zstd data is cut short" in p.stderr


def test_urls_are_told_from_paths_and_named_by_their_object():
    from textbook_gen.shards import is_url, source_name

    assert is_url("s3://bucket/a.jsonl") and is_url("gs://b/c/d.parquet")
    assert not is_url("C://data/a.jsonl")  # a one-letter scheme is a Windows drive
    assert not is_url(Path("s3:/bucket/a.jsonl")) and not is_url("corpus/a.jsonl")
    assert source_name("s3://bucket/corpus/a.jsonl.zst") == "a.jsonl.zst"
    assert source_name("https://h/corpus/a.jsonl.zst?X-Amz-Signature=abc&b=c") == "a.jsonl.zst"
    assert source_name(Path("/x/y/b.parquet")) == "b.parquet"


def test_a_presigned_web_url_is_read_by_its_object_name(tmp_path):
    """A web URL with a query (a presigned link): read as zstd by its path's suffix, and its
    records named after the object, not after the signature."""
    pytest.importorskip("aiohttp", reason="fsspec reads https:// with aiohttp (s3fs needs it)")
    import http.server
    import threading

    files = _corpus(tmp_path)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        p = _curate([f"{base}/a.jsonl.zst?X-Amz-Signature=0123abcd", f"{base}/b.jsonl?v=2",
                     "--out", str(tmp_path / "web"), "--config", str(_config(tmp_path))], {})
        assert p.returncode == 0, p.stderr
        local = _curate([str(files[0]), str(files[1]), "--out", str(tmp_path / "local"),
                         "--config", str(_config(tmp_path))], {})
        assert local.returncode == 0, local.stderr
        assert _outcome(tmp_path / "web") == _outcome(tmp_path / "local")
        gone = _curate([f"{base}/gone.jsonl?sig=1", "--out", str(tmp_path / "gone")], {})
        assert gone.returncode == 2 and "gone.jsonl?sig=1: cannot open it" in gone.stderr
        assert "Traceback" not in gone.stderr
    finally:
        server.shutdown()
