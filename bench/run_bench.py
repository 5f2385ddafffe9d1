#!/usr/bin/env python3
"""Sentence-embedding throughput of `trex run` (all-MiniLM-L6-v2, mean pooling + normalization from modules.json)
vs sentence-transformers on torch and vs optimum's ORTModelForFeatureExtraction with the fast tokenizer.

Corpus: --lines lines of the tests' multilingual corpus (tests/python/tokenizer_corpus.py: text shipped on this
machine), mixed lengths (long lines are truncated at MiniLM's max_seq_length, 256 tokens, by every contender).

Contenders (all single-threaded: --threads 1 / torch.set_num_threads(1) / intra_op_num_threads=1; batch 32)
  trex fp32 / opt / int8: `trex run DIR --batch-size 32 --threads 1 [--model-file ...]` on the lines on stdin
        (length-sorted batches, each padded only to its own longest row); the time of the same command on empty
        input (process start, model and tokenizer load) is subtracted. fp32 = model.onnx, opt = model-optimized.onnx
        (ONNX Runtime fused ops), int8 = model-quantized.onnx (int8 dynamic quantization of the optimized model).
  sentence-transformers: SentenceTransformer(...).encode(lines, batch_size=32) on torch (it sorts by length too).
  optimum: ORTModelForFeatureExtraction (exported by optimum from the same checkpoint) + AutoTokenizer (fast),
        length-sorted batches of 32 padded to their longest row, mean pooling + L2 normalization in numpy.
  Each measurement repeated --repeat times, interleaved; the median is reported with the min-max spread.
  Accuracy: cosine of each contender's embeddings with sentence-transformers' (fp32 reference), mean and min.
Usage
  .venv/bin/python bench/run_bench.py              # 2400 lines, 5 repetitions
  .venv/bin/python bench/run_bench.py --smoke      # 64 lines, 1 repetition, no optimum export
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

import numpy as np  # noqa: E402

import fixtures as fx  # noqa: E402
import tokenizer_corpus  # noqa: E402

BATCH = 32


def trex_runner(trex: Path, folder: Path, model_file: str, data: bytes):
    cmd = [str(trex), "run", str(folder), "--json", "--batch-size", str(BATCH), "--threads", "1",
           "--model-file", model_file]

    def run(inp: bytes):
        t = time.perf_counter()
        r = subprocess.run(cmd, input=inp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"trex run failed: {r.stderr.decode()[:500]}")
        return dt, r.stdout

    def measure():
        dt, out = run(data)
        return max(dt - run(b"")[0], 1e-9), out

    return measure


def optimum_runner(model_dir: Path, lines: list[str], work: Path):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    import onnxruntime as ort
    from transformers import AutoTokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    model = ORTModelForFeatureExtraction.from_pretrained(str(model_dir), export=True, session_options=so)
    model.save_pretrained(work / "optimum")
    tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    max_len = 256
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))

    def measure():
        t = time.perf_counter()
        out = np.zeros((len(lines), model.config.hidden_size), dtype=np.float32)
        for b in range(0, len(order), BATCH):
            idx = order[b:b + BATCH]
            enc = tok([lines[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="np")
            h = model(**enc).last_hidden_state
            h = np.asarray(h)
            m = enc["attention_mask"][..., None].astype(np.float32)
            v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            out[idx] = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        return time.perf_counter() - t, out

    return measure


def cosines(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="64 lines, 1 repetition, no optimum (seconds)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lines", type=int, default=2400)
    ap.add_argument("--trex", type=Path, default=Path(os.environ.get("TREX_BIN", REPO / "build" / "trex")))
    args = ap.parse_args()
    if args.smoke:
        args.repeat, args.lines = 1, 64

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    try:
        model_dir = fx.minilm_dir()
    except BaseException as e:  # pytest.skip: the MiniLM package is absent
        print(f"SKIP: {e}")
        return 0
    corpus = [line for line in tokenizer_corpus.load() if line.strip()]
    step = max(1, len(corpus) // args.lines)
    lines = corpus[::step][:args.lines]
    data = ("\n".join(lines) + "\n").encode()
    lengths = [len(x) for x in lines]
    print(f"corpus: {len(lines)} lines, {sum(lengths)} chars, lengths {min(lengths)}-{max(lengths)} "
          f"(median {statistics.median(lengths):.0f}); batch {BATCH}, 1 thread; {args.repeat} repetitions")

    with tempfile.TemporaryDirectory(prefix="trex-run-bench-") as tmp:
        work = Path(tmp)
        folder = work / "minilm"
        fx.export(model_dir, folder, "--optimize", "--quantize")
        st = SentenceTransformer(str(model_dir), device="cpu")

        def st_measure():
            t = time.perf_counter()
            out = st.encode(lines, batch_size=BATCH, convert_to_numpy=True)
            return time.perf_counter() - t, out

        contenders = {"sentence-transformers (torch)": st_measure}
        if not args.smoke:
            contenders["optimum ORTModelForFeatureExtraction"] = optimum_runner(model_dir, lines, work)
        for name, file in [("trex run fp32", "model.onnx"), ("trex run opt", "model-optimized.onnx"),
                           ("trex run int8", "model-quantized.onnx")]:
            measure = trex_runner(args.trex, folder, file, data)

            def parsed(measure=measure):
                dt, out = measure()
                return dt, np.asarray([json.loads(line) for line in out.splitlines()], dtype=np.float32)
            contenders[name] = parsed

        times = {name: [] for name in contenders}
        outputs = {}
        for _ in range(args.repeat):
            for name, fn in contenders.items():
                dt, out = fn()
                times[name].append(dt)
                outputs[name] = out
        ref = outputs["sentence-transformers (torch)"]
        rows = []
        for name in contenders:
            med = statistics.median(times[name])
            c = cosines(outputs[name], ref)
            rows.append((name, med, min(times[name]), max(times[name]), c.mean(), c.min()))
        peers = [r for r in rows if not r[0].startswith("trex")]
        best_peer = min(peers, key=lambda r: r[1])
        print("\n| contender | lines/s | median s | spread s | vs best peer | cosine mean | cosine min |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, med, lo, hi, cmean, cmin in rows:
            print(f"| {name} | {len(lines) / med:.0f} | {med:.3f} | {lo:.3f}-{hi:.3f} | {best_peer[1] / med:.2f}x "
                  f"| {cmean:.6f} | {cmin:.6f} |")
        print(f"\nbest peer: {best_peer[0]}; cosine is against sentence-transformers' fp32 embeddings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
