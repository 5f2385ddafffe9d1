"""`trex bench` (issue 11): latency of any ONNX file in ONNX Runtime, median of repeated runs with its spread.
No timed assertions: the tests check what is measured (the shapes fed, the number of runs, the statistics
computed from the runs it reports) and that foreign files and bad options are handled."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fixtures as fx


def bench_json(*args):
    r = fx.run_trex("bench", "--json", *map(str, args))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bert.onnx"
    fx.export(fx.checkpoint("bert", "feature-extraction"), out, "--optimize", "--no-check")
    return out


def check_stats(res, repeats):
    runs = np.array(res["runs_ms"])
    assert len(runs) == repeats and (runs > 0).all()
    assert res["median_ms"] == pytest.approx(np.percentile(runs, 50), rel=1e-9)
    assert res["p10_ms"] == pytest.approx(np.percentile(runs, 10), rel=1e-9)
    assert res["p90_ms"] == pytest.approx(np.percentile(runs, 90), rel=1e-9)
    assert res["min_ms"] == pytest.approx(runs.min()) and res["max_ms"] == pytest.approx(runs.max())
    assert res["sequences_per_s"] == pytest.approx(1000 * res["batch"] / res["median_ms"], rel=1e-9)
    assert res["tokens_per_s"] == pytest.approx(res["sequences_per_s"] * res["seq"], rel=1e-9)


def test_bench_trex_models(bert):
    opt = bert.with_name("bert-optimized.onnx")
    res = bench_json(bert, opt, "--batch", 3, "--seq", 24, "--repeats", 7, "--warmup", 1, "--threads", 1)
    assert [Path(r["model"]) for r in res] == [bert, opt]
    for r in res:
        check_stats(r, 7)
        assert (r["batch"], r["seq"], r["threads"]) == (3, 24, 1)
        assert "input_ids int64 [3, 24]" in r["inputs"] and "attention_mask int64 [3, 24]" in r["inputs"]
    # Interleaved: speed-ups over the first model paired run by run.
    ratios = np.array(res[0]["runs_ms"]) / np.array(res[1]["runs_ms"])
    assert res[1]["speedup_vs_first"]["median"] == pytest.approx(np.median(ratios), rel=1e-9)
    assert res[1]["speedup_vs_first"]["min"] == pytest.approx(ratios.min(), rel=1e-9)
    assert res[0]["speedup_vs_first"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    res = bench_json(bert, opt, "--repeats", 3, "--seq", 8, "--one-at-a-time")
    assert len(res) == 2 and all("speedup_vs_first" not in r for r in res)
    for r in res:
        check_stats(r, 3)
    # The plain table: both models, median and spread columns, every run listed.
    r = fx.run_trex("bench", str(bert), str(opt), "--repeats", "4", "--seq", "16")
    assert r.returncode == 0, r.stderr
    assert "median ms" in r.stdout and "p10-p90 ms" in r.stdout and str(opt) in r.stdout
    runs_lines = [l for l in r.stdout.splitlines() if l.startswith("runs ms")]
    assert len(runs_lines) == 2 and all(len(l.split(": ")[1].split()) == 4 for l in runs_lines)


def test_bench_decoder_with_past(tmp_path):
    out = tmp_path / "llama"
    import decoder_fixtures as dfx

    fx.export(dfx.decoder_checkpoint("llama"), out, "--no-check")
    (res,) = bench_json(out / "model.onnx", "--batch", 2, "--seq", 1, "--past", 5, "--repeats", 3)
    check_stats(res, 3)
    assert "attention_mask int64 [2, 6]" in res["inputs"]
    assert "past_key_values.0.key float [2, " in res["inputs"] and ", 5, " in res["inputs"]


def foreign_model(path: Path, rows: int = 7):
    """Another exporter's graph: symbolic dims named freely, an ids input gathered from a 7-row table (ids out of
    range make ONNX Runtime fail), a float input."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [rows, 4], np.arange(rows * 4, dtype=np.float32).ravel())
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["emb"]),
         helper.make_node("Add", ["emb", "bias"], ["out"])],
        "foreign",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["n", "len"]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["n", "len", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", "len", 4])],
        [table])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_bench_foreign_model(tmp_path):
    m = tmp_path / "foreign.onnx"
    foreign_model(m)
    for _ in range(3):  # random ids: out-of-table ids would fail at least once
        (res,) = bench_json(m, "--batch", 4, "--seq", 64, "--repeats", 3, "--warmup", 0)
        check_stats(res, 3)
    assert res["inputs"] == "tokens int64 [4, 64], bias float [4, 64, 4]"


@pytest.mark.parametrize("args, code, words", [
    (["missing.onnx"], 2, ["missing.onnx"]),
    (["MODEL", "--repeats", "0"], 1, ["--repeats"]),
    (["MODEL", "--threads", "-1"], 1, ["--threads"]),
    (["MODEL", "--batch", "1048576", "--seq", "2"], 1, ["--batch"]),
])
def test_bench_errors(tmp_path, args, code, words):
    m = tmp_path / "foreign.onnx"
    foreign_model(m)
    args = [str(m) if a == "MODEL" else str(tmp_path / a) if a.endswith(".onnx") else a for a in args]
    r = fx.run_trex("bench", *args)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: ")
    for w in words:
        assert w in lines[0]


def test_bench_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    r = fx.run_trex("bench", str(bad))
    assert r.returncode in (2, 3) and r.stderr.startswith("trex: error: ") and len(r.stderr.strip().splitlines()) == 1


def test_export_report_latency(tmp_path):
    """--report: every variant written (plain, optimized, int8) gains its latency beside its accuracy; export
    prints the table (not with --quiet)."""
    ckpt = fx.checkpoint("bert", "text-classification")
    rep = tmp_path / "r.json"
    r = fx.export(ckpt, tmp_path / "m.onnx", "--optimize", "--quantize", "--report", rep, "--latency-shape", "2,20",
                  "--latency-repeats", 4)
    j = json.loads(rep.read_text())
    for variant in ("plain", "optimized", "quantized"):
        lat = j[variant]["latency"]
        check_stats(lat, 4)
        assert Path(lat["model"]) == Path(j[variant]["model"])
        assert (lat["batch"], lat["seq"], lat["threads"]) == (2, 20, 1)
    table = r.stdout[r.stdout.index("latency (ONNX Runtime"):]
    assert "batch 2 x seq 20" in table
    rows = {l.split()[1]: l for l in table.splitlines()[2:] if len(l.split()) > 1 and l.split()[1] in
            ("plain", "optimized", "quantized")}
    assert set(rows) == {"plain", "optimized", "quantized"}
    assert "cosine" in rows["quantized"] and "max abs diff" in rows["optimized"]
    assert f"{j['quantized']['latency']['median_ms']:.3f}" in rows["quantized"]
    # --quiet: no table; --latency-repeats 0: no latency in the report.
    r = fx.export(ckpt, tmp_path / "q.onnx", "--report", tmp_path / "q.json", "--quiet", "--latency-repeats", 0)
    assert r.stdout == "" and "latency" not in json.loads((tmp_path / "q.json").read_text())["plain"]
    r = fx.run_trex("export", "--model", ckpt, "--latency-repeats", "3", tmp_path / "n.onnx")
    assert r.returncode == 1 and "--report" in r.stderr and not (tmp_path / "n.onnx").exists()
