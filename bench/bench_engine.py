"""Engine throughput and memory against a loopback server, each figure beside a baseline
measured in the same run on the same server.

  python bench/bench_engine.py                  # all three measurements
  python bench/bench_engine.py --only speed     # speed | latency | memory | watch | ray

speed:   zero-latency server; a full `run` (render, store, token counting, shards, progress)
         vs the bare official openai SDK sending the same number of requests.
latency: 200 ms server latency, 500 requests in flight; vs the ideal rate (500 / 0.2 s) and
         vs the bare SDK under the same conditions.
memory:  peak RSS of a full run of 5,000 jobs vs a 100,000-job spec whose run is cut off
         (--limit) at the same number of requests: memory follows work in flight, not the
         curriculum's size. A third figure runs all 100,000 jobs if --full-memory is given.
ray:     zero-latency server; `run --ray local` with 1 and 2 Ray workers vs one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from peak import PEAK_RSS  # noqa: E402


class Server:
    """tests/fakeapi.py in its own process, so it does not share our CPU core or GIL."""

    def __init__(self, latency: float = 0.0):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fakeapi.py"), "--port", "0",
             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line
        self.url = line.split()[1]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def write_spec(folder: Path, jobs: int, concurrency: int, watch: bool = True) -> Path:
    """A curriculum of ``jobs`` jobs. Large ones are built as real ones are, by cross products
    (topics x 4 audiences x 5 styles x 5 samples), so the spec file itself stays small."""
    if jobs % 100 == 0 and jobs >= 1000:
        topics = ", ".join(f"topic {i}" for i in range(jobs // 100))
        axes = ("audiences: [children, teenagers, adults, experts]\n"
                "styles: [textbook, story, dialogue, lecture, field guide]\n")
        doc = "{kind: chapter, template: chapter.md.j2, per: [topic, audience, style], samples: 5}"
    else:
        topics = ", ".join(f"topic {i}" for i in range(jobs))
        axes = ""
        doc = "{kind: chapter, template: chapter.md.j2, per: [topic]}"
    path = folder / "bench.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: bench
        description: A benchmark curriculum.
        model: {{provider: openai, name: gpt-4o-mini, max_tokens: 200}}
        engine: {{concurrency: {concurrency}}}
        subjects: [{{name: Bench, topics: [{topics}]}}]
        documents: [{doc}]
        curation: {{enabled: false}}
        watch: {{enabled: {str(watch).lower()}}}
        """) + axes)
    return path


async def bare_sdk(url: str, n: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    counter = iter(range(n))
    prompt = "Write one section of a textbook about topic {}. " + "Be precise and clear. " * 60

    async def worker() -> None:
        for i in counter:
            r = await client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=200, temperature=0.8,
                messages=[{"role": "user", "content": prompt.format(i)}])
            assert r.choices[0].message.content

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return n / elapsed


def ours(url: str, n: int, concurrency: int, *, limit: int | None = None,
         jobs: int | None = None, watch: bool = True, ray_workers: int | None = None
         ) -> tuple[float, dict]:
    """A full run in a child process; returns requests/s and the child's report."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp), jobs or n, concurrency, watch)
        code = textwrap.dedent(f"""
            import json, time, io
            from pathlib import Path
            from rich.console import Console
            from textbook_gen.run import Overrides, apply_overrides, run_curriculum
            from textbook_gen.spec import load_curriculum
            from textbook_gen.ui import RichProgress
            spec = apply_overrides(load_curriculum({str(spec)!r}),
                                   Overrides(base_url=[{url + '/v1'!r}]))
            console = Console(file=io.StringIO(), force_terminal=True, width=120)
            ray_workers = {ray_workers!r}
            if ray_workers:  # the cluster starts before the clock does
                from textbook_gen.curate.distributed import connect
                connect("local", ray_workers)
            t = time.perf_counter()
            progress = RichProgress(console)
            r = run_curriculum(spec, out_dir=Path({tmp!r}) / "out", limit={limit!r},
                               progress=progress, ray="local" if ray_workers else None,
                               workers=ray_workers)
            progress.close()
            elapsed = time.perf_counter() - t
            print(json.dumps({{"elapsed": elapsed, "sent": r.stats.sent, "records": r.records,
                "maxrss_mb": peak_rss_mb()}}))
        """)
        code = PEAK_RSS + code
        env = {**os.environ, "OPENAI_API_KEY": "x"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr)
        report = json.loads(out.stdout.strip().splitlines()[-1])
    return report["sent"] / report["elapsed"], report


def bench_speed(n: int) -> None:
    server = Server(0.0)
    try:
        asyncio.run(bare_sdk(server.url, 200, 32))  # warm-up
        base = asyncio.run(bare_sdk(server.url, n, 32))
        rate, rep = ours(server.url, n, 32)
    finally:
        server.close()
    print(f"[speed]   zero latency, {n} requests, 32 in flight")
    print(f"          bare openai SDK: {base:8.1f} req/s")
    print(f"          textbook-gen run: {rate:7.1f} req/s (records {rep['records']}, "
          f"includes render, store, tokens, shards, progress)")
    print(f"          ratio: {rate / base:.2f}x  (goal >= 0.8)")


def bench_latency(n: int) -> None:
    """500 in flight is the issue's figure; its ideal (2,500 req/s) is beyond what one Python
    process with the official SDK can send on 2 cores, so 50 in flight (ideal 250 req/s, within
    the client's reach) is measured too: there the ratio shows what the engine itself costs."""
    server = Server(0.2)
    try:
        for in_flight in (500, 50):
            count = n if in_flight == 500 else min(n, 1500)
            base = asyncio.run(bare_sdk(server.url, count, in_flight))
            rate, _ = ours(server.url, count, in_flight)
            ideal = in_flight / 0.2
            print(f"[latency] 200 ms latency, {count} requests, {in_flight} in flight")
            print(f"          ideal: {ideal:.0f} req/s; bare SDK: {base:.1f} req/s "
                  f"({base / ideal:.2f} of ideal)")
            print(f"          textbook-gen run: {rate:.1f} req/s = {rate / ideal:.2f} of ideal, "
                  f"{rate / base:.2f}x the bare SDK (goal >= 0.9 of ideal)")
    finally:
        server.close()


def bench_memory(n: int, full: bool) -> None:
    server = Server(0.0)
    try:
        _, small = ours(server.url, n, 32)
        _, big_cut = ours(server.url, n, 32, limit=n, jobs=100_000)
        big = ours(server.url, 100_000, 32)[1] if full else None
    finally:
        server.close()
    print("[memory]  peak RSS of a full run process (32 in flight)")
    print(f"          spec of {n:,} jobs, all run:            {small['maxrss_mb']:7.1f} MB")
    print(f"          spec of 100,000 jobs, first {n:,} run: {big_cut['maxrss_mb']:7.1f} MB "
          f"(ratio {big_cut['maxrss_mb'] / small['maxrss_mb']:.2f}x)")
    if big:
        print(f"          spec of 100,000 jobs, all run:          {big['maxrss_mb']:7.1f} MB "
              f"(ratio {big['maxrss_mb'] / small['maxrss_mb']:.2f}x, "
              f"{big['elapsed']:.0f} s)")


def bench_ray(n: int) -> None:
    """Generation through Ray (run --ray local) with 1 and 2 workers against the
    single-process engine, same zero-latency server, same run; the local cluster is started
    before the clock. The machine has 2 cores, shared by the server, the driver and the
    workers."""
    server = Server(0.0)
    try:
        one, _ = ours(server.url, n, 32)
        rates = {k: ours(server.url, n, 32, ray_workers=k)[0] for k in (1, 2)}
    finally:
        server.close()
    print(f"[ray]     zero latency, {n} requests, 32 in flight in all (split over workers)")
    print(f"          one process: {one:7.1f} req/s")
    for k, rate in rates.items():
        print(f"          Ray, {k} worker{'s' if k > 1 else ' '}: {rate:7.1f} req/s "
              f"({rate / one:.2f}x one process)")


def bench_watch(n: int) -> None:
    """What the collapse watch costs a run: the same zero-latency run with it on and off,
    five times each, the order alternating (goal: within 5%)."""
    server = Server(0.0)
    try:
        on, off = [], []
        for i in range(5):
            for watch in ((False, True) if i % 2 else (True, False)):
                (on if watch else off).append(ours(server.url, n, 32, watch=watch)[0])
    finally:
        server.close()
    print(f"[watch]   zero latency, {n} requests, 32 in flight, best of 5")
    print(f"          watch off: {max(off):7.1f} req/s   watch on: {max(on):7.1f} req/s")
    print(f"          ratio: {max(on) / max(off):.3f}  (goal >= 0.95)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=["speed", "latency", "memory", "watch", "ray"])
    ap.add_argument("-n", type=int, default=3000, help="requests per measurement")
    ap.add_argument("--full-memory", action="store_true", help="also run all 100,000 jobs")
    a = ap.parse_args()
    if a.only in (None, "speed"):
        bench_speed(a.n)
    if a.only in (None, "latency"):
        bench_latency(a.n)
    if a.only in (None, "memory"):
        bench_memory(min(a.n, 5000), a.full_memory)
    if a.only in (None, "watch"):
        bench_watch(a.n)
    if a.only in (None, "ray"):
        bench_ray(a.n)


if __name__ == "__main__":
    main()
