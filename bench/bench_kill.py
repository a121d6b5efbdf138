"""kill -9 series: how many paid answers a crash can cost, against the concurrency.

Each trial starts `textbook-gen run` (a real subprocess) against the loopback server, kills
it with SIGKILL at a random moment, then reruns the same command to completion. Requests
the server answered beyond the number of jobs were paid twice. The store promises at most
the requests in flight, i.e. the concurrency.

  python bench/bench_kill.py                       # 10 trials at concurrency 4, 16, 32
  python bench/bench_kill.py --trials 20 --concurrency 8 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakeapi import FakeAPI  # noqa: E402

SPEC = """\
name: kill
description: kill -9 trials.
model: {{provider: openai, name: gpt-4o-mini, max_tokens: 200}}
engine: {{concurrency: {concurrency}}}
subjects:
  - name: Numbers
    topics: [{topics}]
documents:
  - {{kind: chapter, template: chapter.md.j2, per: [topic]}}
curation: {{enabled: false}}
"""


def trial(folder: Path, server: FakeAPI, concurrency: int, jobs: int, rng: random.Random) -> dict:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(concurrency=concurrency,
                                topics=", ".join(f"t{i}" for i in range(jobs))))
    out = folder / "out"
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    cmd = [sys.executable, "-m", "textbook_gen", "run", str(spec), "--out", str(out),
           "--base-url", f"{server.url}/v1", "--quiet"]
    start = server.count()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill once a random share of the jobs has been sent
    target = start + rng.randint(1, jobs - 1)
    while server.count() < target and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent_before_kill = server.count() - start
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    paid = server.count() - start
    return {"killed_after": sent_before_kill, "paid": paid, "paid_twice": paid - jobs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    report = []
    with FakeAPI(latency=a.latency) as server:
        for c in a.concurrency:
            rows = []
            for _ in range(a.trials):
                with tempfile.TemporaryDirectory() as tmp:
                    rows.append(trial(Path(tmp), server, c, a.jobs, rng))
            worst = max(r["paid_twice"] for r in rows)
            line = {"concurrency": c, "trials": a.trials, "jobs": a.jobs,
                    "paid_twice_max": worst, "paid_twice_mean": sum(r["paid_twice"] for r in rows)
                    / len(rows), "bound_held": worst <= c, "trials_detail": rows}
            report.append(line)
            print(f"concurrency {c:>3}: {a.trials} kill -9 trials, paid twice max {worst}"
                  f" (bound {c}), mean {line['paid_twice_mean']:.1f}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
