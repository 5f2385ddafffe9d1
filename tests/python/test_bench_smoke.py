"""Every benchmark script (bench/*.py, picked up by glob) runs end to end in its --smoke mode: a tiny model, one
repetition, peers only when installed. It must exit 0 within its time budget and print its result table, so
the benchmarks cannot rot between the runs that produce the README's figures."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures as fx

BENCH = fx.REPO / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
SMOKE_SECONDS = 120  # each script aims at < 60 s on the 2-core machine; twice that before it counts as hung


def test_every_bench_script_is_covered():
    assert SCRIPTS, "no bench/*.py found"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_smoke(script: Path, trex_bin):
    env = dict(os.environ, TREX_BIN=str(trex_bin), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, env=env,
                       timeout=SMOKE_SECONDS, cwd=fx.REPO)
    took = time.perf_counter() - t0
    assert r.returncode == 0, f"{script.name} --smoke: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if r.stdout.startswith("SKIP:"):
        pytest.skip(r.stdout.strip())
    # A markdown table: a header row, its |---| rule, at least one data row.
    assert re.search(r"^\|.+\|\n\|[-:| ]+\|\n\|.+\|$", r.stdout, re.M), f"{script.name}: no table\n{r.stdout}"
    print(f"  {script.name} --smoke: {took:.1f} s")
