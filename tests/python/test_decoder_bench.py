"""Smoke run of bench/decoder_bench.py on a tiny Llama.

Checks that the benchmark runs end to end (exit 0, a row per tool, trex's row present even while trex cannot
export decoders) and, through it, that .venv-genai works: onnxruntime-genai's builder exports the tiny Llama
and tests/python/genai_run.py reproduces transformers' greedy tokens on that folder. No timings are checked.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fixtures

GENAI_PY = fixtures.REPO / ".venv-genai" / "bin" / "python"


def test_decoder_bench_smoke(tmp_path):
    if not GENAI_PY.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-genai missing: scripts/setup must create it")
        pytest.skip(".venv-genai missing (run scripts/setup)")
    r = subprocess.run([sys.executable, str(fixtures.REPO / "bench" / "decoder_bench.py"), "--smoke",
                        "--tools", "trex,trex-optimized,genai-fp32,optimum", "--results", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = r.stdout
    for label in ("| trex |", "| trex --optimize |", "| genai builder fp32 |", "| optimum-cli |"):
        assert label in out, out
    for folder in ("trex", "trex --optimize"):
        assert f"{folder}: greedy 32 tokens vs transformers generate(): identical" in out, out
    assert "genai builder fp32: greedy 32 tokens vs transformers generate(): identical" in out, out
    assert "| genai builder fp32 | " in out.split("## Decode", 1)[1], out
    assert list(tmp_path.glob("decoder_bench-smoke-*.json")), out
