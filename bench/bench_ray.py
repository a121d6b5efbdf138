"""`curate --ray` on a local Ray cluster against the single-process path, in the same run.

  python bench/bench_ray.py                    # 1,000,000 planted documents, 2 Ray workers
  python bench/bench_ray.py --docs 100000 --files 8

The corpus is bench_dedup's (Zipfian words, 2% planted near-duplicates at Jaccard 0.82-0.97,
1% look-alikes at 0.5-0.72), split into --files input files. Both paths run every default
stage but verification (the corpus has no code) in child processes:
  one process   curate_corpus(workers=N): the per-document stages on N processes
  Ray           curate_corpus(ray="local", workers=N): a local cluster of N CPUs
Prints times and their ratio, whether the kept sets are equal, recall and precision of the
planted pairs for each, the single process's peak memory (its pool workers included) and
the peak of every Ray process (driver, each worker), sampled every 0.2 s.
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

from bench_dedup import write_corpus  # noqa: E402
from peak import PEAK_RSS  # noqa: E402

CHILD = PEAK_RSS + r"""
import json, os, resource, sys, threading, time
from pathlib import Path
from textbook_gen.curate.pipeline import curate_corpus
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.shards import iter_records

peaks = {}
private = {}
def sample(stop):
    # each Ray process's own peak (VmHWM), read from /proc while it lives
    me = os.getpid()
    while not stop.is_set():
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                if not ("ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd):
                    continue
                with open(f"/proc/{d}/status") as f:
                    fields = dict(x.split(":", 1) for x in f if ":" in x)
                hwm = int(fields["VmHWM"].split()[0]) / 1024
                anon = int(fields["RssAnon"].split()[0]) / 1024  # its own pages, not the
                kind = "worker" if "ray::" in cmd else "cluster"  # object store's shared ones
                name = cmd.split()[0] if kind == "worker" else "cluster"
                peaks[(kind, d)] = max(peaks.get((kind, d), 0), hwm)
                private[(name, d)] = max(private.get((name, d), 0), anon)
            except (OSError, KeyError, ValueError):
                pass
        stop.wait(0.2)

if __name__ == "__main__":
    out, mode, workers, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    s = CurationSettings(verify_code=False)
    stop = threading.Event()
    t = threading.Thread(target=sample, args=(stop,), daemon=True)
    t.start()
    t0 = time.perf_counter()
    r = curate_corpus([Path(f) for f in files], Path(out), s, workers=workers,
                      ray="local" if mode == "ray" else None, quiet=True)
    elapsed = time.perf_counter() - t0
    stop.set()
    kept = [rec["id"] for rec in iter_records(Path(out))]
    dups = {rec["id"]: rec["rejected"]["reason"].split(" of ")[1]
            for rec in iter_records(Path(out), "rejects") if rec["rejected"]["stage"] == "dedup"}
    workers_mb = sorted((v for (k, _), v in peaks.items() if k == "worker"), reverse=True)
    print(json.dumps({"s": elapsed, "phases": r.phases, "kept": kept, "dups": dups,
                      "driver_mb": peak_rss_mb(),
                      "pool_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "ray_workers_mb": workers_mb[:8],
                      "ray_private_mb": sorted(([v, k] for (k, _), v in private.items()
                                                if k != "cluster"), reverse=True)[:6],
                      "ray_cluster_mb": sum(v for (k, _), v in peaks.items() if k == "cluster")}))
"""


def run(mode: str, out: Path, workers: int, files: list[Path]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), mode, str(workers),
                           *map(str, files)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quality(r: dict, planted: list, threshold: float = 0.8) -> tuple[float, float]:
    """Recall of the planted pairs at or over the threshold; precision: the share of dropped
    documents that are one of a planted pair over it (the base corpus has no other
    near-duplicates to speak of: Zipfian random text)."""
    dups = r["dups"]
    pos = [(f"d{i}", f"d{k}") for i, k, j in planted if j >= threshold]
    found = sum(1 for a, b in pos if dups.get(a) == b or dups.get(b) == a)
    members = {x for p in pos for x in p}
    true = sum(1 for a, b in dups.items() if a in members and b in members)
    return found / max(1, len(pos)), true / max(1, len(dups))


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one_file = Path(tmp) / "corpus.jsonl.zst"
        t = time.perf_counter()
        info = write_corpus(one_file, a.docs)
        import zstandard

        from textbook_gen.shards import iter_records

        files = [Path(tmp) / f"part-{k:03d}.jsonl.zst" for k in range(a.files)]
        per = -(-a.docs // a.files)
        records = iter_records(one_file)
        for f in files:
            with zstandard.ZstdCompressor(level=1).stream_writer(f.open("wb")) as w:
                for _, rec in zip(range(per), records, strict=False):
                    w.write((json.dumps(rec) + "\n").encode())
        one_file.unlink()
        print(f"[corpus]  {a.docs:,} documents in {a.files} files, {len(info['planted']):,} planted "
              f"pairs, written in {time.perf_counter() - t:.0f} s")
        single = run("one", Path(tmp) / "one", a.workers, files)
        print(f"[one]     {single['s']:.1f} s, {len(single['kept']):,} kept; peak "
              f"{single['driver_mb']:.0f} MB (+ {single['pool_mb']:.0f} MB per pool worker)")
        dist = run("ray", Path(tmp) / "ray", a.workers, files)
        print(f"[ray]     {dist['s']:.1f} s, {len(dist['kept']):,} kept; driver peak "
              f"{dist['driver_mb']:.0f} MB, Ray workers' peaks "
              f"{', '.join(f'{x:.0f}' for x in dist['ray_workers_mb'])} MB, cluster services "
              f"{dist['ray_cluster_mb']:.0f} MB")
        print("[steps]   " + ", ".join(f"{k} {v:.1f} s" for k, v in dist["phases"].items()))
        print("[private] Ray workers' own memory (RssAnon, sampled; the object store's shared "
              "pages left out): " + ", ".join(f"{n} {v:.0f} MB" for v, n in
                                              dist["ray_private_mb"]))
        same = set(single["kept"]) == set(dist["kept"]) and single["dups"] == dist["dups"]
        r1, p1 = quality(single, info["planted"])
        r2, p2 = quality(dist, info["planted"])
        print(f"[same]    kept sets and dedup decisions equal: {same}")
        print(f"[quality] one process: recall {r1:.4f}, precision {p1:.4f}; "
              f"Ray: recall {r2:.4f}, precision {p2:.4f}")
        top = max(dist["ray_workers_mb"] or [0])
        own = max((v for v, _ in dist["ray_private_mb"]), default=0)
        print(f"[ratio]   Ray / one process time: {dist['s'] / single['s']:.2f}x; largest Ray "
              f"worker peak / one-process peak: {top / single['driver_mb']:.2f} (RSS), "
              f"{own / single['driver_mb']:.2f} (its own memory)")
        if not same:
            raise SystemExit("Ray kept a different set")


if __name__ == "__main__":
    main()
