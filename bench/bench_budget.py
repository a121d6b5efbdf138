"""Budget overshoot: runs with generation and the judge under --max-cost, against the loopback
server; what the server billed (the usage it reported, at the model's price) beside the cap.
The promise is zero overshoot, for three providers: one that bills what cl100k counts, one
whose tokenizer counts 1.3x cl100k for the same input (as Claude's can), and one that bills
every answer in full but returns no text (a reasoning model spending max_tokens thinking).

  python bench/bench_budget.py
  python bench/bench_budget.py --jobs 60 --concurrency 16 --caps 0.001 0.003 0.01
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakeapi import FakeAPI  # noqa: E402

SPEC = """\
name: budget
description: budget trials.
model: {{provider: openai, name: gpt-4o-mini, max_tokens: 300}}
engine: {{concurrency: {concurrency}}}
audiences: [children, adults]
subjects:
  - name: Numbers
    topics: [{topics}]
documents:
  - {{kind: chapter, template: chapter.md.j2, per: [topic, audience]}}
curation:
  min_tokens: 20
  judge: {{enabled: true}}
"""


def responder(body: dict) -> str | None:
    prompt = body["messages"][-1]["content"]
    return "Clear. Educational score: 4" if "Educational score" in prompt else None


def tokenizer_13x(body: dict) -> int:
    """Input tokens as a tokenizer counting 1.3x cl100k bills them."""
    from textbook_gen.tokens import count_tokens

    return math.ceil(1.3 * sum(count_tokens(m["content"]) + 4 for m in body["messages"]))


PROVIDERS = {  # name -> (FakeAPI options, faults scripted before each run)
    "cl100k": ({}, []),
    "tokenizer-1.3x": ({"input_tokens": tokenizer_13x}, []),
    "bills-empty": ({}, ["empty_billed"] * 500),
}


def billed(server: FakeAPI, price) -> float:
    """What the server billed: the usage it reported for every answer, at the price."""
    return sum(price.cost(*r.usage) for r in server.requests if r.status == 200)


def main() -> None:
    from textbook_gen.errors import BudgetExceeded, TextbookGenError
    from textbook_gen.run import Overrides, apply_overrides, run_curriculum
    from textbook_gen.spec import load_curriculum
    from textbook_gen.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20, help="topics (x2 audiences)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--caps", type=float, nargs="+",
                    default=[0.0005, 0.001, 0.002, 0.003, 0.004, 0.006])
    a = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    from textbook_gen.tokens import PRICES

    price = PRICES["gpt-4o-mini"]
    rows = []
    for name, (options, faults) in PROVIDERS.items():
        with FakeAPI(responder=responder, latency=0.02, **options) as server, \
                tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "spec.yaml"
            path.write_text(SPEC.format(concurrency=a.concurrency,
                                        topics=", ".join(f"t{i}" for i in range(a.jobs))))
            for i, cap in enumerate(a.caps):
                spec = apply_overrides(load_curriculum(path), Overrides(
                    base_url=[f"{server.url}/v1"], max_cost_usd=cap))
                out = Path(tmp) / f"o{i}"
                server.requests.clear()
                server.script(*faults)
                try:
                    run_curriculum(spec, out_dir=out)
                    ended = "complete"
                except BudgetExceeded:
                    ended = "budget"
                except TextbookGenError as e:  # a judge with nothing to read, say
                    ended = type(e).__name__
                server.clear_faults()
                with RunStore(out / "run.sqlite") as store:
                    recorded = store.totals()["cost_usd"]
                spent = billed(server, price)
                rows.append({"provider": name, "cap": cap, "billed": round(spent, 8),
                             "recorded": recorded, "overshoot": max(0.0, spent - cap),
                             "ended": ended})
                print(f"{name:15} cap ${cap:.4f}: billed ${spent:.6f}, recorded"
                      f" ${recorded:.6f} ({ended}), overshoot ${max(0.0, spent - cap):.6f}",
                      file=sys.stderr)
    print(json.dumps({"runs": rows, "max_overshoot": max(r["overshoot"] for r in rows)},
                     indent=2))


if __name__ == "__main__":
    main()
