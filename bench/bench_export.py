"""Export at scale: tokens/s against the bare tokenizer, and memory against the corpus size.

Makes runs of --sizes documents (about 40 words each, in Parquet shards), trains a small BPE
tokenizer.json, then for each size:
- baseline: the bare tokenizer's ``encode_batch`` on the same texts, in batches of 1,000,
  texts already in memory (the tokenizer alone, nothing read or written);
- export: ``textbook-gen export RUN --format datatrove`` in a fresh process (read the shards,
  select, tokenize, spool, shuffle, write, hash): tokens/s and its peak RSS.
Prints the ratio export / baseline (goal >= 0.8x) and peak RSS at the largest size over the
smallest.

  python bench/bench_export.py
  python bench/bench_export.py --sizes 100000
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

WORDS = ["the", "river", "carries", "sand", "to", "sea", "where", "waves", "sort", "grains",
         "by", "size", "and", "shape", "while", "wind", "lifts", "dust", "from", "dry",
         "plains", "ice", "grinds", "rock", "into", "flour", "volcano", "magma", "glacier",
         "erosion", "sediment", "layer", "pressure", "heat", "crystal", "mineral", "fossil"]

CHILD = PEAK_RSS + """
import json, sys, time
from pathlib import Path
from textbook_gen.export import export
t = time.perf_counter()
r = export([Path(sys.argv[1])], Path(sys.argv[2]), fmt="datatrove", tokenizer=sys.argv[3])
took = time.perf_counter() - t
print(json.dumps({"s": took, "tokens": r.manifest["splits"]["train"]["tokens"],
                  "rss_mb": peak_rss_mb()}))
"""


def make_run(path: Path, n: int) -> list[str]:
    from textbook_gen.shards import Build

    rng = random.Random(n)
    build = Build(path)
    writer = build.writer("shards", "part", "parquet", 10_000, keep_empty=True)  # the default
    texts = []
    for i in range(n):
        text = " ".join(rng.choices(WORDS, k=40))
        texts.append(text)
        writer.write({"id": f"d{i}", "text": text, "kind": "chapter",
                      "quality": {"judge_score": 4.0, "verified": None}})
    shards = writer.close()
    build.commit({"shards": [s.to_dict() for s in shards]})
    return texts


def train_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    rng = random.Random(0)
    tok.train_from_iterator((" ".join(rng.choices(WORDS, k=40)) for _ in range(2000)),
                            trainers.BpeTrainer(vocab_size=2000,
                                                special_tokens=["<unk>", "<|endoftext|>"]))
    tok.save(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    args = ap.parse_args()
    from tokenizers import Tokenizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        train_tokenizer(tok_path)
        tok = Tokenizer.from_file(str(tok_path))
        for n in args.sizes:
            run = Path(tmp) / f"run-{n}"
            texts = make_run(run, n)
            t = time.perf_counter()
            base_tokens = 0
            for i in range(0, n, 1000):
                base_tokens += sum(len(e.ids) for e in tok.encode_batch(texts[i:i + 1000],
                                                                       add_special_tokens=False))
            base_s = time.perf_counter() - t
            del texts
            out = subprocess.run([sys.executable, "-c", CHILD, str(run), str(Path(tmp) / f"x{n}"),
                                  str(tok_path)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            assert r["tokens"] == base_tokens + n  # the tokenizer's own count, plus an EOS each
            row = {"docs": n, "baseline_tok_s": base_tokens / base_s,
                   "export_tok_s": base_tokens / r["s"], "ratio": base_s / r["s"],
                   "export_s": r["s"], "rss_mb": r["rss_mb"]}
            rows.append(row)
            print(f"{n:>9,} documents  {base_tokens:>11,} tokens  bare encode_batch"
                  f" {row['baseline_tok_s']:>10,.0f} tok/s  export {row['export_tok_s']:>10,.0f}"
                  f" tok/s ({row['ratio']:.2f}x, {r['s']:.1f} s)  export peak RSS"
                  f" {r['rss_mb']:.0f} MB", flush=True)
            import shutil

            shutil.rmtree(run)
            shutil.rmtree(Path(tmp) / f"x{n}")
    if len(rows) > 1:
        print(f"peak RSS at {rows[-1]['docs']:,} / at {rows[0]['docs']:,} documents:"
              f" {rows[-1]['rss_mb'] / rows[0]['rss_mb']:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
