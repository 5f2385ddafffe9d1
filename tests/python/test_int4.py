"""`trex quantize --bits 4`: com.microsoft.MatMulNBits files in ONNX Runtime.

- A one-MatMul model: ORT's output equals A @ (the weight trex's packing stands for), for block sizes 16..256,
  symmetric and asymmetric, K not a multiple of the block; the weight is within the block bound of fp32.
- all-MiniLM-L6-v2: sentence-embedding cosine vs fp32 on a multilingual corpus of this machine's text
  (tests/python/int4_eval.py), beside ONNX Runtime's own MatMulNBitsQuantizer (round-to-nearest, same block).
- A tiny random llama exported for text generation, quantized: logits / greedy agreement vs fp32 (reported).
- Quantized embeddings (GatherBlockQuantized) for int4 and int8, and --no-quantize-embeddings.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import decoder_fixtures as dfx
import fixtures as fx
import int4_eval


def quantize(src: Path, dst: Path, *extra) -> dict:
    report = dst.with_suffix(".json")
    r = fx.run_trex("quantize", src, dst, "--report", report, *extra)
    assert r.returncode == 0, f"trex quantize failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(report.read_text())


def matmul_model(path: Path, k: int, n: int, seed: int = 0) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 0.05, (k, n)).astype(np.float32)
    w[3, :] = 0.4  # an outlier row
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return w


def dequantized_weight(path: Path) -> tuple[np.ndarray, dict]:
    weights = int4_eval.dequantized_weights(path)
    assert len(weights) == 1
    return next(iter(weights.values()))


@pytest.mark.parametrize("block", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("mode", ["--symmetric", "--asymmetric"])
def test_matmulnbits_file_runs_in_ort(trex_bin, tmp_path, block, mode):
    k, n = 300, 48  # K is not a multiple of any block size
    src, dst = tmp_path / "mm.onnx", tmp_path / "mm4.onnx"
    w = matmul_model(src, k, n)
    rep = quantize(src, dst, "--bits", "4", "--block-size", str(block), mode, "--accuracy-level", "0")
    assert rep["mode"]["bits"] == 4 and len(rep["quantized"]) == 1
    deq, attrs = dequantized_weight(dst)
    assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (k, n, 4, block)
    # The bound per block: the search clips the range by at most 30 % (ratios 1.0 .. 0.7), so a value is off by at
    # most that clipping plus one round-to-nearest step of the block (the exact per-block bounds: test_quantize_int4.cc).
    err = np.abs(deq - w)
    for c in range(n):
        for b0 in range(0, k, block):
            blk = w[b0:b0 + block, c]
            step = np.abs(blk).max() / 7 if mode == "--symmetric" else (blk.max() - min(blk.min(), 0)) / 15
            assert err[b0:b0 + block, c].max() <= 0.3 * np.abs(blk).max() + step + 1e-7
    x = np.random.default_rng(1).normal(0, 1, (4, k)).astype(np.float32)
    y = fx.run_ort(dst, {"x": x})["y"]
    np.testing.assert_allclose(y, x @ deq, rtol=1e-4, atol=1e-4)
    cos = (y * (x @ w)).sum() / np.linalg.norm(y) / np.linalg.norm(x @ w)
    assert cos > 0.97  # 4-bit weights with an outlier row: ~0.985 at block 128


def test_bad_int4_options(trex_bin, tmp_path):
    src = tmp_path / "mm.onnx"
    matmul_model(src, 64, 32)
    for extra in (["--block-size", "24"], ["--block-size", "512"], ["--bits", "3"],
                  ["--symmetric", "--asymmetric"], ["--accuracy-level", "9"]):
        args = ["--bits", "4"] + extra if "--bits" not in extra else extra
        r = fx.run_trex("quantize", src, tmp_path / "o.onnx", *args)
        assert r.returncode != 0, f"{extra}: accepted\n{r.stdout}"


def test_rtn_and_search_weight_error(trex_bin, tmp_path):
    """The clipping search lowers the weight MSE vs round-to-nearest (same block, same file size)."""
    src = tmp_path / "mm.onnx"
    w = matmul_model(src, 512, 128, seed=5)
    mse = {}
    for tag, extra in (("rtn", ["--rtn"]), ("search", [])):
        dst = tmp_path / f"{tag}.onnx"
        quantize(src, dst, "--bits", "4", "--block-size", "32", "--no-check", *extra)
        mse[tag] = float(((dequantized_weight(dst)[0] - w) ** 2).mean())
        size = dst.stat().st_size
        mse[tag + "_size"] = size
    assert mse["search"] < mse["rtn"], mse
    assert mse["search_size"] == mse["rtn_size"]
    print(f"weight MSE rtn {mse['rtn']:.3e} search {mse['search']:.3e}")


# ---------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 on the multilingual corpus.

@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory):
    from transformers import AutoTokenizer

    d = fx.minilm_dir()
    tmp = tmp_path_factory.mktemp("minilm_int4")
    texts = int4_eval.corpus(480)
    assert len(texts) >= 400
    tok = AutoTokenizer.from_pretrained(str(d))
    fp32 = tmp / "fp32.onnx"
    r = fx.export(d, fp32, "--no-check")
    assert r.returncode == 0, r.stderr
    ref = int4_eval.embeddings(fp32, tok, texts)

    def cosines(path: Path) -> np.ndarray:
        return (int4_eval.embeddings(path, tok, texts) * ref).sum(1)

    return fp32, tmp, cosines


@pytest.mark.real_model
def test_minilm_int4_vs_ort_rtn(trex_bin, minilm_runs, record_diff):
    """trex's default int4 (block 32, asymmetric, GPTQ + clipping search, int8 embeddings) vs ORT's RTN."""
    fp32, tmp, cosines = minilm_runs
    ours = tmp / "trex_int4.onnx"
    rep = quantize(fp32, ours, "--bits", "4", "--block-size", "32")
    c_ours, mib_ours = cosines(ours), int4_eval.file_mib(ours)
    print(f"\n  trex int4 block 32 asym: mean {c_ours.mean():.4f} worst {c_ours.min():.4f} {mib_ours:.1f} MiB")
    peers = {}
    for sym in (True, False):
        peer = tmp / f"ort_rtn_int4_{sym}.onnx"
        int4_eval.ort_int4(fp32, peer, 32, sym)
        peers[sym] = cosines(peer)
        print(f"  ORT RTN  block 32 {'sym ' if sym else 'asym'}: mean {peers[sym].mean():.4f} worst "
              f"{peers[sym].min():.4f} {int4_eval.file_mib(peer):.1f} MiB")
    record_diff("all-MiniLM-L6-v2 int4 (480 multilingual lines)", "1 - mean cosine", float(1 - c_ours.mean()), 0.02)
    assert rep["mode"]["int4"]["gptq"] and not rep["mode"]["int4"]["symmetric"]
    assert rep["embeddings"], "the word embedding table was not quantized"
    for sym, c_peer in peers.items():
        assert c_ours.min() > c_peer.min(), f"worst line {c_ours.min():.4f} vs ORT RTN (sym={sym}) {c_peer.min():.4f}"
        assert c_ours.mean() > c_peer.mean()
    assert mib_ours <= 25.0, f"{mib_ours:.1f} MiB"
    assert c_ours.mean() >= 0.98, f"mean cosine {c_ours.mean():.4f}"


@pytest.mark.real_model
def test_minilm_int8_embeddings_size(trex_bin, minilm_runs):
    """The int8 file with its embedding table quantized is not larger than quantize_dynamic's."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, tmp, cosines = minilm_runs
    ours, peer, plain = tmp / "trex_int8.onnx", tmp / "qd_int8.onnx", tmp / "trex_int8_noemb.onnx"
    quantize(fp32, ours)
    quantize(fp32, plain, "--no-quantize-embeddings")
    quantize_dynamic(str(fp32), str(peer), weight_type=QuantType.QInt8, per_channel=True)
    c = cosines(ours)
    print(f"\n  trex int8: {int4_eval.file_mib(ours):.1f} MiB (without embeddings {int4_eval.file_mib(plain):.1f}),"
          f" quantize_dynamic {int4_eval.file_mib(peer):.1f} MiB; cosine mean {c.mean():.4f} worst {c.min():.4f}")
    assert int4_eval.file_mib(ours) <= int4_eval.file_mib(peer)
    assert int4_eval.file_mib(plain) > int4_eval.file_mib(ours) + 30
    assert c.mean() >= 0.99


# ---------------------------------------------------------------------------------------------------------
# A decoder: tiny random llama, exported for text generation, then quantized to int4.

@pytest.mark.parametrize("block", [16, 32])
def test_decoder_int4_runs_and_reports_agreement(trex_bin, tmp_path, record_diff, block):
    import onnx

    ckpt = dfx.decoder_checkpoint("llama")
    out = tmp_path / "out"
    r = fx.run_trex("export", "--model", ckpt, "--pipeline", "text-generation", out)
    assert r.returncode == 0, r.stderr
    q = out / "model-int4.onnx"
    rep = quantize(out / "model.onnx", q, "--bits", "4", "--block-size", str(block), "--no-check",
                   "--embedding-bits", "4")
    assert rep["quantized"], rep["skipped"]
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "MatMulNBits" in ops
    ids, mask = dfx.left_padded_batch()
    fp, qd = dfx.OnnxDecoder(out / "model.onnx"), dfx.OnnxDecoder(q)
    fp.reset(ids.shape[0])
    qd.reset(ids.shape[0])
    a, b = fp.step(ids, mask), qd.step(ids, mask)
    valid = mask.astype(bool)
    top1 = float((a[valid].argmax(-1) == b[valid].argmax(-1)).mean())
    cos = float(((a[valid] * b[valid]).sum(-1) / np.linalg.norm(a[valid], axis=-1) /
                 np.linalg.norm(b[valid], axis=-1)).mean())
    greedy_fp = dfx.OnnxDecoder(out / "model.onnx").greedy(ids, mask, 16)
    greedy_q = dfx.OnnxDecoder(q).greedy(ids, mask, 16)
    greedy = float((greedy_fp == greedy_q).mean())
    print(f"\n  llama int4 block {block}: prefill logits cosine {cos:.4f}, top-1 agreement {top1:.3f}, "
          f"greedy token agreement {greedy:.3f} ({len(rep['quantized'])} MatMulNBits)")
    record_diff(f"decoder-llama int4 block {block} (random weights)", "1 - top1 agreement", 1 - top1, 1.0)
    assert 0.0 <= top1 <= 1.0 and np.isfinite(cos)
