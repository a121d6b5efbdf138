"""Seed documents at scale: memory does not grow with the seed file.

Writes seed files of 10,000 and 1,000,000 JSONL documents, then, in a fresh process for
each, builds the FTS5 index (streaming) and draws a seed for 2,000 jobs by BM25 topic match
and 2,000 at random. Prints peak RSS of each process (ru_maxrss), index size, build time and
draws per second; the promise is that peak RSS at 1,000,000 is about that at 10,000.

  python bench/bench_seeds.py
  python bench/bench_seeds.py --sizes 10000 200000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak import PEAK_RSS

WORDS = [
    "rock", "water", "heat", "cold", "wind", "rain", "soil", "sky", "layer", "flow", "time",
    "change", "shape", "force", "energy", "year", "place", "map", "study", "field", "river",
    "glacier", "volcano", "earthquake", "tide", "cloud", "season", "moon", "ocean", "current",
    "plate", "magma", "lava", "erosion", "sediment", "fossil", "mineral", "crystal", "desert",
    "forest", "climate", "storm"
]

CHILD = PEAK_RSS + """
import json, random, sys, time
from pathlib import Path
from textbook_gen.seeds import SeedIndex
from textbook_gen.spec import SeedSettings
from textbook_gen.expand import job_seed
from dataclasses import dataclass

@dataclass
class J:
    topic: str
    subject: str
    topic_notes: str
    sample_seed: int

path, index_dir, match = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
idx = SeedIndex(SeedSettings(path=path.name, match=match), path.parent, index_dir)
built = time.perf_counter() - t
words = sys.argv[4].split()
rng = random.Random(0)
t = time.perf_counter()
for i in range(2000):
    idx.for_job(J(rng.choice(words), "Earth", "", job_seed(0, str(i))))
draws = 2000 / (time.perf_counter() - t)
print(json.dumps({"rss_mb": peak_rss_mb(),
                  "build_s": built, "draws_per_s": draws, "docs": idx.count}))
"""


def write_seeds(path: Path, n: int) -> None:
    rng = random.Random(n)
    with open(path, "w") as f:
        for _i in range(n):
            text = " ".join(rng.choices(WORDS, k=40))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[10_000, 1_000_000])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"seeds-{n}.jsonl"
            t = time.perf_counter()
            write_seeds(path, n)
            wrote = time.perf_counter() - t
            for match in ("topic", "random"):
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(Path(tmp) / "i"),
                                      match, " ".join(WORDS[15:30])],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout)
                size = sum(p.stat().st_size for p in (Path(tmp) / "i").glob("seeds-*.sqlite"))
                rows.append({"docs": n, "match": match, **r, "file_mb": path.stat().st_size / 2**20,
                             "index_mb": size / 2**20})
                print(f"{n:>9,} seeds ({path.stat().st_size / 2**20:6.1f} MB file, written in"
                      f" {wrote:5.1f} s)  match={match:6}  index build {r['build_s']:6.1f} s"
                      f" (0 when reused)  draws {r['draws_per_s']:8.0f}/s  peak RSS"
                      f" {r['rss_mb']:6.1f} MB", flush=True)
            for p in (Path(tmp) / "i").glob("seeds-*.sqlite"):
                p.unlink()
    small = [r["rss_mb"] for r in rows if r["docs"] == min(args.sizes)]
    large = [r["rss_mb"] for r in rows if r["docs"] == max(args.sizes)]
    print(f"peak RSS at {max(args.sizes):,} seeds / at {min(args.sizes):,}:"
          f" {max(large) / max(small):.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
