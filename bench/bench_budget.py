"""Budget overshoot: runs with generation and the judge under --max-cost, against the loopback
server; what was spent (by the store's account) beside the cap. The promise is zero overshoot.

  python bench/bench_budget.py
  python bench/bench_budget.py --jobs 60 --concurrency 16 --caps 0.001 0.003 0.01
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    from textbook_gen.errors import BudgetExceeded
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
    rows = []
    with FakeAPI(responder=responder, latency=0.02) as server, \
            tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(SPEC.format(concurrency=a.concurrency,
                                    topics=", ".join(f"t{i}" for i in range(a.jobs))))
        for i, cap in enumerate(a.caps):
            spec = apply_overrides(load_curriculum(path), Overrides(
                base_url=[f"{server.url}/v1"], max_cost_usd=cap))
            out = Path(tmp) / f"o{i}"
            try:
                run_curriculum(spec, out_dir=out)
                ended = "complete"
            except BudgetExceeded:
                ended = "budget"
            with RunStore(out / "run.sqlite") as store:
                spent = store.totals()["cost_usd"]
            rows.append({"cap": cap, "spent": spent, "overshoot": max(0.0, spent - cap),
                         "ended": ended})
            print(f"cap ${cap:.4f}: spent ${spent:.6f} ({ended}), overshoot"
                  f" ${max(0.0, spent - cap):.6f}", file=sys.stderr)
    print(json.dumps({"runs": rows, "max_overshoot": max(r["overshoot"] for r in rows)},
                     indent=2))


if __name__ == "__main__":
    main()
