#!/usr/bin/env python3
"""Decoder export benchmark: trex vs onnxruntime-genai's model builder vs optimum-cli, then decode speed.

Checkpoint (cached under bench/results/ckpt/, gitignored):
  default   a TinyLlama-1.1B-shaped random **bf16** Llama (hidden 2048, 22 layers, 32 heads, 4 kv heads,
            intermediate 5632, vocab 32000, 2048 positions, untied), 3 safetensors shards written tensor by
            tensor (bench/_llama_checkpoint.py: ~2.2 GB, peak memory one tensor), config.json,
            generation_config.json and a small byte-level BPE tokenizer.
  --smoke   a tiny random Llama made by transformers (seconds).

Export rows (one run each, `--repeat N` for more; each run in a fresh process, output in a fresh folder):
  trex --no-check build/trex export --model CKPT --pipeline text-generation --no-check OUT  (no model run, as
                  the builder: the like-for-like row for the builder)
  trex            build/trex export --model CKPT --pipeline text-generation OUT  (with the load check: ONNX
                  Runtime runs a prefill and a decode step, reading the written weights back from disk)
  genai fp32      .venv-genai/bin/python -m onnxruntime_genai.models.builder -i CKPT -o OUT -p fp32 -e cpu
  genai int4      the same with -p int4
  optimum-cli     .venv/bin/optimum-cli export onnx --model CKPT --task text-generation-with-past OUT
A tool that is missing (no build/trex, no .venv-genai, no optimum-cli) or that cannot export decoders yet
(trex before decoder support) gets a note in its row instead of figures; the script still exits 0.

Method
  wall s       time.perf_counter() around the tool's process (page cache warm: the checkpoint was just
               written or read).
  peak RSS GB  ru_maxrss of the tool's process tree from getrusage(RUSAGE_CHILDREN) in a fresh wrapper
               process per run: the largest single process's high-water mark (1 GB = 1e9 bytes).
  tree GB      psutil polling (every 20 ms) of the summed RSS of the tool and all its descendants (may miss
               short peaks); "-" without psutil.
  anon GB      the same polling of RSS minus shared (file-backed) pages: memory the tools allocated. trex's
               load check maps the written weights (ONNX Runtime mmaps external data), which counts in RSS as
               page cache the kernel can drop, not as allocated memory.
  output MB    size of all files the tool wrote in OUT (1 MB = 1e6 bytes).

Decode (when trex wrote a folder that has genai_config.json and genai runs it): tokens/s of trex's folder
vs genai fp32's folder, both in onnxruntime-genai (tests/python/genai_run.py --timing in .venv-genai, a fresh
process per run): 128-token random prompt, greedy, 64 new tokens (EOS suppressed through min_length),
`--threads 2` intra-op threads, median of 3 runs with min-max spread. genai fp32's row is printed alone when
trex's folder is not there. In --smoke, genai fp32's greedy tokens are also checked against transformers'
generate() (must be equal; exit 1 otherwise).

Usage
  .venv/bin/python bench/decoder_bench.py            # 1.1B checkpoint, all tools
  .venv/bin/python bench/decoder_bench.py --smoke    # tiny checkpoint, seconds (a test runs this)
  .venv/bin/python bench/decoder_bench.py --tools genai-fp32,optimum
Results: a markdown table on stdout and JSON in bench/results/ (or --results).
"""
from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _llama_checkpoint as llama_checkpoint  # noqa: E402

TREX_BIN = Path(os.environ.get("TREX_BIN", str(REPO / "build" / "trex")))
GENAI_PY = REPO / ".venv-genai" / "bin" / "python"
OPTIMUM_CLI = REPO / ".venv" / "bin" / "optimum-cli"
GENAI_RUN = REPO / "tests" / "python" / "genai_run.py"
TOOLS = ["trex-no-check", "trex", "trex-optimized", "genai-fp32", "genai-int4", "optimum"]
# The smoke run (scripts/test) keeps to the tools that prove the folders: trex's two and the builder's fp32.
SMOKE_TOOLS = ["trex", "trex-optimized", "genai-fp32"]
LABELS = {"trex-no-check": "trex --no-check", "trex": "trex", "trex-optimized": "trex --optimize", "genai-fp32": "genai builder fp32",
          "genai-int4": "genai builder int4", "optimum": "optimum-cli"}

# Runs argv[1:] as a child, then prints {"rc", "wall_s", "maxrss_kb", "tree_peak_b"} as the last line.
# A fresh interpreter per run, so RUSAGE_CHILDREN holds only this tool's process tree.
WRAPPER = r"""
import json, resource, subprocess, sys, threading, time
try:
    import psutil
except ImportError:
    psutil = None
peak = [0]
anon = [0]
def poll(pid, stop):
    try:
        root = psutil.Process(pid)
    except Exception:
        return
    while not stop.is_set():
        try:
            procs = [root] + root.children(recursive=True)
            s = a = 0
            for p in procs:
                try:
                    mi = p.memory_info()
                    s += mi.rss
                    a += mi.rss - mi.shared  # RssAnon: what the process allocated, not mapped file pages
                except Exception:
                    pass
            peak[0] = max(peak[0], s)
            anon[0] = max(anon[0], a)
        except Exception:
            pass
        stop.wait(0.02)
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=sys.stderr, stderr=sys.stderr)
stop = threading.Event()
th = None
if psutil is not None:
    th = threading.Thread(target=poll, args=(p.pid, stop), daemon=True)
    th.start()
rc = p.wait()
wall = time.perf_counter() - t0
stop.set()
if th is not None:
    th.join()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "maxrss_kb": ru.ru_maxrss, "tree_peak_b": peak[0] or None,
                  "anon_peak_b": anon[0] or None}))
"""


def measure(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Runs cmd under WRAPPER; the tool's stdout+stderr go to `log`."""
    with open(log, "w") as lf:
        r = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], stdout=subprocess.PIPE, stderr=lf, text=True,
                           env=env, cwd=log.parent)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        return {"rc": r.returncode or 1, "wall_s": None, "maxrss_kb": None, "tree_peak_b": None, "anon_peak_b": None}
    return json.loads(lines[-1])


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0


def last_lines(log: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[:300]


def tool_command(tool: str, ckpt: Path, out: Path, cache: Path) -> list[str] | str:
    """The command for a tool, or a string saying why it cannot run here."""
    if tool in ("trex", "trex-optimized", "trex-no-check"):
        if not TREX_BIN.exists():
            return f"not built ({TREX_BIN.relative_to(REPO) if TREX_BIN.is_relative_to(REPO) else TREX_BIN} missing)"
        extra = {"trex-optimized": ["--optimize"], "trex-no-check": ["--no-check"]}.get(tool, [])
        return [str(TREX_BIN), "export", "--model", str(ckpt), "--pipeline", "text-generation", *extra, str(out)]
    if tool.startswith("genai-"):
        if not GENAI_PY.exists():
            return "unavailable (.venv-genai missing: run scripts/setup)"
        return [str(GENAI_PY), "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out),
                "-p", tool.split("-", 1)[1], "-e", "cpu", "-c", str(cache)]
    if tool == "optimum":
        if not OPTIMUM_CLI.exists():
            return "unavailable (.venv/bin/optimum-cli missing)"
        return [str(OPTIMUM_CLI), "export", "onnx", "--model", str(ckpt), "--task", "text-generation-with-past",
                str(out)]
    raise ValueError(tool)


def trex_unsupported(log: Path) -> bool:
    """True when trex refused the decoder (before decoder support): a usage error naming the pipeline/model."""
    text = log.read_text(errors="replace").lower() if log.exists() else ""
    return any(w in text for w in ("not supported", "unsupported", "not in {"))


def run_exports(tools, ckpt: Path, work: Path, repeat: int, env: dict) -> list[dict]:
    rows = []
    for tool in tools:
        row = {"tool": tool, "label": LABELS[tool], "runs": [], "note": None, "out": None}
        rows.append(row)
        for i in range(repeat):
            out = work / f"{tool}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = tool_command(tool, ckpt, out, work / "genai-cache")
            if isinstance(cmd, str):
                row["note"] = cmd
                break
            log = work / f"{tool}-{i}.log"
            print(f"[{tool}] run {i + 1}/{repeat} ...", file=sys.stderr, flush=True)
            m = measure(cmd, log, env)
            shutil.rmtree(work / "genai-cache", ignore_errors=True)
            if m["rc"] != 0:
                if tool.startswith("trex") and trex_unsupported(log):
                    row["note"] = "not supported yet"
                else:
                    row["note"] = f"failed (rc {m['rc']}): {last_lines(log)}"
                row["log"] = str(log)
                break
            m["out_bytes"] = dir_bytes(out)
            row["runs"].append(m)
            row["out"] = str(out)
            if i < repeat - 1:  # keep only the last run's folder
                shutil.rmtree(out, ignore_errors=True)
        if row["runs"]:
            row["wall_s"] = statistics.median(r["wall_s"] for r in row["runs"])
            row["peak_rss_gb"] = max(r["maxrss_kb"] for r in row["runs"]) * 1024 / 1e9
            trees = [r["tree_peak_b"] for r in row["runs"] if r["tree_peak_b"]]
            row["tree_gb"] = max(trees) / 1e9 if trees else None
            anons = [r.get("anon_peak_b") for r in row["runs"] if r.get("anon_peak_b")]
            row["anon_gb"] = max(anons) / 1e9 if anons else None
            row["out_mb"] = row["runs"][-1]["out_bytes"] / 1e6
    return rows


def genai_generate(folder: Path, prompt: list[int], new_tokens: int, threads: int, timing: bool,
                   ignore_eos: bool, env: dict) -> tuple[list[int] | None, dict | None, str]:
    cmd = [str(GENAI_PY), str(GENAI_RUN), str(folder), "--prompt-ids", ",".join(map(str, prompt)),
           "--max-new-tokens", str(new_tokens), "--threads", str(threads)]
    if timing:
        cmd.append("--timing")
    if ignore_eos:
        cmd.append("--ignore-eos")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return None, None, (r.stderr.strip().splitlines() or ["?"])[-1][:300]
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[0]), (json.loads(lines[1]) if timing and len(lines) > 1 else None), ""


def decode_bench(folders: dict[str, Path], prompt: list[int], new_tokens: int, threads: int, repeat: int,
                 env: dict) -> list[dict]:
    rows = []
    for name, folder in folders.items():
        row = {"folder": name, "path": str(folder), "tok_s": [], "note": None}
        for _ in range(repeat):
            toks, timing, err = genai_generate(folder, prompt, new_tokens, threads, True, True, env)
            if toks is None:
                row["note"] = f"genai failed: {err}"
                break
            row["tok_s"].append(timing["decode_tok_s"])
            row["tokens"] = toks
        if row["tok_s"]:
            row["median"] = statistics.median(row["tok_s"])
        rows.append(row)
    return rows


def transformers_greedy(ckpt: Path, prompt: list[int], new_tokens: int) -> list[int]:
    import torch
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(ckpt), attn_implementation="eager").eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         pad_token_id=llama_checkpoint.EOS)
    return out[0, len(prompt):].tolist()


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny Llama, one repetition, seconds")
    ap.add_argument("--tools", default=None,
                    help=f"comma-separated subset of {','.join(TOOLS)} (default: all; --smoke: {','.join(SMOKE_TOOLS)})")
    ap.add_argument("--repeat", type=int, default=1, help="export runs per tool (median wall, max RSS)")
    ap.add_argument("--decode-repeat", type=int, default=None, help="decode runs per folder (default 3; smoke 1)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the exported folders (under --results/decoder-work)")
    a = ap.parse_args(argv)
    tools = [t.strip() for t in (a.tools or ",".join(SMOKE_TOOLS if a.smoke else TOOLS)).split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        ap.error(f"unknown tools {bad}; known: {TOOLS}")
    decode_repeat = a.decode_repeat or (1 if a.smoke else 3)

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    a.results.mkdir(parents=True, exist_ok=True)
    ckpt_root = a.results / "ckpt"
    ckpt, shape = llama_checkpoint.bench_checkpoint(ckpt_root, "tiny" if a.smoke else "tinyllama")
    weights_gb = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 1e9

    if a.keep:
        work = a.results / "decoder-work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="decoder-bench-", dir=a.results))
    status = 0
    try:
        rows = run_exports(tools, ckpt, work, 1 if a.smoke else a.repeat, env)

        print(f"\n## Decoder export: {ckpt.name} ({weights_gb:.2f} GB of safetensors), "
              f"{platform.machine()}, {os.cpu_count()} CPUs\n")
        print("| tool | wall s | peak RSS GB | tree GB | anon GB | output MB | note |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['label']} | {fmt(r.get('wall_s'), '.1f')} | {fmt(r.get('peak_rss_gb'), '.2f')} | "
                  f"{fmt(r.get('tree_gb'), '.2f')} | {fmt(r.get('anon_gb'), '.2f')} | {fmt(r.get('out_mb'), '.1f' if (r.get('out_mb') or 0) < 10 else '.0f')} | {r['note'] or ''} |")
        for r in rows:
            if r["tool"] == "trex" and r["note"]:
                print(f"\ntrex: {r['note']}")
        # Wall-time ratios of each trex row to each peer row of this run (peer wall / trex wall).
        peers = [r for r in rows if not r["tool"].startswith("trex") and r.get("wall_s")]
        for r in rows:
            if r["tool"].startswith("trex") and r.get("wall_s") and peers:
                print(f"\n{r['label']}: wall-time ratio (peer / trex) " +
                      ", ".join(f"{p['wall_s'] / r['wall_s']:.1f}x vs {p['label']}" for p in peers), end="")
        print()

        # Decode speed in onnxruntime-genai.
        by_tool = {r["tool"]: r for r in rows}
        folders: dict[str, Path] = {}
        notes = []
        for tool in ("trex", "trex-optimized"):
            trex_row = by_tool.get(tool)
            if trex_row and trex_row["out"] and (Path(trex_row["out"]) / "genai_config.json").exists():
                folders[LABELS[tool]] = Path(trex_row["out"])
            elif trex_row:
                notes.append(f"{LABELS[tool]} folder: " + (trex_row["note"] or "no genai_config.json") +
                             " (decode skipped)")
        g = by_tool.get("genai-fp32")
        if g and g["out"]:
            folders["genai builder fp32"] = Path(g["out"])
        decode = []
        token_check = None
        if folders and GENAI_PY.exists():
            import random
            rng = random.Random(0)
            prompt = [llama_checkpoint.BOS] + [rng.randrange(3, shape["vocab_size"]) for _ in range(a.prompt_len - 1)]
            if a.smoke:
                n = 32
                ref = transformers_greedy(ckpt, prompt[:16], n)
                for name, folder in folders.items():
                    got, _, err = genai_generate(folder, prompt[:16], n, a.threads, False, False, env)
                    ok = got == ref
                    token_check = (token_check or {}) | {name: ok}
                    print(f"\n{name}: greedy {n} tokens vs transformers generate(): "
                          f"{'identical' if ok else 'DIFFERENT'}{'' if got is not None else ' (' + err + ')'}")
                    if not ok:
                        status = 1
            decode = decode_bench(folders, prompt, a.new_tokens, a.threads, decode_repeat, env)
            print(f"\n## Decode in onnxruntime-genai: prompt {a.prompt_len} tokens, {a.new_tokens} new tokens "
                  f"(greedy, EOS suppressed), {a.threads} threads, median of {decode_repeat}\n")
            print("| folder | tokens/s (median) | min-max | vs genai fp32 | note |")
            print("|---|---:|---:|---:|---|")
            base = next((d.get("median") for d in decode if d["folder"] == "genai builder fp32"), None)
            for d in decode:
                med = d.get("median")
                spread = f"{min(d['tok_s']):.1f}-{max(d['tok_s']):.1f}" if d["tok_s"] else "-"
                ratio = f"{med / base:.2f}x" if med and base else "-"
                print(f"| {d['folder']} | {fmt(med, '.1f')} | {spread} | {ratio} | {d['note'] or ''} |")
        elif not GENAI_PY.exists():
            notes.append("decode skipped: .venv-genai missing (run scripts/setup)")
        for n in notes:
            print(f"\n{n}")

        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_json = a.results / f"decoder_bench{'-smoke' if a.smoke else ''}-{stamp}.json"
        out_json.write_text(json.dumps({
            "checkpoint": str(ckpt), "weights_gb": weights_gb, "shape": shape, "smoke": a.smoke,
            "exports": rows, "decode": decode, "token_check": token_check,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "settings": {"prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "threads": a.threads,
                         "decode_repeat": decode_repeat},
        }, indent=2, default=str) + "\n")
        print(f"\nresults: {out_json}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
