#!/usr/bin/env python3
"""Int4 decoder export: trex vs onnxruntime-genai's model builder (`-p int4`), then decode speed of both folders.

Checkpoint: the TinyLlama-1.1B-shaped random bf16 Llama of bench/decoder_bench.py (bench/_llama_checkpoint.py,
cached under bench/results/ckpt/); --smoke: the tiny random Llama (seconds).

Export rows (each run a fresh process writing a fresh folder; `--repeat N`, default 3, smoke 1):
  trex int4            build/trex export --model CKPT --pipeline text-generation --quantize int4 --optimize
                       --quantized-only --accuracy-level 4 OUT
                       (block 32, asymmetric, coarse per-block clipping search, 8-bit embedding table; the fp32
                       model is never written: each weight is quantized from the mapped checkpoint as it is
                       written; includes trex's ONNX Runtime load check of the int4 graph)
  trex int4 rtn sym    the same with --int4-search rtn --symmetric --no-check (like for like with the builder:
                       round-to-nearest, symmetric, no load check; trex's load check is an ONNX Runtime session
                       of the int4 model, which is what sets the first row's peak RSS)
  genai builder int4   .venv-genai/bin/python -m onnxruntime_genai.models.builder -i CKPT -o OUT -p int4 -e cpu
                       (block 32, symmetric RTN, accuracy_level 4 on CPU)
Method: wall s = time.perf_counter() around the process (page cache warm), median of the runs with min-max;
peak RSS = ru_maxrss of the tool's process tree (largest single process; decoder_bench.measure), max over runs;
output MB = all files the tool wrote.

Decode: tokens/s of each int4 folder in onnxruntime-genai (tests/python/genai_run.py --timing, a fresh process
per run): 128-token random prompt, greedy, 64 new tokens (EOS suppressed), --threads 2, runs interleaved
(folder A, B, A, B, ...) so that load on this shared machine hits both alike; median of --decode-repeat (default
3, smoke 1) with min-max, and the paired ratio (run i against the builder's run i). `--interleave steps`: all
folders in one genai process (bench/_genai_steps.py), one decode step of each in turn (the order rotating), a
tighter pairing on a loaded machine: per round tokens/s = 1 / median step, ratios per round (median, min-max)
and per step (median, interquartile range). --smoke runs both modes. Goals (issue 11): export >= 10x faster
than the builder, peak RSS <= 1 GB; decode >= 1.0x the builder's folder.
Tool trex-int4-rtn-b128 (not in the default set): the rtn row with --block-size 128 (4x fewer scales to read
per decode step; less accurate than block 32).

--shape llama2-7b: a Llama-2-7B-shaped random bf16 checkpoint (hidden 4096, 32 layers, 32 heads, FFN 11008,
vocab 32000; 13.5 GB in 6 shards, written tensor by tensor by bench/_llama_checkpoint.py, peak memory one
tensor); `--delete-checkpoint` removes it afterwards. Goal (issue 11): the int4 export in <= 3 min, <= 2 GB.

Usage
  .venv/bin/python bench/decoder_int4_bench.py            # 1.1B checkpoint
  .venv/bin/python bench/decoder_int4_bench.py --shape llama2-7b --tools trex-int4 --repeat 1 --no-decode \
      --delete-checkpoint
  .venv/bin/python bench/decoder_int4_bench.py --smoke    # tiny checkpoint, seconds (a test runs this)
Results: a markdown table on stdout and JSON in bench/results/ (or --results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _llama_checkpoint as llama_checkpoint  # noqa: E402
import decoder_bench as db  # noqa: E402

TOOLS = {
    "trex-int4": ("trex int4", ["--quantize", "int4", "--optimize", "--quantized-only", "--accuracy-level", "4"]),
    "trex-int4-rtn": ("trex int4 rtn sym --no-check", ["--quantize", "int4", "--optimize", "--quantized-only",
                                                       "--accuracy-level", "4", "--int4-search", "rtn", "--symmetric",
                                                       "--no-check"]),
    "genai-int4": ("genai builder int4", None),
    # Not in the default set: the block size trades accuracy for decode speed (fewer scales to read per step).
    "trex-int4-rtn-b128": ("trex int4 rtn sym block 128 --no-check",
                           ["--quantize", "int4", "--optimize", "--quantized-only", "--accuracy-level", "4",
                            "--int4-search", "rtn", "--symmetric", "--no-check", "--block-size", "128"]),
}
DEFAULT_TOOLS = ["trex-int4", "trex-int4-rtn", "genai-int4"]
STEPS_PY = Path(__file__).resolve().parent / "_genai_steps.py"
BUILDER = "genai builder int4"


def command(tool: str, ckpt: Path, out: Path, cache: Path):
    label, extra = TOOLS[tool]
    if extra is not None:
        if not db.TREX_BIN.exists():
            return f"not built ({db.TREX_BIN} missing)"
        return [str(db.TREX_BIN), "export", "--model", str(ckpt), "--pipeline", "text-generation", *extra, str(out)]
    if not db.GENAI_PY.exists():
        return "unavailable (.venv-genai missing: run scripts/setup)"
    return [str(db.GENAI_PY), "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out), "-p", "int4",
            "-e", "cpu", "-c", str(cache)]


def run_exports(tools, ckpt, work, repeat, env):
    rows = []
    for tool in tools:
        row = {"tool": tool, "label": TOOLS[tool][0], "runs": [], "note": None, "out": None}
        rows.append(row)
        for i in range(repeat):
            out = work / f"{tool}-{i}"
            cmd = command(tool, ckpt, out, work / "genai-cache")
            if isinstance(cmd, str):
                row["note"] = cmd
                break
            log = work / f"{tool}-{i}.log"
            print(f"[{tool}] run {i + 1}/{repeat} ...", file=sys.stderr, flush=True)
            m = db.measure(cmd, log, env)
            shutil.rmtree(work / "genai-cache", ignore_errors=True)
            if m["rc"] != 0:
                row["note"] = f"failed (rc {m['rc']}): {db.last_lines(log)}"
                break
            m["out_bytes"] = db.dir_bytes(out)
            row["runs"].append(m)
            if row["out"]:
                shutil.rmtree(row["out"], ignore_errors=True)  # keep the last run's folder only
            row["out"] = str(out)
        if row["runs"]:
            walls = [r["wall_s"] for r in row["runs"]]
            row["wall_s"] = statistics.median(walls)
            row["wall_min"], row["wall_max"] = min(walls), max(walls)
            row["peak_rss_gb"] = max(r["maxrss_kb"] for r in row["runs"]) * 1024 / 1e9
            row["out_mb"] = row["runs"][-1]["out_bytes"] / 1e6
    return rows


def step_interleaved_decode(folders: dict, prompt: list[int], new_tokens: int, threads: int, rounds: int,
                            env: dict) -> list[dict]:
    """--interleave steps: bench/_genai_steps.py runs every folder in one genai process, decode steps alternating.
    Per round and folder: tokens/s = 1 / median step time; per round, each folder's ratio to the builder's folder;
    printed: the median over rounds with min-max, and the median (interquartile range) of the per-step ratios
    (step i of a folder / step i of the builder's folder, adjacent in time)."""
    names = list(folders)
    cmd = [str(db.GENAI_PY), str(STEPS_PY), *[str(folders[n]) for n in names], "--prompt-ids",
           ",".join(map(str, prompt)), "--new-tokens", str(new_tokens), "--threads", str(threads),
           "--rounds", str(rounds)]
    load_before = os.getloadavg()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    load_after = os.getloadavg()
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
        return [{"folder": n, "tok_s": [], "note": f"genai failed: {err}"} for n in names]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    paths = [str(folders[n]) for n in names]
    ref = paths[names.index(BUILDER)] if BUILDER in names else None
    rows = []
    for n, p in zip(names, paths):
        per_round = [1.0 / statistics.median(rd[p]) for rd in out["rounds"]]
        row = {"folder": n, "tok_s": per_round, "note": None, "tokens": out["tokens"][p],
               "load_avg_before_after": [load_before[0], load_after[0]]}
        if ref:
            row["round_ratio"] = [1.0 / statistics.median(rd[p]) * statistics.median(rd[ref]) for rd in out["rounds"]]
            steps = sorted(b / a for rd in out["rounds"] for a, b in zip(rd[p], rd[ref]))
            q = lambda x: steps[int(x * (len(steps) - 1))]  # noqa: E731
            row["step_ratio"] = {"median": statistics.median(steps), "q25": q(0.25), "q75": q(0.75), "n": len(steps)}
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny Llama, one run each, seconds")
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                    help=f"comma-separated subset of {','.join(TOOLS)} (default {','.join(DEFAULT_TOOLS)})")
    ap.add_argument("--repeat", type=int, default=None, help="export runs per tool (default 3; smoke 1)")
    ap.add_argument("--decode-repeat", type=int, default=None, help="decode runs per folder (default 3; smoke 1)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=db.REPO / "bench" / "results")
    ap.add_argument("--shape", choices=["tinyllama", "llama2-7b"], default="tinyllama")
    ap.add_argument("--no-decode", action="store_true", help="exports only")
    ap.add_argument("--interleave", choices=["runs", "steps"], default="runs",
                    help="decode: a fresh genai process per run, runs alternating (runs), or all folders in one "
                         "process, decode steps alternating (steps; --decode-repeat rounds)")
    ap.add_argument("--delete-checkpoint", action="store_true", help="--shape llama2-7b: remove the checkpoint afterwards")
    a = ap.parse_args(argv)
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if any(t not in TOOLS for t in tools):
        ap.error(f"known tools: {','.join(TOOLS)}")
    repeat = a.repeat or (1 if a.smoke else 3)
    decode_repeat = a.decode_repeat or (1 if a.smoke else 3)

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    a.results.mkdir(parents=True, exist_ok=True)
    ckpt_root = a.results / "ckpt"
    ckpt, shape = llama_checkpoint.bench_checkpoint(ckpt_root, "tiny" if a.smoke else a.shape)
    weights_gb = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 1e9

    work = Path(tempfile.mkdtemp(prefix="decoder-int4-bench-", dir=a.results))
    try:
        rows = run_exports(tools, ckpt, work, repeat, env)
        base = next((r for r in rows if r["tool"] == "genai-int4" and r["runs"]), None)
        print(f"\n## Int4 decoder export: {ckpt.name} ({weights_gb:.2f} GB of bf16 safetensors), "
              f"{platform.machine()}, {os.cpu_count()} CPUs, median of {repeat}\n")
        print("| tool | wall s (median) | min-max | vs builder | peak RSS GB | output MB | note |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for r in rows:
            spread = f"{r['wall_min']:.1f}-{r['wall_max']:.1f}" if r["runs"] else "-"
            speed = f"{base['wall_s'] / r['wall_s']:.1f}x" if base and r["runs"] else "-"
            print(f"| {r['label']} | {db.fmt(r.get('wall_s'), '.1f')} | {spread} | {speed} | "
                  f"{db.fmt(r.get('peak_rss_gb'), '.2f')} | {db.fmt(r.get('out_mb'), '.0f')} | {r['note'] or ''} |")

        folders = {r["label"]: Path(r["out"]) for r in rows if r["out"]}
        decode = []
        # --smoke runs both decode modes (seconds on the tiny model), so that neither rots.
        modes = ["runs", "steps"] if a.smoke else [a.interleave]
        decodes = {}
        for mode in (modes if folders and db.GENAI_PY.exists() and not a.no_decode else []):
            rng = random.Random(0)
            prompt = [llama_checkpoint.BOS] + [rng.randrange(3, shape["vocab_size"]) for _ in range(a.prompt_len - 1)]
            if mode == "steps":
                decode = step_interleaved_decode(folders, prompt, a.new_tokens, a.threads, decode_repeat, env)
            else:
                per = {name: {"folder": name, "tok_s": [], "note": None} for name in folders}
                for _ in range(decode_repeat):  # interleaved
                    for name, folder in folders.items():
                        if per[name]["note"]:
                            continue
                        _, timing, err = db.genai_generate(folder, prompt, a.new_tokens, a.threads, True, True, env)
                        if timing is None:
                            per[name]["note"] = f"genai failed: {err}"
                        else:
                            per[name]["tok_s"].append(timing["decode_tok_s"])
                decode = list(per.values())
                ref = next((d["tok_s"] for d in decode if d["folder"] == BUILDER and d["tok_s"]), None)
                for d in decode:  # run i of a folder against run i of the builder's folder (adjacent in time)
                    if ref and len(d["tok_s"]) == len(ref):
                        d["round_ratio"] = [x / y for x, y in zip(d["tok_s"], ref)]
            how = ("all folders in one process, decode steps interleaved (order rotating), tokens/s = 1 / median "
                   f"step per round, {decode_repeat} rounds" if mode == "steps" else
                   f"a fresh process per run, runs interleaved, median of {decode_repeat}")
            print(f"\n## Decode in onnxruntime-genai: prompt {a.prompt_len}, {a.new_tokens} new tokens (greedy, EOS "
                  f"suppressed), {a.threads} threads, {how}; load average {os.getloadavg()[0]:.1f}\n")
            print("| folder | tokens/s (median) | min-max | vs builder int4, paired (median, min-max) | "
                  "per-step ratio (median, IQR) | note |")
            print("|---|---:|---:|---:|---:|---|")
            for d in decode:
                med = statistics.median(d["tok_s"]) if d["tok_s"] else None
                d["median"] = med
                spread = f"{min(d['tok_s']):.1f}-{max(d['tok_s']):.1f}" if d["tok_s"] else "-"
                rr = d.get("round_ratio")
                ratio = f"{statistics.median(rr):.2f}x ({min(rr):.2f}-{max(rr):.2f})" if rr else "-"
                sr = d.get("step_ratio")
                step = f"{sr['median']:.2f}x ({sr['q25']:.2f}-{sr['q75']:.2f})" if sr else "-"
                print(f"| {d['folder']} | {db.fmt(med, '.1f')} | {spread} | {ratio} | {step} | {d['note'] or ''} |")
            decodes[mode] = decode
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_json = a.results / f"decoder_int4_bench{'-smoke' if a.smoke else ''}-{stamp}.json"
        out_json.write_text(json.dumps({"checkpoint": str(ckpt), "weights_gb": weights_gb, "shape": shape,
                                        "smoke": a.smoke, "exports": rows, "decode": decodes.get(a.interleave, []),
                                        "decode_by_mode": decodes,
                                        "settings": {"repeat": repeat, "decode_repeat": decode_repeat,
                                                     "interleave": a.interleave, "load_avg": os.getloadavg(),
                                                     "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
                                                     "threads": a.threads}}, indent=2, default=str) + "\n")
        print(f"\nresults: {out_json}")
        failed = [r["label"] for r in rows if r["tool"].startswith("trex") and r["note"]]
        if failed:
            print(f"trex failed: {failed}", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if a.delete_checkpoint and a.shape == "llama2-7b" and not a.smoke:
            shutil.rmtree(ckpt, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
