#!/usr/bin/env python3
"""Tokenizer throughput: trex (C++) vs Hugging Face tokenizers (Rust), single thread, same corpus.

Tokenizers: the real all-MiniLM-L6-v2 WordPiece, and the byte-level BPE, Unigram/Metaspace and byte-fallback BPE
tokenizers the tests train (tests/python/tokenizer_cases.py); corpus: the tests' multilingual corpus
(tests/python/tokenizer_corpus.py, ~12k lines from files shipped on this machine), repeated --scale times.

Method
  trex: `trex tokenize DIR --no-padding` reading the corpus on stdin and writing JSON ids to a pipe (one thread);
        the time of the same command on empty input (process start + tokenizer.json load) is subtracted.
  hf:   Tokenizer.from_file(...).encode_batch(lines) with RAYON_NUM_THREADS=1 (its fastest single-thread path;
        padding disabled like trex's --no-padding), load time excluded.
  Each measurement repeated --repeat times, interleaved; median reported with min-max spread.
Usage
  .venv/bin/python bench/tokenizer_bench.py            # 4 tokenizers, corpus x3, 5 repetitions
  .venv/bin/python bench/tokenizer_bench.py --smoke    # 2 tokenizers, 2000 lines, 1 repetition (< 60 s)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

import tokenizer_cases as tc  # noqa: E402
import tokenizer_corpus  # noqa: E402


def time_trex(trex: Path, folder: Path, data: bytes) -> float:
    def run(inp: bytes) -> float:
        t = time.perf_counter()
        r = subprocess.run([str(trex), "tokenize", str(folder), "--no-padding"], input=inp, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"trex tokenize failed: {r.stderr.decode()[:500]}")
        return dt
    return max(run(data) - run(b""), 1e-9)


def time_hf(tok, lines: list[str]) -> float:
    t = time.perf_counter()
    tok.encode_batch(lines)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="2 tokenizers, 2000 lines, 1 repetition (seconds)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scale", type=int, default=3, help="corpus repetitions per measurement")
    ap.add_argument("--trex", type=Path, default=Path(os.environ.get("TREX_BIN", REPO / "build" / "trex")))
    a = ap.parse_args()
    from tokenizers import Tokenizer

    lines = tokenizer_corpus.load()
    names = list(tc.NAMES)
    repeat, scale = a.repeat, a.scale
    if a.smoke:
        lines, names, repeat, scale = lines[:2000], ["minilm-wordpiece", "bytelevel-bpe"], 1, 1
    lines = lines * scale
    data = "".join(l + "\n" for l in lines).encode()
    mb = len(data) / 1e6
    print(f"corpus: {len(lines)} lines, {mb:.2f} MB; single thread; median of {repeat} (min-max)\n")
    print(f"| tokenizer | trex lines/s | trex MB/s | HF lines/s | HF MB/s | trex / HF |")
    print(f"|---|---|---|---|---|---|")
    for name in names:
        try:
            folder = tc.folder(name)
        except BaseException as e:  # minilm_dir() skips (pytest) when its package is absent
            print(f"| {name} | skipped: {e} |")
            continue
        hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
        hf.no_padding()
        hf.encode_batch(lines[:500])  # warm-up (first-call initialization), untimed
        tt, th = [], []
        for _ in range(repeat):
            tt.append(time_trex(a.trex, folder, data))
            th.append(time_hf(hf, lines))
        mt, mh = statistics.median(tt), statistics.median(th)

        def cell(ts, m, unit):
            return f"{unit / m:,.0f} ({unit / max(ts):,.0f}-{unit / min(ts):,.0f})"
        print(f"| {name} | {cell(tt, mt, len(lines))} | {mb / mt:.2f} | {cell(th, mh, len(lines))} | {mb / mh:.2f} "
              f"| {mh / mt:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
