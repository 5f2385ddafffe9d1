"""Decode steps of ONNX decoder files in plain ONNX Runtime, per op type (issue 11: where a decode step goes).

  .venv-genai/bin/python bench/_ort_decode_profile.py A/model.onnx B/model-quantized.onnx [--profile]
      [--steps 16] [--rounds 2] [--threads 2]

Each file gets a session (CPU, --threads intra-op threads, ORT_ENABLE_ALL); per round: a 128-token random prompt
(token ids below the smallest genai_config.json vocab_size; prefill, fp32 cache from empty), then --steps greedy decode steps, the files' steps alternating (A, B, A, B...)
and timed with time.perf_counter(). Prints each file's median step time and the median paired ratio (first file
/ last file). --profile: ONNX Runtime's profiler (enable_profiling), kernel time per op type per decode step
(prefill runs left out) and the model_run time. Inputs by name: input_ids, attention_mask, position_ids (when
the graph has it), past_key_values.N.key/value [1, kv_heads, past, head_dim] read off the graph's inputs (symbolic ones from
the genai_config.json beside the file).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort


class Decoder:
    def __init__(self, path: str, threads: int, profile_dir: str | None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = f"{profile_dir}/{abs(hash(path))}"
        self.path = path
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.pasts = [n for n in self.inputs if n.startswith("past_key_values.")]

    def config_dim(self, key, section="decoder"):
        # A symbolic cache dimension (the builder names the head size kv_cache_dim), the vocabulary: the
        # genai_config.json beside the file.
        cfg = json.load(open(os.path.join(os.path.dirname(os.path.abspath(self.path)), "genai_config.json")))
        m = cfg["model"]
        return int(m[key] if section == "model" else m["decoder"][key])

    def feeds(self, ids, start):
        total = start + len(ids)
        f = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, total), np.int64)}
        if "position_ids" in self.inputs:
            f["position_ids"] = np.arange(start, total, dtype=np.int64)[None]
        f.update(zip(self.pasts, self.cache))
        return f

    def prefill(self, prompt):
        self.cache = []
        for n in self.pasts:
            shape = self.inputs[n].shape
            heads, dim = (d if isinstance(d, int) else self.config_dim(k) for d, k in
                          ((shape[1], "num_key_value_heads"), (shape[3], "head_size")))
            self.cache.append(np.zeros((1, heads, 0, dim), np.float32))
        self._run(list(prompt), 0)

    def _run(self, ids, start):
        out = self.sess.run(None, self.feeds(ids, start))
        names = [o.name for o in self.sess.get_outputs()]
        self.cache = [out[names.index(n.replace("past_key_values.", "present."))] for n in self.pasts]
        self.pos = start + len(ids)
        self.token = int(out[names.index("logits")][0, -1].argmax())

    def step(self):
        t0 = time.perf_counter()
        self._run([self.token], self.pos)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    prof_dir = tempfile.mkdtemp(prefix="ort-decode-profile-") if a.profile else None
    decoders = [Decoder(p, a.threads, prof_dir) for p in a.models]
    rng = np.random.default_rng(0)
    vocab = min(d.config_dim("vocab_size", "model") for d in decoders)
    prompt = [1] + [int(t) for t in rng.integers(3, vocab, size=a.prompt_len - 1)]
    times = {d.path: [] for d in decoders}
    for _ in range(a.rounds):
        for d in decoders:
            d.prefill(prompt)
        for _ in range(a.steps):
            for d in decoders:
                times[d.path].append(d.step())
    for d in decoders:
        t = times[d.path]
        print(f"{d.path}: decode step median {1e3 * statistics.median(t):.1f} ms "
              f"(min {1e3 * min(t):.1f}, max {1e3 * max(t):.1f}), n={len(t)}")
    first, last = times[decoders[0].path], times[decoders[-1].path]
    r = [x / y for x, y in zip(first, last)]
    print(f"paired step-time ratio first/last: median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f})")
    if not a.profile:
        return 0
    for d in decoders:
        events = json.load(open(d.sess.end_profiling()))
        runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
        decode_runs = [r for i, r in enumerate(runs) if i % (a.steps + 1) != 0]  # each round: prefill, then steps
        spans = [(r["ts"], r["ts"] + r["dur"]) for r in decode_runs]
        total, calls = collections.Counter(), collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(s <= e["ts"] <= t for s, t in spans):
                total[e["args"]["op_name"]] += e["dur"]
                calls[e["args"]["op_name"]] += 1
        n = len(decode_runs)
        print(f"== {d.path}: {n} decode steps, model_run {sum(r['dur'] for r in decode_runs) / n / 1e3:.2f} ms, "
              f"kernels {sum(total.values()) / n / 1e3:.2f} ms per step")
        for op, us in total.most_common():
            print(f"   {op:36s} {us / n / 1e3:8.3f} ms/step {calls[op] / n:6.1f} calls/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
