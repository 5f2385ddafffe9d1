#!/usr/bin/env python3
"""Text-generation speed: `trex run` (C++ generation loop over ONNX Runtime) vs onnxruntime-genai on the same
folder trex exported, and vs transformers' generate() on torch, in the same run.

Checkpoint (random, cached under bench/results/ckpt/, gitignored; bench/_llama_checkpoint.py):
  default       "llama-170m": a Llama of hidden 1024, 8 layers, 16 heads, 4 kv heads, intermediate 2816,
                vocab 32000 (bf16 shards; ~170M parameters, ~0.7 GB in fp32): big enough that a decode step is
                matrix work, small enough to repeat on a 2-core machine.
  --shape tinyllama   the TinyLlama-1.1B shape (22 layers, hidden 2048; ~4.4 GB fp32), slow here.
  --smoke       a tiny random Llama made by transformers (seconds).
Folder: build/trex export --model CKPT --pipeline text-generation OUT (fp32 ONNX, genai_config.json beside it);
--optimize exports with --optimize too (fused GroupQueryAttention graph; trex run and genai both load it).

Rows (greedy, the same prompt ids in each: a text of random words whose tokenization is about --prompt-len
tokens; --new-tokens new tokens with eos suppressed; --threads intra-op threads; each run a fresh process except
transformers, which loads once; trex and genai runs alternate):
  trex run      build/trex run OUT --max-new-tokens N --min-new-tokens N --threads T --timing TEXT
                (its timings line: decode steps after the first token / their seconds)
  genai         .venv-genai/bin/python tests/python/genai_run.py OUT --prompt-ids ... --ignore-eos --timing
                (the same definition: steps after the first token / seconds from the first token to the last)
  transformers  model.generate() on torch (fp32, sdpa attention, torch threads T): decode tokens/s =
                (N - 1) / (time(N new tokens) - time(1 new token)), each timed separately.
Figures: median tokens/s of --repeat runs with the min-max spread; ratios of medians.

Usage
  .venv/bin/python bench/generate_bench.py               # llama-170m, 3 repeats
  .venv/bin/python bench/generate_bench.py --smoke       # tiny model, one repeat (a test runs this)
Results: a markdown table on stdout and JSON in bench/results/generate_bench.json (or --results).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _llama_checkpoint as llama_checkpoint  # noqa: E402

TREX_BIN = Path(os.environ.get("TREX_BIN", str(REPO / "build" / "trex")))
GENAI_PY = REPO / ".venv-genai" / "bin" / "python"
GENAI_RUN = REPO / "tests" / "python" / "genai_run.py"

LLAMA_170M = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                  intermediate_size=2816, vocab_size=32000, max_position_embeddings=2048)
SHAPES = {"llama-170m": LLAMA_170M, "tinyllama": llama_checkpoint.TINYLLAMA_1B}


def prompt_text(tokenizer, target: int, seed: int = 0) -> tuple[str, list[int]]:
    """Random lowercase words whose encoding has about `target` tokens, and that encoding."""
    rng = random.Random(seed)
    words = []
    while True:
        words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))))
        text = " ".join(words)
        ids = tokenizer(text).input_ids
        if len(ids) >= target:
            return text, ids


def trex_run(folder: Path, text: str, new_tokens: int, threads: int) -> dict:
    cmd = [str(TREX_BIN), "run", str(folder), "--pipeline", "text-generation", "--max-new-tokens", str(new_tokens),
           "--min-new-tokens", str(new_tokens), "--threads", str(threads), "--timing", "--json", text]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"trex run failed: {r.stderr.strip()[-300:]}")
    timing = json.loads(r.stderr.strip().splitlines()[-1])
    timing["text"] = json.loads(r.stdout)[0]["generated_text"]
    return timing


def genai_run(folder: Path, ids: list[int], new_tokens: int, threads: int) -> dict:
    cmd = [str(GENAI_PY), str(GENAI_RUN), str(folder), "--prompt-ids", ",".join(map(str, ids)),
           "--max-new-tokens", str(new_tokens), "--threads", str(threads), "--timing", "--ignore-eos"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"genai failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    lines = r.stdout.strip().splitlines()
    timing = json.loads(lines[1])
    timing["ids"] = json.loads(lines[0])
    return timing


def transformers_rates(ckpt: Path, ids: list[int], new_tokens: int, threads: int, repeat: int) -> tuple[list, list]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    x = torch.tensor([ids])

    def timed(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=llama_checkpoint.EOS)
        return time.perf_counter() - t0, out[0, len(ids):].tolist()

    timed(2)  # warm-up
    rates, tokens = [], []
    for _ in range(repeat):
        t1, _ = timed(1)
        tn, toks = timed(new_tokens)
        rates.append((new_tokens - 1) / (tn - t1) if tn > t1 else None)
        tokens = toks
    return rates, tokens


def summary(values: list) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": values}


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-170m")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--optimize", action="store_true", help="export with --optimize (fused graphs; both runners use them)")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "generate_bench.json")
    a = ap.parse_args(argv)
    if a.smoke:
        a.prompt_len, a.new_tokens, a.repeat = 12, 8, 1

    if not TREX_BIN.exists():
        print(f"SKIP: {TREX_BIN} not built")
        return 0
    root = REPO / "bench" / "results"
    if a.smoke:
        ckpt = llama_checkpoint.make_tiny_llama(root / "ckpt" / "tiny-llama-v1")
        label = "tiny llama (smoke)"
    else:
        ckpt = root / "ckpt" / f"{a.shape}-bf16"
        llama_checkpoint.make_sharded_llama(ckpt, SHAPES[a.shape], shards=2 if a.shape == "llama-170m" else 3)
        label = a.shape
    folder = root / "generate" / (ckpt.name + ("-onnx-optimized" if a.optimize else "-onnx"))
    if not (folder / "model.onnx").exists():
        r = subprocess.run([str(TREX_BIN), "export", "--model", str(ckpt), "--pipeline", "text-generation",
                            *(["--optimize"] if a.optimize else []), str(folder)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"trex export failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
            return 1

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    text, ids = prompt_text(tok, a.prompt_len)

    # trex and genai alternate run by run, so a change of load on the machine hits both alike.
    rows, notes = {}, []
    runs = {"trex run": [], "onnxruntime-genai": []}
    genai_ok = GENAI_PY.exists()
    if not genai_ok:
        notes.append("onnxruntime-genai: .venv-genai missing (scripts/setup)")
    for _ in range(a.repeat):
        runs["trex run"].append(trex_run(folder, text, a.new_tokens, a.threads))
        if genai_ok:
            try:
                runs["onnxruntime-genai"].append(genai_run(folder, ids, a.new_tokens, a.threads))
            except RuntimeError as e:
                notes.append(str(e))
                genai_ok = False
    for name, rs in runs.items():
        if rs:
            rows[name] = summary([r["decode_tok_s"] for r in rs])
            rows[name]["prefill_s"] = statistics.median(r["prefill_s"] for r in rs)

    if not a.no_transformers:
        rates, _ = transformers_rates(ckpt, ids, a.new_tokens, a.threads, a.repeat)
        rows["transformers generate()"] = summary(rates)

    if a.optimize:
        label += " --optimize"
    print(f"## Text generation: {label}, prompt {len(ids)} tokens, {a.new_tokens} new tokens (greedy, eos "
          f"suppressed), {a.threads} threads, median of {a.repeat}\n")
    print("| runner | decode tok/s (median) | min-max | prefill s | trex run / this |")
    print("|---|---|---|---|---|")
    base = rows["trex run"]["median"]
    for name, r in rows.items():
        ratio = base / r["median"] if base and r["median"] else None
        print(f"| {name} | {fmt(r['median'])} | {fmt(r['min'])}-{fmt(r['max'])} | {fmt(r.get('prefill_s'), '.3f')} | "
              f"{fmt(ratio, '.2f')}x |")
    for n in notes:
        print(f"\nnote: {n}")
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps({"model": label, "prompt_tokens": len(ids), "new_tokens": a.new_tokens,
                                     "threads": a.threads, "repeat": a.repeat, "rows": rows, "notes": notes},
                                    indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
