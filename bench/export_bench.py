#!/usr/bin/env python3
"""Export benchmark: trex vs optimum-cli (torch.onnx) vs a plain `cp` of the weights.

Builds (once, cached) a BERT-base-size random checkpoint with transformers (seeded, safetensors,
~440 MB at the default size), then measures in one run, each `--repeat` times (median reported):

  cp                 cp model.safetensors <tmp>            (lower bound: read + write the bytes once)
  trex --no-check    trex export --no-check DIR out.onnx
  trex               trex export DIR out.onnx              (includes the ONNX Runtime load check)
  optimum-cli        optimum-cli export onnx --model DIR --task feature-extraction OUTDIR
                     (includes optimum's own ONNX Runtime validation against PyTorch)

Method
  wall s    time.perf_counter() around the subprocess (the page cache is warm: `cp` runs first and
            the checkpoint was read just before; every tool sees the same cache state).
  peak RSS  two measurements, both reported:
            * "peak RSS MB": the kernel's high-water mark ru_maxrss as reported by `/usr/bin/time -v`
              ("Maximum resident set size"); for a process tree this is the max over the processes,
              not the sum. Used when /usr/bin/time exists.
            * "tree-sum MB": psutil polling (every 10 ms) of the summed RSS of the process and all its
              descendants; catches concurrent children, but may miss very short peaks.
            Without /usr/bin/time, only the psutil number is available and is used for both.
            RSS counts file-backed pages of mmapped weights that a tool touches.
  RSS / weights   peak RSS divided by the size of model.safetensors.

Usage
  .venv/bin/python bench/export_bench.py                      # BERT-base size
  .venv/bin/python bench/export_bench.py --layers 2 --hidden 128 --repeat 3   # quick try
  .venv/bin/python bench/export_bench.py --smoke   # tiny model, one run, temp folders (scripts/test runs it)
Results: a markdown table on stdout and JSON in bench/results/ (or --results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME_BIN = "/usr/bin/time"


def cached_checkpoint(work: Path, name: str, make_model) -> Path:
    """work/name, built once: make_model() (seeded here) saved by transformers into a temporary folder, renamed
    into place when complete."""
    d = work / name
    if (d / ".complete").exists():
        return d
    import torch

    print(f"building checkpoint {d.name} ...", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    model = make_model().eval()
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build.", dir=work))
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / ".complete").write_text("ok")
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    return d


def build_checkpoint(work: Path, layers: int, hidden: int, heads: int, intermediate: int, vocab: int) -> Path:
    def make():
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=heads, intermediate_size=intermediate,
                                    max_position_embeddings=512, type_vocab_size=2))

    return cached_checkpoint(work, f"bert-L{layers}-H{hidden}-A{heads}-I{intermediate}-V{vocab}", make)


# --smoke: the tiny checkpoint every benchmark uses to prove it still runs end to end (scripts/test).
SMOKE_CHECKPOINT = dict(layers=1, hidden=32, heads=2, intermediate=37, vocab=100)


def smoke_checkpoint(work: Path) -> Path:
    return build_checkpoint(work, **SMOKE_CHECKPOINT)


class TreeSampler(threading.Thread):
    """Polls the summed RSS of a process tree."""

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self._halt = pid, interval, 0, threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def measure(cmd: list[str], env: dict) -> dict:
    use_time = os.path.exists(TIME_BIN)
    stats_file = tempfile.NamedTemporaryFile(prefix="bench-time-", suffix=".txt", delete=False)
    stats_file.close()
    full = ([TIME_BIN, "-v", "-o", stats_file.name] if use_time else []) + cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    maxrss = None
    if use_time:
        txt = Path(stats_file.name).read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt)
        maxrss = int(m.group(1)) * 1024 if m else None
    os.unlink(stats_file.name)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}\n{err[-4000:]}")
    tree = sampler.peak
    return {"wall_s": wall, "maxrss_bytes": maxrss if maxrss is not None else tree, "tree_sum_bytes": tree}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=None, help="default: hidden / 64 (at least 1)")
    ap.add_argument("--intermediate", type=int, default=None, help="default: 4 * hidden")
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "work",
                    help="where the checkpoint is cached and outputs are written")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--trex", type=Path, default=Path(os.environ.get("TREX_BIN", REPO / "build" / "trex")))
    ap.add_argument("--optimum-cli", default=str(Path(sys.executable).parent / "optimum-cli"))
    ap.add_argument("--skip-optimum", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model, one run, work and results in a temporary folder; optimum only when installed")
    args = ap.parse_args()
    if args.smoke:
        smoke_dir = Path(tempfile.mkdtemp(prefix="trex_export_bench_smoke_"))
        for k, v in SMOKE_CHECKPOINT.items():
            setattr(args, k, v)
        args.repeat, args.work, args.results = 1, smoke_dir / "work", smoke_dir / "results"
        if not Path(args.optimum_cli).exists():
            print(f"smoke: {args.optimum_cli} not installed, optimum skipped", file=sys.stderr)
            args.skip_optimum = True
    heads = args.heads or max(1, args.hidden // 64)
    inter = args.intermediate or 4 * args.hidden

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(args.work, args.layers, args.hidden, heads, inter, args.vocab).resolve()
    weights = ckpt / "model.safetensors"
    wbytes = weights.stat().st_size
    if not args.trex.exists():
        sys.exit(f"trex binary not found at {args.trex}")

    out_dir = args.work / "out"
    tools = {
        "cp": lambda: ["cp", str(weights), str(out_dir / "copy.safetensors")],
        "trex --no-check": lambda: [str(args.trex), "export", "--model", str(ckpt), "--no-check",
                                    str(out_dir / "trex_nocheck.onnx")],
        "trex": lambda: [str(args.trex), "export", "--model", str(ckpt), str(out_dir / "trex.onnx")],
    }
    if not args.skip_optimum:
        tools["optimum-cli"] = lambda: [args.optimum_cli, "export", "onnx", "--model", str(ckpt), "--task",
                                        "feature-extraction", str(out_dir / "optimum")]

    # Warm the page cache once so no tool pays for the first cold read.
    with open(weights, "rb") as f:
        while f.read(1 << 24):
            pass

    runs: dict[str, list[dict]] = {k: [] for k in tools}
    for i in range(args.repeat):
        for name, make_cmd in tools.items():
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            r = measure(make_cmd(), env)
            runs[name].append(r)
            print(f"[{i + 1}/{args.repeat}] {name:<16} {r['wall_s']:8.2f} s  {r['maxrss_bytes'] / 2**20:9.1f} MB",
                  file=sys.stderr, flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)

    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "peak_rss_bytes": statistics.median(r["maxrss_bytes"] for r in rs),
            "tree_sum_rss_bytes": statistics.median(r["tree_sum_bytes"] for r in rs),
            "runs": rs,
        }
    opt = summary.get("optimum-cli", {}).get("wall_s")
    cp = summary["cp"]["wall_s"]

    print(f"\nCheckpoint: BERT L={args.layers} H={args.hidden} A={heads} I={inter} V={args.vocab}, "
          f"model.safetensors {wbytes / 2**20:.1f} MB; median of {args.repeat} run(s); "
          f"{os.cpu_count()} CPU(s)\n")
    print("| tool | wall s | peak RSS MB | tree-sum RSS MB | RSS / weights | speedup vs optimum | ratio vs cp |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        sp = f"{opt / s['wall_s']:.1f}x" if opt else "n/a"
        print(f"| {name} | {s['wall_s']:.2f} | {s['peak_rss_bytes'] / 2**20:.1f} | "
              f"{s['tree_sum_rss_bytes'] / 2**20:.1f} | {s['peak_rss_bytes'] / wbytes:.2f} | {sp} | "
              f"{s['wall_s'] / cp:.1f}x |")

    result = {
        "checkpoint": {"layers": args.layers, "hidden": args.hidden, "heads": heads, "intermediate": inter,
                       "vocab": args.vocab, "weights_bytes": wbytes},
        "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rss_method": ("/usr/bin/time -v ru_maxrss (max over processes) + psutil tree-sum polling"
                       if os.path.exists(TIME_BIN) else "psutil tree-sum polling"),
        "results": summary,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out_json = args.results / f"export_bench-L{args.layers}-H{args.hidden}.json"
    out_json.write_text(json.dumps(result, indent=2))
    if args.smoke:
        shutil.rmtree(smoke_dir, ignore_errors=True)
    else:
        print(f"\nJSON: {out_json}", file=sys.stderr)


if __name__ == "__main__":
    main()
