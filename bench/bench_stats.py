"""`stats` and `report` on a large corpus: time beside the time `cat` takes to read the same
corpus once (the ratio is the figure; goal: report within 3x), and peak memory at two sizes
(it should stay flat).

  python bench/bench_stats.py                 # 100,000 and 20,000 records
  python bench/bench_stats.py --records 50000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["river", "stone", "lamp", "kite", "harbor", "maple", "quartz", "violin", "meadow",
         "comet", "lantern", "orchard", "pepper", "canyon", "falcon", "glacier", "ribbon",
         "saddle", "tunnel", "walnut", "anchor", "basket", "cactus", "dolphin", "ember"]


def make_corpus(folder: Path, n: int) -> Path:
    """A curate output of ``n`` records (written through the real pipeline, curation off)."""
    from textbook_gen.curate.pipeline import curate
    from textbook_gen.curate.settings import CurationSettings
    from textbook_gen.shards import Build

    rng = random.Random(n)

    def records():
        for i in range(n):
            text = "## Part\n\n" + " ".join(rng.choice(WORDS) for _ in range(250)) + "."
            yield {"id": f"r{i}", "kind": ("chapter", "exercises")[i % 2],
                   "topic": f"topic {i % 50}", "audience": ("kids", "adults")[i % 2],
                   "text": text, "quality": {"tokens": 300}}

    out = folder / f"run{n}"
    build = Build(out)
    result = curate(records(), CurationSettings(enabled=False), build, fmt="parquet")
    build.commit({"shards": [s.to_dict() for s in [*result.shards, *result.rejects]]})
    return out


def timed(args: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of a textbook-gen command in a child process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "textbook_gen", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, nargs="+", default=[20_000, 100_000])
    a = ap.parse_args()
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(a.records):
            run = make_corpus(Path(tmp), n)
            cat_s, _ = timed(["cat", str(run)])
            stats_s, _ = timed(["stats", str(run)])
            report_s, rss = timed(["report", str(run)])  # children's peak so far: the largest
            report.append({"records": n, "cat_s": round(cat_s, 2), "stats_s": round(stats_s, 2),
                           "report_s": round(report_s, 2),
                           "report_ratio": round(report_s / cat_s, 2),
                           "peak_rss_mb": round(rss, 1)})
            print(f"{n:>7,} records: cat {cat_s:6.2f} s, stats {stats_s:6.2f} s"
                  f" ({stats_s / cat_s:.2f}x), report {report_s:6.2f} s ({report_s / cat_s:.2f}x),"
                  f" peak RSS so far {rss:.0f} MB", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
