#!/usr/bin/env python3
"""Greedy generation with onnxruntime-genai on an exported folder; prints the generated token ids as JSON.

Run with the genai venv (onnxruntime-genai 0.18 has its own onnxruntime and must not share .venv):
  .venv-genai/bin/python tests/python/genai_run.py FOLDER --prompt-ids 1,2,3 --max-new-tokens 32
Prints one line: a JSON list of the *new* token ids (prompt excluded), e.g. [17, 4, 4, 90].
Options:
  --all            print prompt + new tokens (the full sequence) instead
  --batch N        run the prompt N times as a batch (all rows must agree; the first is printed)
  --threads N      intra-op threads for the CPU session (default: genai's own setting)
  --ignore-eos     never stop at EOS (genai's min_length = max_length), for timing
  --timing         also print a second JSON line {"prefill_s":..,"decode_s":..,"decode_tok_s":..}
  --raw            print genai's sequence as it is (see EOS below)
Greedy: do_sample=False; max_length = prompt length + max-new-tokens; generation stops early at EOS as
in transformers' generate() (genai stops at the eos_token_id of genai_config.json). genai's get_sequence()
leaves that EOS out while transformers' generate() output ends with it: the EOS (read back with
get_next_tokens) is appended so the list compares equal to transformers' new tokens; --raw does not.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--raw", action="store_true", help="genai's sequence as is (without the EOS it stopped at)")
    ap.add_argument("--ignore-eos", action="store_true", help="min_length = max_length (for timing runs)")
    a = ap.parse_args(argv)

    import numpy as np
    import onnxruntime_genai as og

    prompt = [int(t) for t in a.prompt_ids.split(",") if t.strip()]
    if not prompt:
        ap.error("--prompt-ids is empty")

    config = og.Config(a.folder)
    if a.threads:
        config.clear_providers()  # CPU
        # session_options live in genai_config.json; overlay changes them without editing the file.
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    params = og.GeneratorParams(model)
    max_length = len(prompt) + a.max_new_tokens
    search = dict(do_sample=False, max_length=max_length, batch_size=a.batch)
    if a.ignore_eos:
        search["min_length"] = max_length
    params.set_search_options(**search)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.array([prompt] * a.batch, dtype=np.int32))  # runs the prefill (computes logits)
    t1 = time.perf_counter()
    stamps = []
    stop_token = [None] * a.batch  # genai leaves the EOS out of the sequence; transformers keeps it
    lengths = [len(prompt)] * a.batch
    while not gen.is_done():
        gen.generate_next_token()  # picks a token from the current logits; from the 2nd call on, it first
        stamps.append(time.perf_counter())  # runs one decode step for the previous token
        if a.raw or a.ignore_eos:  # (no EOS possible with --ignore-eos: keep timing runs free of this)
            continue
        nxt = gen.get_next_tokens()
        for b in range(a.batch):
            n = len(gen.get_sequence(b))
            if n == lengths[b] and stop_token[b] is None:  # the row did not grow: it picked EOS
                stop_token[b] = int(nxt[b])
            lengths[b] = n

    rows = [list(map(int, gen.get_sequence(b))) for b in range(a.batch)]
    rows = [r + ([stop_token[b]] if stop_token[b] is not None else []) for b, r in enumerate(rows)]
    if any(r != rows[0] for r in rows[1:]):
        print(f"genai_run: batch rows differ: {rows}", file=sys.stderr)
        return 1
    out = rows[0] if a.all else rows[0][len(prompt):]
    print(json.dumps(out))
    if a.timing:
        # Decode rate: the steps after the first token (each one model run with one new token per row).
        steps = len(stamps) - 1
        decode_s = stamps[-1] - stamps[0] if steps > 0 else 0.0
        print(json.dumps({"prefill_s": t1 - t0, "first_token_s": stamps[0] - t0 if stamps else None,
                          "decode_steps": steps, "decode_s": decode_s,
                          "new_tokens": len(rows[0]) - len(prompt),
                          "decode_tok_s": steps * a.batch / decode_s if decode_s > 0 else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
