"""`trex quantize`: every architecture x head quantized and compared with its fp32 export; modes, exclusions,
models from another exporter (torch.onnx, Gemm heads), external data, the real all-MiniLM-L6-v2 sentence
embeddings, and an opt-in >2 GB model (TREX_SLOW=1).

Documented bounds (docs/quantization.md), tiny random models (hidden 32), default mode (s8, per-channel):
  mean per-row cosine vs fp32 >= 0.99 for every output; classification label agreement >= 0.9 on the padded
  batch (tiny random heads have near-tied logits, so a handful of flips is expected there; the >= 99 % goal is
  measured on real models).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import fixtures as fx

COSINE_MIN = 0.99
LABEL_MIN = 0.9


def quantize(src: Path, dst: Path, *extra) -> dict:
    report = dst.with_suffix(".json")
    r = fx.run_trex("quantize", src, dst, "--report", report, *extra)
    assert r.returncode == 0, f"trex quantize failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(report.read_text())


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), 1.0)


def check_close(fp: dict, q: dict, case: str):
    assert fp.keys() == q.keys()
    for name in fp:
        assert q[name].shape == fp[name].shape
        assert np.all(np.isfinite(q[name])), f"{case} {name}: non-finite"
        cos = float(row_cosines(fp[name], q[name]).mean())
        assert cos >= COSINE_MIN, f"{case} {name}: mean cosine {cos:.4f} < {COSINE_MIN}"
        if "logits" in name and name == "logits":
            agree = float((fp[name].argmax(-1) == q[name].argmax(-1)).mean())
            assert agree >= LABEL_MIN, f"{case} {name}: label agreement {agree:.3f}"


CASES = [(mt, h) for mt in fx.MODEL_TYPES for h in fx.HEADS]


@pytest.mark.parametrize("model_type,head", CASES, ids=[f"{m}-{h}" for m, h in CASES])
def test_every_architecture_and_head(trex_bin, tmp_path, model_type, head):
    ckpt = fx.checkpoint(model_type, head)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    fx.export(ckpt, fp32, "--pipeline", head, "--no-check")
    rep = quantize(fp32, int8)
    assert rep["quantized"], "nothing was quantized"
    assert rep["weight_bytes_after"] < rep["weight_bytes_before"]
    assert rep["comparison"]["passed"]
    feeds = fx.padded_batch(model_type, pad_token_id=1 if model_type in fx.ROBERTA_FAMILY else 0)
    check_close(fx.run_ort(fp32, feeds), fx.run_ort(int8, feeds), f"{model_type}-{head}")


MODES = [
    [],
    ["--per-tensor"],
    ["--weight-type", "u8"],
    ["--weight-type", "u8", "--per-tensor", "--reduce-range"],
    ["--reduce-range"],
    ["--ops", "standard"],
    ["--ops", "standard", "--weight-type", "u8", "--per-tensor"],
]


@pytest.mark.parametrize("mode", MODES, ids=[" ".join(m) or "default" for m in MODES])
def test_modes(trex_bin, tmp_path, mode):
    ckpt = fx.checkpoint("bert", "text-classification")
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    fx.export(ckpt, fp32, "--no-check")
    rep = quantize(fp32, int8, *mode)
    import onnx

    m = onnx.load(str(int8))
    ops = {n.op_type for n in m.graph.node}
    if "standard" in mode:
        assert "MatMulInteger" in ops and "MatMulIntegerToFloat" not in ops
        assert all(o.domain in ("", "ai.onnx") for o in m.opset_import)
    else:
        assert "MatMulIntegerToFloat" in ops
    wtype = onnx.TensorProto.UINT8 if "u8" in mode else onnx.TensorProto.INT8
    qinits = [t for t in m.graph.initializer if t.name.endswith("_quantized")]
    assert qinits and all(t.data_type == wtype for t in qinits)
    scales = [t for t in m.graph.initializer if t.name.endswith(".T_scale")]
    assert scales and all(len(t.dims) == (0 if "--per-tensor" in mode else 1) for t in scales)
    assert rep["comparison"]["mean_cosine"] >= COSINE_MIN
    feeds = fx.padded_batch("bert")
    check_close(fx.run_ort(fp32, feeds), fx.run_ort(int8, feeds), "bert-cls " + " ".join(mode))


def test_exclusions(trex_bin, tmp_path):
    ckpt = fx.checkpoint("bert", "feature-extraction")
    fp32 = tmp_path / "fp32.onnx"
    fx.export(ckpt, fp32, "--no-check")
    full = quantize(fp32, tmp_path / "all.onnx")
    part = quantize(fp32, tmp_path / "part.onnx", "--exclude", "*attention*")
    assert len(part["quantized"]) < len(full["quantized"])
    assert all("attention" not in q["node"] and "attention" not in q["weight"] for q in part["quantized"])
    assert any(s["reason"] == "excluded by pattern" for s in part["skipped"])
    none = quantize(fp32, tmp_path / "none.onnx", "--exclude-op-type", "MatMul")
    assert none["quantized"] == []


def test_model_from_another_exporter_with_gemm(trex_bin, tmp_path):
    """torch.onnx.export output (Gemm with transB=1 in the pooler/classifier), quantized with no auto policy."""
    import torch

    model = fx.build_model("bert", "text-classification")
    feeds = fx.padded_batch("bert")
    fp32 = tmp_path / "torch.onnx"
    names = list(feeds)
    torch.onnx.export(model, tuple(torch.from_numpy(feeds[k]) for k in names), str(fp32), input_names=names,
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={**{k: {0: "b", 1: "s"} for k in names}, "logits": {0: "b"}})
    import onnx

    assert any(n.op_type == "Gemm" for n in onnx.load(str(fp32)).graph.node)
    rep = quantize(fp32, tmp_path / "int8.onnx", "--no-auto-policy")
    assert any(q["op_type"] == "Gemm" for q in rep["quantized"])
    check_close(fx.run_ort(fp32, feeds), fx.run_ort(tmp_path / "int8.onnx", feeds), "torch-bert-cls")


def test_external_data_in_and_out(trex_bin, tmp_path):
    ckpt = fx.checkpoint("roberta", "fill-mask")
    fp32 = tmp_path / "fp32.onnx"
    fx.export(ckpt, fp32, "--external-data", "always", "--no-check")
    assert (tmp_path / "fp32.onnx.data").exists()
    out = tmp_path / "out" / "int8.onnx"
    out.parent.mkdir()
    quantize(fp32, out, "--external-data", "always")
    assert (out.parent / "int8.onnx.data").exists()
    feeds = fx.padded_batch("roberta", pad_token_id=1)
    check_close(fx.run_ort(fp32, feeds), fx.run_ort(out, feeds), "roberta-fill-mask external")


def test_bad_input_exit_codes(trex_bin, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff not an onnx file")
    r = fx.run_trex("quantize", bad, tmp_path / "o.onnx")
    assert r.returncode == 2 and "bad.onnx" in r.stderr
    r = fx.run_trex("quantize", tmp_path / "missing.onnx", tmp_path / "o.onnx")
    assert r.returncode == 2
    r = fx.run_trex("quantize", bad, tmp_path / "o.onnx", "--weight-type", "s4")
    assert r.returncode == 1


# 60 varied sentences: lengths 1-60 words, questions, lists, numbers, code, non-English, punctuation runs.
SENTENCES = [
    "Hello!", "Yes.", "The quick brown fox jumps over the lazy dog.", "What time does the train to Berlin leave?",
    "I love this phone, but the battery life is terrible.", "Quantum computers use qubits instead of bits.",
    "Paris is the capital of France.", "The weather today is sunny with a light breeze.",
    "Can you recommend a good book about history?", "She sold seashells by the seashore.",
    "Machine learning models need lots of data to train well.", "def add(a, b): return a + b",
    "The stock market fell 3.2% on Tuesday after the announcement.", "Il fait beau aujourd'hui.",
    "Der Hund spielt im Garten.", "El gato duerme en el sofá.", "東京は日本の首都です。",
    "Please call me back at 555-0134 tomorrow morning.", "Apples, oranges, bananas, grapes and pears.",
    "Why is the sky blue?", "The meeting has been moved to Thursday at 10 am.",
    "A journey of a thousand miles begins with a single step.", "Error 404: page not found.",
    "Photosynthesis converts light energy into chemical energy.", "I can't believe it's already December!",
    "The new restaurant downtown serves amazing sushi.", "How do I reset my password?",
    "Global temperatures have risen by about 1.1 degrees Celsius since pre-industrial times.",
    "He scored the winning goal in the last minute of the match.", "Don't forget to water the plants.",
    "The mitochondria is the powerhouse of the cell.", "Our flight was delayed by three hours due to fog.",
    "This movie was a complete waste of time.", "Absolutely fantastic service, highly recommended!",
    "The committee will review the proposal next week and announce its decision by the end of the month.",
    "To be, or not to be, that is the question.", "SELECT name FROM users WHERE age > 30;",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "The cat sat on the mat.",
    "Neural networks are loosely inspired by the brain.", "My favourite colour is green.",
    "It rained all weekend, so we stayed inside and played board games.", "Is this the way to the museum?",
    "The river flows gently through the valley towards the sea.", "Wow!!! That's incredible...",
    "Electric cars are becoming more popular every year.", "Turn left at the second traffic light.",
    "The library closes at 8 pm on weekdays.", "Children were playing in the park near the old fountain.",
    "Bitcoin's price is highly volatile.", "I need two tickets for the evening show, please.",
    "The recipe calls for flour, sugar, eggs, butter and a pinch of salt.",
    "Scientists discovered a new species of frog in the rainforest.", "Our team won the championship.",
    "Please send the report by Friday.", "The painting was sold at auction for a record price.",
    "Tennis", "Mount Everest is the highest mountain above sea level.",
    "After a long day at work, all I want is a hot bath, a good meal and an early night; the kids, however, "
    "have other plans, and the dog needs a walk before it gets dark outside.",
    "Gravity keeps the planets in orbit around the sun.",
]


def sentence_embeddings(path: Path, enc: dict) -> np.ndarray:
    out = fx.run_ort(path, enc)["last_hidden_state"]
    mask = enc["attention_mask"][..., None].astype(np.float32)
    emb = (out * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def minilm_int8_cosines(tmp_path: Path, *quantize_args) -> np.ndarray:
    """Cosine of each of the 60 sentences' mean-pooled embedding, int8 vs fp32 (one padded batch)."""
    from transformers import AutoTokenizer

    d = fx.minilm_dir()
    assert len(SENTENCES) >= 50
    fp32, int8 = tmp_path / "minilm.onnx", tmp_path / "minilm_int8.onnx"
    if not fp32.exists():
        fx.export(d, fp32, "--no-check")
    quantize(fp32, int8, *quantize_args)
    tok = AutoTokenizer.from_pretrained(str(d))
    enc = {k: v.astype(np.int64) for k, v in tok(SENTENCES, padding=True, return_tensors="np").items()}
    a, b = sentence_embeddings(fp32, enc), sentence_embeddings(int8, enc)
    return (a * b).sum(1)


@pytest.mark.real_model
def test_all_minilm_every_sentence_goal(trex_bin, tmp_path, record_diff):
    """Issue 11's goal: every sentence >= 0.99, in one padded batch of 60 (the accurate int8 form: fp32 outlier
    channels + per-row scales of LayerNorm outputs; docs/quantization.md)."""
    cos = minilm_int8_cosines(tmp_path, "--outlier-channels", "2", "--row-scales", "normalized")
    record_diff("all-MiniLM-L6-v2 int8 sentence embeddings", "1 - min cosine", float(1 - cos.min()), 0.01)
    # Measured: mean 0.9991, worst 0.9961 ("Yes."). The per-tensor form before it: mean 0.9917, worst 0.9632;
    # the peer's per-channel quantize_dynamic: mean 0.9916, worst 0.963.
    assert cos.mean() >= 0.995, f"mean cosine {cos.mean():.4f} (min {cos.min():.4f})"
    assert cos.min() >= 0.99, f"min cosine {cos.min():.4f} at {SENTENCES[int(cos.argmin())]!r} (mean {cos.mean():.4f})"


@pytest.mark.real_model
def test_all_minilm_per_tensor_form(trex_bin, tmp_path):
    """The default per-tensor form (`--outlier-channels 0 --row-scales none`): within its bounds, and below the goal
    the accurate form reaches (so the goal test above tells the two forms apart)."""
    cos = minilm_int8_cosines(tmp_path)
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f} (min {cos.min():.4f})"
    assert 0.96 <= cos.min() < 0.99, f"min cosine {cos.min():.4f} (mean {cos.mean():.4f})"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TREX_SLOW") != "1", reason="set TREX_SLOW=1 for the >2 GB model")
def test_above_two_gigabytes(trex_bin, tmp_path):
    """A synthetic 2.25 GB MatMul chain written by onnx with external data, quantized, and run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = 4096
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(36):  # 36 x 64 MiB
        w = (rng.standard_normal((k, k), dtype=np.float32) * (1.0 / np.sqrt(k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        x = f"y{i}"
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["b", k])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10  # onnx 1.19 writes IR 12, above what onnxruntime 1.23 loads
    src = tmp_path / "big.onnx"
    onnx.save_model(m, str(src), save_as_external_data=True, location="big.onnx.data")
    del m, inits, g
    rep = quantize(src, tmp_path / "big_int8.onnx", "--batch", "1", "--seq", "1", "--samples", "1")
    assert len(rep["quantized"]) == 36
    assert rep["comparison"]["mean_cosine"] >= 0.98


# `trex export --quantize`: the int8 variant is written beside the float model(s); with --optimize it is made
# from the fused graph, whose Attention weights become QAttention's.
EXPORT_CASES = [("bert", "feature-extraction"), ("roberta", "text-classification"), ("distilbert", "fill-mask"),
                ("albert", "question-answering"), ("electra", "token-classification")]


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
@pytest.mark.parametrize("model_type,head", EXPORT_CASES, ids=[f"{m}-{h}" for m, h in EXPORT_CASES])
def test_export_quantize(trex_bin, tmp_path, model_type, head, optimize):
    import onnx

    ckpt = fx.checkpoint(model_type, head)
    out = tmp_path / "model.onnx"
    extra = ["--optimize"] if optimize else []
    report = tmp_path / "report.json"
    r = fx.export(ckpt, out, "--pipeline", head, "--quantize", "--report", report, *extra)
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert rep["pipeline"] == head and rep["load_check"]["ok"]
    assert ("optimized" in rep) == optimize
    if optimize:
        assert rep["optimized"]["vs_plain"]["ok"] and all(o["max_abs_diff"] <= 1e-4 for o in rep["optimized"]["vs_plain"]["outputs"])
    assert rep["quantized"]["layers_int8"] > 0 and rep["quantized"]["vs_fp32"]["mean_cosine"] >= COSINE_MIN
    assert rep["quantized"]["bits"] == 8 and rep["quantized"]["layers_quantized"] == rep["quantized"]["layers_int8"]
    q = tmp_path / "model-quantized.onnx"
    assert q.exists() and (tmp_path / "model-optimized.onnx").exists() == optimize
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "MatMulIntegerToFloat" in ops
    if optimize:
        assert "QAttention" in ops and "Attention" not in ops
    feeds = fx.padded_batch(model_type, pad_token_id=1 if model_type in fx.ROBERTA_FAMILY else 0)
    ref = fx.run_oracle(ckpt, head, feeds)  # transformers fp32
    got = fx.run_ort(q, feeds)
    assert set(got) == set(ref) & set(got)
    for name, value in got.items():
        cos = float(row_cosines(ref[name], value).mean())
        assert cos >= COSINE_MIN, f"{model_type}-{head} {name}: int8 mean cosine vs transformers {cos:.4f}"


@pytest.mark.real_model
@pytest.mark.parametrize("accurate", [False, True], ids=["default", "int8-accurate"])
def test_all_minilm_optimized_int8_export_size_and_accuracy(trex_bin, tmp_path, accurate):
    """`export --optimize --quantize [--int8-accurate]`: the embedding tables are quantized too (a fused
    EmbedLayerNormalization is expanded back), so the int8 file is no larger than ONNX Runtime's quantize_dynamic
    of the same model (per-channel). Default: made from the fused graph (QAttention), the per-tensor bounds;
    --int8-accurate: made from the plain graph, every sentence >= 0.99."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoTokenizer

    d = fx.minilm_dir()
    out = tmp_path / "out"
    r = fx.run_trex("export", "--model", d, "--optimize", "--quantize", *(["--int8-accurate"] if accurate else []), out)
    assert r.returncode == 0, r.stderr
    q = out / "model-quantized.onnx"
    ops = {n.op_type for n in onnx.load(str(q), load_external_data=False).graph.node}
    assert "GatherBlockQuantized" in ops and "EmbedLayerNormalization" not in ops, ops
    assert ("QAttention" in ops) != accurate, ops
    peer = tmp_path / "peer.onnx"
    quantize_dynamic(str(out / "model.onnx"), str(peer), weight_type=QuantType.QInt8, per_channel=True)
    size = q.stat().st_size + sum(p.stat().st_size for p in out.glob("model-quantized.onnx.data"))
    assert size <= peer.stat().st_size, f"trex int8 {size} bytes > quantize_dynamic {peer.stat().st_size} bytes"
    tok = AutoTokenizer.from_pretrained(str(d))
    enc = {k: v.astype(np.int64) for k, v in tok(SENTENCES, padding=True, return_tensors="np").items()}
    a, b = sentence_embeddings(out / "model.onnx", enc), sentence_embeddings(q, enc)
    cos = (a * b).sum(1)
    if accurate:
        assert cos.mean() >= 0.995, f"mean cosine {cos.mean():.4f} (min {cos.min():.4f})"
        assert cos.min() >= 0.99, f"min cosine {cos.min():.4f} (mean {cos.mean():.4f})"
    else:
        assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f} (min {cos.min():.4f})"
        assert cos.min() >= 0.96, f"min cosine {cos.min():.4f} (mean {cos.mean():.4f})"
