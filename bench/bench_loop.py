"""The closed loop's cost against one pass, on the bundled curricula, against the loopback
server: requests per kept document, cells at target, and the judge scores of what is kept.

The server plays a writer and a judge whose rules are stated here, so the figures measure the
loop's mechanics, not a model: a generated page has quality q uniform in 0..5 (from its
request's seed); the judge reads q back as its score (min_score 3 keeps half of the pages); a
revision of a page of quality q scores q + 1 or q + 2 with probability 0.6 and q - 1
otherwise. Every curriculum is run with the bundled prompts on `openai gpt-4o-mini`, filters
relaxed to what the loopback text can pass, in four shapes:

  one pass        samples: 1 per cell
  target          target_kept: 1, max_samples: 3
  target+best3    ... and candidates: 3
  target+best3+rev ... and revise: {below: 4, rounds: 1}

  python bench/bench_loop.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakeapi import FakeAPI, default_text  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "one pass": {"doc": {"samples": 1}},
    "target": {"doc": {"target_kept": 1, "max_samples": 3}},
    "target+best3": {"doc": {"target_kept": 1, "max_samples": 3, "candidates": 3}},
    "target+best3+rev": {"doc": {"target_kept": 1, "max_samples": 3, "candidates": 3},
                         "revise": {"below": 4, "rounds": 1}},
}


def _h(x: Any) -> int:
    return int(hashlib.sha256(str(x).encode()).hexdigest(), 16)


def _prompt(body: dict) -> str:
    return "\n".join(m["content"] if isinstance(m["content"], str) else
                     " ".join(b.get("text", "") for b in m["content"])
                     for m in body["messages"])


def responder(body: dict) -> str:
    prompt, seed = _prompt(body), body.get("seed")
    if "Educational score" in prompt:
        q = re.findall(r"QUALITY=(\d)", prompt)
        return f"Critique: give a worked example.\nEducational score: {q[-1] if q else 0}"
    if "<critique>" in prompt:
        draft = int(re.findall(r"QUALITY=(\d)", prompt)[-1])
        r = _h(f"rev{seed}") % 10
        q = min(5, draft + 1 + r % 2) if r < 6 else max(0, draft - 1)
        return default_text(f"rev{seed}") + f"\n\nQUALITY={q}\n"
    return default_text(f"gen{seed}") + f"\n\nQUALITY={_h(seed) % 6}\n"


def _is(body: dict, what: str) -> bool:
    return what in _prompt(body)


def run_shape(curriculum: Path, shape: dict[str, Any], work: Path) -> dict[str, Any]:
    from textbook_gen.run import Overrides, apply_overrides, run_curriculum
    from textbook_gen.shards import iter_records
    from textbook_gen.spec import load_curriculum

    data = yaml.safe_load(curriculum.read_text("utf-8"))
    data.pop("templates", None)  # the bundled prompts (the small ones start answers: local only)
    data["model"] = {**data.get("model", {}), "provider": "openai", "name": "gpt-4o-mini"}
    data["seed_words"] = 3
    data.pop("engine", None)  # the curricula's rate limits are for real APIs
    for doc in data["documents"]:
        for key in ("samples", "target_kept", "max_samples", "candidates"):
            doc.pop(key, None)
        doc.update(shape["doc"])
    data["curation"] = {"min_tokens": 20, "check_structure": False, "stock_openers": [],
                        "judge": {"enabled": True, "min_score": 3}}
    if "revise" in shape:
        data["curation"]["revise"] = shape["revise"]
    path = work / f"{curriculum.stem}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")
    with FakeAPI(responder=responder) as server:
        spec = apply_overrides(load_curriculum(path),
                               Overrides(base_url=[f"{server.url}/v1"], concurrency=16))
        out = work / "out"
        run_curriculum(spec, out_dir=out)
        bodies = server.generation_bodies()
    from collections import Counter

    from textbook_gen.expand import cells

    kept = list(iter_records(out))
    scores = [r["quality"]["judge_score"] for r in kept]
    gen = sum(not _is(b, "Educational score") for b in bodies)
    per_cell = Counter(r["provenance"]["loop"]["cell"] for r in kept)
    # one pass counts as at target where a cell kept all it sent (its topic weight)
    at_target = sum(per_cell[c.key] >= (c.target or c.first) for c in cells(spec))
    return {"cells": sum(1 for _ in cells(spec)), "at_target": at_target,
            "kept": len(kept), "generation": gen,
            "revisions": sum(_is(b, "<critique>") for b in bodies),
            "judge": sum(_is(b, "Educational score") for b in bodies),
            "per_kept": gen / len(kept) if kept else float("inf"),
            "mean_score": sum(scores) / len(scores) if scores else 0.0,
            "score_5": sum(s == 5 for s in scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curricula", nargs="*", type=Path,
                    default=sorted((ROOT / "curricula").glob("*.yaml")))
    args = ap.parse_args()
    rows = []
    for curriculum in args.curricula:
        for name, shape in SHAPES.items():
            with tempfile.TemporaryDirectory() as tmp:
                r = run_shape(curriculum, shape, Path(tmp))
            rows.append({"curriculum": curriculum.stem, "shape": name, **r})
            print(f"{curriculum.stem:14} {name:17} cells at target {r['at_target']:3}/"
                  f"{r['cells']:<3} kept {r['kept']:3}  generation requests {r['generation']:4}"
                  f" (revisions {r['revisions']:3})  judge {r['judge']:4}  per kept"
                  f" {r['per_kept']:.2f}  mean judge score of kept {r['mean_score']:.2f}"
                  f"  scored 5: {r['score_5']}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
