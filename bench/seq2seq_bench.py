#!/usr/bin/env python3
"""Encoder-decoder export benchmark: trex vs `optimum-cli export onnx --task text2text-generation-with-past`.

Builds (once, cached) a random Marian checkpoint shaped like opus-mt-en-de (d_model 512, 6 + 6 layers, 8 heads,
ffn 2048, vocab 58101; ~296 MB of safetensors) with transformers, then measures each tool `--repeat` times
(median reported): wall time and peak RSS of the export (methods: bench/export_bench.py's `measure`), and the
bytes of the folder each one writes (every .onnx and external-data file).

  trex --no-check    trex export --model DIR --no-check OUTDIR
  trex               trex export --model DIR OUTDIR      (includes the ONNX Runtime load check of both graphs)
  optimum-cli        optimum-cli export onnx --model DIR --task text2text-generation-with-past OUTDIR
                     (includes optimum's own validation against PyTorch)

With optimum-cli included, the two folders are then run by optimum's ORTModelForSeq2SeqLM (use_cache=True,
`--decode-threads`, default 2) and compared with transformers on torch: generate() of 32 new tokens for a batch
of 8 random 32-token inputs, greedy and beam 4, tokens/s (new tokens x batch / s), interleaved, median of `--decode-repeat` runs,
and each folder's paired ratio to the optimum folder's run of the same round (median, min-max); once with ONNX
Runtime's idle-thread spinning on (its default) and once off (`--decode-spin`); each paired median comes with a
95 % bootstrap interval, and `--decode-control` adds trex's folder a second time, whose ratio to the first copy is
the bench's noise floor. Then the decoder
alone: CPU time of one step with a cache in ONNX Runtime (1 thread, batch 8 and 32 = 8 x 4 beams), interleaved,
`--step-repeat` runs: generate() also spends much of its time in transformers' Python (logits processors, cache
reordering), the same for both folders, which dilutes and blurs the folders' difference.

Usage
  .venv/bin/python bench/seq2seq_bench.py               # opus-mt-en-de shape
  .venv/bin/python bench/seq2seq_bench.py --arch t5     # t5-base shape
  .venv/bin/python bench/seq2seq_bench.py --smoke       # tiny model, every stage once (optimum's when installed),
                                                        # < 60 s, exit 0 when it works
Results: a markdown table on stdout and JSON in bench/results/ (or --results).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_bench import cached_checkpoint, measure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_marian(work: Path, d_model: int, layers: int, heads: int, ffn: int, vocab: int) -> Path:
    def make():
        from transformers import MarianConfig, MarianMTModel

        return MarianMTModel(MarianConfig(
            vocab_size=vocab, decoder_vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
            max_position_embeddings=512, pad_token_id=vocab - 1, decoder_start_token_id=vocab - 1, eos_token_id=0,
            scale_embedding=True, activation_function="swish"))

    return cached_checkpoint(work, f"marian-D{d_model}-L{layers}-A{heads}-F{ffn}-V{vocab}", make)


def build_t5(work: Path, d_model: int, layers: int, heads: int, ffn: int, vocab: int) -> Path:
    """A t5-base-shaped checkpoint with the defaults of --arch t5 (v1.0: relu FFN, tied head, d_kv 64)."""
    def make():
        from transformers import T5Config, T5ForConditionalGeneration

        return T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=ffn, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, feed_forward_proj="relu", tie_word_embeddings=True,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))

    return cached_checkpoint(work, f"t5-D{d_model}-L{layers}-A{heads}-F{ffn}-V{vocab}", make)


def folder_model_bytes(folder: Path) -> int:
    """Bytes of the model files a tool wrote (.onnx and their external data), not config/tokenizer files."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and
               (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx_data") or p.name.endswith(".onnx.data")))


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def paired_spread(base: list[float], times: list[float]) -> dict:
    """spread() of the per-round speed ratios base / times plus a 95 % bootstrap interval of their median (2000
    resamples of the rounds, fixed seed): with ONNX Runtime's spinning on, single rounds on a 2-core machine swing
    by +-25 % (the same folder against itself, --decode-control), so the median of a few rounds is only known to
    a few per cent."""
    import numpy as np

    xs = [b / t for b, t in zip(base, times)]
    d = spread(xs)
    a = np.asarray(xs)
    meds = np.median(a[np.random.default_rng(0).integers(0, len(a), size=(2000, len(a)))], axis=1)
    d["ci95"] = [float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))]
    return d


# --decode-control: trex's folder a second time (its files hard-linked into another folder), run as one more
# folder; its ratio to trex's folder is what the bench measures between two folders that do the same work.
CONTROL = "trex folder, again"

# generate() runs of decode_rounds(): a batch of DECODE_BATCH random DECODE_PROMPT-token inputs, DECODE_NEW tokens.
DECODE_BATCH, DECODE_PROMPT, DECODE_NEW = 8, 32, 32


def decode_speed(folders: dict[str, Path], ckpt: Path, repeat: int, vocab: int, threads: int = 2,
                 spin: bool = True) -> dict:
    """tokens/s of generate() per runtime and beam count (see the module docstring), and each folder's paired
    ratio to the optimum folder's run of the same round (paired_spread(): median, its 95 % interval, min-max over
    rounds; the control folder's also to trex's folder), on wall time and on the
    process's CPU time (with 1 thread, CPU time is what the work costs, little disturbed by other processes on a
    loaded machine). decode_rounds() runs in two child processes that load the folders in opposite orders, half
    the rounds each; the per-round times of both are pooled. In one process the session loaded first runs slower: the same Marian
    folder loaded twice measured 18.8 vs 17.9 ms per cached step, and whichever folder came first was the slowest
    in every order tried, so a fixed order would favour the folder loaded last."""
    raw = in_both_load_orders(decode_rounds, folders, repeat, ckpt=ckpt, vocab=vocab, threads=threads, spin=spin)
    out: dict = {}
    for beams in (1, 4):
        times = {k: sum((r[beams][0][k] for r in raw), []) for k in raw[0][beams][0]}
        cpu = {k: sum((r[beams][1][k] for r in raw), []) for k in raw[0][beams][0]}
        base, base_cpu = times.get("optimum folder"), cpu.get("optimum folder")
        for name, ts in times.items():
            d = out.setdefault(name, {})
            d[f"beam{beams}_tokens_per_s"] = DECODE_NEW * DECODE_BATCH / statistics.median(ts)
            d[f"beam{beams}_tokens_per_cpu_s"] = DECODE_NEW * DECODE_BATCH / statistics.median(cpu[name])
            d[f"beam{beams}_seconds"] = ts
            d[f"beam{beams}_cpu_seconds"] = cpu[name]
            if base:
                d[f"beam{beams}_vs_optimum"] = paired_spread(base, ts)
                d[f"beam{beams}_cpu_vs_optimum"] = paired_spread(base_cpu, cpu[name])
            if name == CONTROL:  # the noise floor: trex's folder against itself
                d[f"beam{beams}_vs_trex"] = paired_spread(times["trex folder"], ts)
    return out


def link_or_copy(src: str, dst: str) -> None:
    """A hard link (no second copy of the weights on disk), a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of n runs (a Williams design) in which every run comes at every position equally often and right
    after every other run equally often: a run slowed by what ran before it (another session's pool still
    spinning, torch's threads) is slowed as often for every runtime. Alternating A B C D / D C B A is not: there
    C follows D in every other round and A never does, and the same folder measured against itself came out
    0.87x (Marian) and 1.08x (t5-base)."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo if len(first) % 2 else hi)
        lo, hi = (lo + 1, hi) if len(first) % 2 == 0 else (lo, hi - 1)
    rows = [[(x + i) % n for x in first] for i in range(n)]
    return rows + [r[::-1] for r in rows] if n % 2 else rows


def in_both_load_orders(fn, folders: dict[str, Path], repeat: int, **kwargs) -> list:
    """fn(folders, repeat, **kwargs) in two fresh processes, one after the other: the folders in the given order
    for the first half of the rounds, reversed for the second. Returns both results."""
    import multiprocessing

    names = list(folders)
    first = (repeat + 1) // 2
    results = []
    for order, k in ((names, first), (names[::-1], repeat - first)):
        if k > 0:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                results.append(pool.apply(fn, ({n: folders[n] for n in order}, k), kwargs))
    return results


def decode_rounds(folders: dict[str, Path], repeat: int, ckpt: Path, vocab: int, threads: int = 2,
                  spin: bool = True) -> dict:
    """Wall and CPU seconds of each generate() run, per beam count ({beams: (wall, cpu)}, each {runtime: [s per
    round]}). The runs of a round follow balanced_orders() (best with rounds a multiple of their count).
    spin=False turns off ONNX Runtime's spinning of idle intra-op threads (session.intra_op.allow_spinning=0; on by
    default): the encoder's and the decoder's sessions each keep a thread pool, and with 2 cores a pool spinning
    after its run competes with the other session and with transformers' Python (measured: greedy generate() of
    the Marian shape 1.09 s with spinning, 0.73 s without, on either folder)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoModelForSeq2SeqLM

    torch.set_num_threads(threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    models = {name: ORTModelForSeq2SeqLM.from_pretrained(f, use_cache=True, session_options=so)
              for name, f in folders.items()}
    models["transformers (torch)"] = AutoModelForSeq2SeqLM.from_pretrained(ckpt).eval()
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, vocab - 1, size=(DECODE_BATCH, DECODE_PROMPT)).astype(np.int64))
    mask = torch.ones_like(ids)
    names = list(models)
    orders = balanced_orders(len(names))
    raw: dict = {}
    for beams in (1, 4):
        times: dict[str, list[float]] = {k: [] for k in models}
        cpu: dict[str, list[float]] = {k: [] for k in models}
        for m in models.values():  # warm-up (first-run allocations, prepacking)
            with torch.no_grad():
                m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, num_beams=beams, do_sample=False)
        for r in range(repeat):
            for name in (names[i] for i in orders[r % len(orders)]):
                m = models[name]
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.no_grad():
                    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=DECODE_NEW, min_new_tokens=DECODE_NEW,
                               num_beams=beams, do_sample=False)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        raw[beams] = (times, cpu)
    return raw


def decoder_step_time(folders: dict[str, Path], repeat: int, batch: int, vocab: int) -> dict:
    """CPU time of one decoder step with a cache (use_cache_branch true, 15 tokens of past, batch rows, 32 encoder
    tokens), ONNX Runtime alone: 1 intra-op thread, so the step runs on the calling thread and its thread CPU time
    is little disturbed by other processes. Fed as optimum feeds it (the cross-attention cache from the first step).
    Folders run in balanced_orders(), loaded in both orders (in_both_load_orders); per folder the median and
    min-max, and its paired ratio against the optimum folder (paired_spread())."""
    runs = in_both_load_orders(step_rounds, folders, repeat, batch=batch, vocab=vocab)
    times = {name: sum((r[name] for r in runs), []) for name in folders}
    base = times["optimum folder"]
    return {name: {"step_ms": spread([t * 1e3 for t in ts]),
                   "speed_vs_optimum": paired_spread(base, ts)}
            for name, ts in times.items()}


def step_rounds(folders: dict[str, Path], repeat: int, batch: int, vocab: int) -> dict[str, list[float]]:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ids = np.random.default_rng(0).integers(1, vocab - 1, size=(batch, 32)).astype(np.int64)
    mask = np.ones_like(ids)
    state = {}
    for name, f in folders.items():
        enc = ort.InferenceSession(str(f / "encoder_model.onnx"), so)
        dec = ort.InferenceSession(str(f / "decoder_model_merged.onnx"), so)
        hidden = enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        inputs = {i.name: i for i in dec.get_inputs()}
        outputs = [o.name for o in dec.get_outputs()]
        past, token = None, np.zeros((batch, 1), np.int64)
        for _ in range(16):
            feed = {"input_ids": token, "encoder_hidden_states": hidden, "encoder_attention_mask": mask,
                    "use_cache_branch": np.array([past is not None])}
            for n, i in inputs.items():
                if n.startswith("past_key_values."):
                    feed[n] = (past[n.replace("past_key_values.", "present.")] if past is not None
                               else np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32))
            res = dict(zip(outputs, dec.run(None, feed)))
            if past is not None:
                res.update({n: past[n] for n in outputs if ".encoder." in n})
            past, token = res, res["logits"][:, -1:].argmax(-1)
        state[name] = (dec, feed)
    times: dict[str, list[float]] = {k: [] for k in folders}
    names = list(folders)
    orders = balanced_orders(len(names))
    for r in range(repeat):
        for name in (names[i] for i in orders[r % len(orders)]):
            dec, feed = state[name]
            t0 = time.thread_time()
            dec.run(None, feed)
            times[name].append(time.thread_time() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("marian", "t5"), default="marian",
                    help="marian: opus-mt-en-de shape (default); t5: t5-base shape (d_model 768, 12+12 layers, "
                         "12 heads, ffn 3072, vocab 32128)")
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--ffn", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny model, every stage once, 2 decode rounds (CI: proves the script runs)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "work")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--trex", type=Path, default=Path(os.environ.get("TREX_BIN", REPO / "build" / "trex")))
    ap.add_argument("--optimum-cli", default=str(Path(sys.executable).parent / "optimum-cli"))
    ap.add_argument("--skip-optimum", action="store_true")
    ap.add_argument("--decode-repeat", type=int, default=2)
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--decode-threads", type=int, default=2,
                    help="ONNX Runtime intra-op and torch threads of the generate() runs (1: CPU-time ratios are "
                         "meaningful on a loaded machine)")
    ap.add_argument("--decode-spin", choices=("on", "off", "both"), default="both",
                    help="ONNX Runtime's spinning of idle intra-op threads in the generate() runs: on (its default), "
                         "off, or both, one table each (default)")
    ap.add_argument("--decode-control", action="store_true",
                    help="also run trex's folder a second time (hard-linked copy) in the generate() rounds: its "
                         "ratio to the first copy shows the bench's noise floor")
    ap.add_argument("--step-repeat", type=int, default=40, help="runs of the decoder-step timing per folder")
    args = ap.parse_args()
    shape = {"marian": (512, 6, 8, 2048, 58101), "t5": (768, 12, 12, 3072, 32128)}[args.arch]
    for key, default in zip(("d_model", "layers", "heads", "ffn", "vocab"), shape):
        if getattr(args, key) is None:
            setattr(args, key, default)
    step_batches = (8, 32)
    if args.smoke:
        # Every stage once on a tiny model: optimum-cli's export and the generate() and step rounds when optimum is
        # installed (two rounds, spinning on, the control folder), so none of them rots between real runs.
        args.d_model, args.layers, args.heads, args.ffn, args.vocab = 32, 2, 4, 64, 120
        args.repeat, args.decode_repeat, args.decode_spin, args.decode_control = 1, 2, "on", True
        args.step_repeat, step_batches = 2, (8,)
        args.skip_optimum = args.skip_optimum or not Path(args.optimum_cli).exists()
        args.work = Path(tempfile.mkdtemp(prefix="seq2seq-bench-smoke-"))

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not args.trex.exists():
        sys.exit(f"trex binary not found at {args.trex}")
    try:
        build = build_t5 if args.arch == "t5" else build_marian
        ckpt = build(args.work, args.d_model, args.layers, args.heads, args.ffn, args.vocab).resolve()
        weights = ckpt / "model.safetensors"
        wbytes = weights.stat().st_size
        out_root = args.work / "out"
        tools = {
            "trex --no-check": lambda o: [str(args.trex), "export", "--model", str(ckpt), "--no-check", str(o)],
            "trex": lambda o: [str(args.trex), "export", "--model", str(ckpt), str(o)],
        }
        if not args.skip_optimum:
            tools["optimum-cli"] = lambda o: [args.optimum_cli, "export", "onnx", "--model", str(ckpt), "--task",
                                              "text2text-generation-with-past", str(o)]
        with open(weights, "rb") as f:  # warm the page cache once for every tool
            while f.read(1 << 24):
                pass
        runs: dict[str, list[dict]] = {k: [] for k in tools}
        shutil.rmtree(out_root, ignore_errors=True)
        for i in range(args.repeat):
            for name, make_cmd in tools.items():
                out = out_root / name.replace(" ", "_")
                shutil.rmtree(out, ignore_errors=True)
                r = measure(make_cmd(out), env)
                r["folder_bytes"] = folder_model_bytes(out)
                runs[name].append(r)
                print(f"[{i + 1}/{args.repeat}] {name:<16} {r['wall_s']:8.2f} s  "
                      f"{r['maxrss_bytes'] / 2**20:9.1f} MB", file=sys.stderr, flush=True)
        steps = None
        decodes: dict[str, dict] = {}
        if not args.skip_optimum and not args.skip_decode:
            print("decode speed ...", file=sys.stderr, flush=True)
            folders = {"trex folder": out_root / "trex", "optimum folder": out_root / "optimum-cli"}
            gen_folders = dict(folders)
            if args.decode_control:
                again = out_root / "trex-again"
                shutil.rmtree(again, ignore_errors=True)
                shutil.copytree(folders["trex folder"], again, copy_function=link_or_copy)
                gen_folders[CONTROL] = again
            for spin in ("on", "off"):
                if args.decode_spin in (spin, "both"):
                    decodes[spin] = decode_speed(gen_folders, ckpt, args.decode_repeat, args.vocab,
                                                 args.decode_threads, spin == "on")
            steps = {b: decoder_step_time(folders, args.step_repeat, b, args.vocab) for b in step_batches}
        shutil.rmtree(out_root, ignore_errors=True)

        summary = {name: {"wall_s": statistics.median(r["wall_s"] for r in rs),
                          "peak_rss_bytes": statistics.median(r["maxrss_bytes"] for r in rs),
                          "folder_bytes": rs[-1]["folder_bytes"], "runs": rs}
                   for name, rs in runs.items()}
        opt = summary.get("optimum-cli", {}).get("wall_s")
        print(f"\nCheckpoint: {args.arch} d_model={args.d_model} layers={args.layers}+{args.layers} heads={args.heads} "
              f"ffn={args.ffn} vocab={args.vocab}, model.safetensors {wbytes / 2**20:.1f} MB; median of "
              f"{args.repeat} run(s); {os.cpu_count()} CPU(s)\n")
        print("| tool | wall s | peak RSS MB | RSS / weights | model files MB | files / checkpoint | speedup vs optimum |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, s in summary.items():
            sp = f"{opt / s['wall_s']:.1f}x" if opt else "n/a"
            print(f"| {name} | {s['wall_s']:.2f} | {s['peak_rss_bytes'] / 2**20:.1f} | "
                  f"{s['peak_rss_bytes'] / wbytes:.2f} | {s['folder_bytes'] / 2**20:.1f} | "
                  f"{s['folder_bytes'] / wbytes:.2f} | {sp} |")
        def ratio(d):
            return f"{d['median']:.2f}x [{d['ci95'][0]:.2f}-{d['ci95'][1]:.2f}] ({d['min']:.2f}-{d['max']:.2f})"

        for spin, decode in decodes.items():
            print(f"\n| runtime (generate, batch {DECODE_BATCH}, {DECODE_NEW} new tokens; {args.decode_threads} thread(s), ONNX Runtime "
                  f"spinning {spin}, {args.decode_repeat} interleaved rounds) | greedy tok/s | beam 4 tok/s | greedy vs "
                  "optimum folder, paired median [95% CI] (min-max) | beam 4 vs optimum folder | same on CPU time: greedy | "
                  "beam 4 |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for name, d in decode.items():
                print(f"| {name} | {d['beam1_tokens_per_s']:.1f} | {d['beam4_tokens_per_s']:.1f} | "
                      f"{ratio(d['beam1_vs_optimum'])} | {ratio(d['beam4_vs_optimum'])} | "
                      f"{ratio(d['beam1_cpu_vs_optimum'])} | {ratio(d['beam4_cpu_vs_optimum'])} |")
            if CONTROL in decode:
                c = decode[CONTROL]
                print(f"\nNoise floor ({CONTROL} vs trex folder, the same files): greedy {ratio(c['beam1_vs_trex'])}, "
                      f"beam 4 {ratio(c['beam4_vs_trex'])}")
        if steps:
            print(f"\n| decoder step with a cache (ONNX Runtime, 1 thread, CPU ms; {args.step_repeat} interleaved runs) | " +
                  " | ".join(f"batch {b} ms" for b in steps) + " | " +
                  " | ".join(f"speed vs optimum folder, batch {b}" for b in steps) + " |")
            print("|---|" + "---:|" * (2 * len(steps)))
            for name in steps[8]:
                print(f"| {name} | " + " | ".join(f"{steps[b][name]['step_ms']['median']:.2f}" for b in steps) + " | " +
                      " | ".join(ratio(steps[b][name]["speed_vs_optimum"]) for b in steps) + " |")
        if not args.smoke:
            args.results.mkdir(parents=True, exist_ok=True)
            out_json = args.results / f"seq2seq_bench-{args.arch}-D{args.d_model}-L{args.layers}.json"
            out_json.write_text(json.dumps({
                "checkpoint": {"arch": args.arch, "d_model": args.d_model, "layers": args.layers, "heads": args.heads, "ffn": args.ffn,
                               "vocab": args.vocab, "weights_bytes": wbytes},
                "repeat": args.repeat, "cpus": os.cpu_count(), "results": summary, "decode": decodes.get("on"),
                "decode_no_spin": decodes.get("off"),
                "decoder_step": steps, "decode_threads": args.decode_threads, "load_average": os.getloadavg(),
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
            print(f"\nJSON: {out_json}", file=sys.stderr)
    finally:
        if args.smoke:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
