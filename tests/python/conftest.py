"""Shared pytest fixtures for the trex suite; prints a per-case numeric summary at session end."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

import fixtures

_DIFFS_KEY = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_DIFFS_KEY] = []
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def trex_bin():
    if not (fixtures.TREX_BIN.is_file() and os.access(fixtures.TREX_BIN, os.X_OK)):
        pytest.fail(f"trex binary not found at {fixtures.TREX_BIN} (build it, or set TREX_BIN)")
    return fixtures.TREX_BIN


@pytest.fixture
def record_diff(request):
    """record_diff(case_id, output_name, max_abs_diff, tol): collected for the terminal summary."""
    store = request.config.stash[_DIFFS_KEY]

    def _record(case_id: str, output: str, diff: float, tol: float):
        store.append((case_id, output, diff, tol))
        print(f"  {case_id:<70} {output:<18} max|diff| = {diff:.3e}  (tol {tol:g})")

    return _record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(_DIFFS_KEY, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("trex vs transformers: max abs diff per case and output")
    w = max(len(r[0]) for r in rows)
    tr.write_line(f"{'case':<{w}}  {'output':<18} {'max|diff|':>10}  {'tol':>7}  ok")
    for case_id, out, diff, tol in rows:
        ok = "yes" if diff <= tol else "NO"
        tr.write_line(f"{case_id:<{w}}  {out:<18} {diff:>10.3e}  {tol:>7.0e}  {ok}")
