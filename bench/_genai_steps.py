"""Decode steps of several model folders in onnxruntime-genai, interleaved step by step in one process.

Run with the genai venv (.venv-genai/bin/python); bench/decoder_int4_bench.py --interleave steps drives it.
Every folder gets a generator over the same prompt (greedy, EOS suppressed); then, for each new token, every
generator runs one decode step, the order rotating from step to step (no folder always runs first), each step
timed with time.perf_counter(). So a burst of load from the other jobs on the machine hits the folders of one
step alike, which is what the paired ratios need. Prints one JSON object:
  {"folders": [...], "rounds": [{"<folder>": [step seconds, ...], ...}, ...], "tokens": {"<folder>": [...]}}
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="fresh generators (prefill + decode) per folder")
    a = ap.parse_args()

    import numpy as np
    import onnxruntime_genai as og

    prompt = [int(t) for t in a.prompt_ids.split(",") if t.strip()]
    if not prompt or a.new_tokens < 2 or a.rounds < 1:
        ap.error("need a prompt, --new-tokens >= 2 and --rounds >= 1")
    models = []
    for f in a.folders:
        config = og.Config(f)
        config.clear_providers()  # CPU
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
        models.append(og.Model(config))
    max_length = len(prompt) + a.new_tokens
    rounds, tokens = [], {}
    for r in range(a.rounds):
        gens = []
        for m in models:
            params = og.GeneratorParams(m)
            params.set_search_options(do_sample=False, max_length=max_length, min_length=max_length, batch_size=1)
            g = og.Generator(m, params)
            g.append_tokens(np.array([prompt], dtype=np.int32))  # prefill
            g.generate_next_token()  # the first new token (from the prefill's logits)
            gens.append(g)
        steps = {f: [] for f in a.folders}
        n = len(gens)
        for k in range(a.new_tokens - 1):
            for j in range(n):
                i = (j + k + r) % n
                t0 = time.perf_counter()
                gens[i].generate_next_token()  # one decode step (the previous token in, the next one picked)
                steps[a.folders[i]].append(time.perf_counter() - t0)
        rounds.append(steps)
        for f, g in zip(a.folders, gens):
            tokens[f] = [int(t) for t in g.get_sequence(0)][len(prompt):]
    print(json.dumps({"folders": a.folders, "rounds": rounds, "tokens": tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
