"""`trex export --dtype fp16` (issue 11): float16 weights and compute in standard ONNX, float32 interface, checked
against transformers (PyTorch, eager, float32) with float16 tolerances on tiny random checkpoints; bf16 refused
(ONNX Runtime's CPU provider has no bfloat16 kernels)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import decoder_fixtures as dfx
import fixtures as fx

# float16 has 11 significant bits (relative step 2^-11 ≈ 4.9e-4); measured on these models: max abs error
# 2.4e-4 to 7.6e-4 of the output's scale (float32 exports: ~1e-6), so 5e-3 leaves a 6x margin.
REL_TOL = 5e-3
MIN_COS = 0.9999


def check_graph(path):
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)  # standard ONNX, types consistent
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"}
    inits = {i.name: i.data_type for i in m.graph.initializer}
    assert sum(t == onnx.TensorProto.FLOAT16 for t in inits.values()) > len(inits) // 2
    for vi in list(m.graph.input) + list(m.graph.output):
        assert vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), vi.name
    return m


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def cosine_rows(a, b):
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)).min())


@pytest.mark.parametrize("model_type, head", [("bert", "feature-extraction"), ("bert", "fill-mask"),
                                              ("roberta", "text-classification")])
def test_fp16_encoder_vs_transformers(tmp_path, model_type, head):
    ckpt = fx.checkpoint(model_type, head)
    fx.export(ckpt, tmp_path / "fp32.onnx")
    fx.export(ckpt, tmp_path / "fp16.onnx", "--dtype", "fp16")
    check_graph(tmp_path / "fp16.onnx")
    # Weight bytes halve (the norms' few vectors stay float32; the tiny graphs' structure does not shrink).
    w32, w16 = (sum(len(i.raw_data) or 4 * len(i.float_data) for i in onnx.load(str(tmp_path / f)).graph.initializer)
                for f in ("fp32.onnx", "fp16.onnx"))
    assert 0.45 < w16 / w32 < 0.55, (w16, w32)
    feeds = fx.padded_batch(model_type)
    ref = fx.run_oracle(ckpt, head, feeds)
    out = fx.run_ort(tmp_path / "fp16.onnx", feeds)
    for name, r in ref.items():
        if name not in out:
            continue
        o = out[name]
        assert o.dtype == np.float32 and o.shape == r.shape
        valid = feeds["attention_mask"].astype(bool) if o.ndim == 3 else slice(None)
        print(f"  {model_type} {head} {name}: rel err {rel_err(o[valid], r[valid]):.2e}, min cos {cosine_rows(o[valid], r[valid]):.6f}")
        assert rel_err(o[valid], r[valid]) < REL_TOL, (name, rel_err(o[valid], r[valid]))
        assert cosine_rows(o[valid], r[valid]) > MIN_COS, name
        if name == "logits" and o.ndim == 2:
            assert (o.argmax(-1) == r.argmax(-1)).all()


def test_fp16_decoder_vs_transformers(tmp_path):
    ckpt = dfx.decoder_checkpoint("llama")
    fx.export(ckpt, tmp_path / "fp16", "--dtype", "fp16")
    path = tmp_path / "fp16" / "model.onnx"
    check_graph(path)
    ref_model = dfx.reference_model(ckpt)
    ids, mask = dfx.left_padded_batch()
    dec = dfx.OnnxDecoder(path)
    dec.reset(ids.shape[0])
    # Prefill then 3 decode steps with the cache fed back (float32 at the interface), vs transformers' full pass.
    logits = [dec.step(ids, mask)]
    rng = np.random.default_rng(3)
    all_ids, all_mask = ids, mask
    for _ in range(3):
        nxt = rng.integers(3, dfx.VOCAB, (ids.shape[0], 1), dtype=np.int64)
        all_ids = np.concatenate([all_ids, nxt], 1)
        all_mask = np.concatenate([all_mask, np.ones_like(nxt)], 1)
        logits.append(dec.step(nxt, all_mask))
    got = np.concatenate(logits, 1)
    with torch.no_grad():
        pos = torch.tensor(dfx.position_ids(all_mask, all_ids.shape[1]))
        ref = ref_model(input_ids=torch.tensor(all_ids), attention_mask=torch.tensor(all_mask),
                        position_ids=pos).logits.float().numpy()
    valid = all_mask.astype(bool)
    assert got.dtype == np.float32
    print(f"  llama fp16 logits: rel err {rel_err(got[valid], ref[valid]):.2e}, min cos {cosine_rows(got[valid], ref[valid]):.6f}")
    assert rel_err(got[valid], ref[valid]) < REL_TOL, rel_err(got[valid], ref[valid])
    assert cosine_rows(got[valid], ref[valid]) > MIN_COS
    assert (got[valid].argmax(-1) == ref[valid].argmax(-1)).mean() >= 0.95


@pytest.mark.parametrize("extra, words", [(["--dtype", "bf16"], ["bfloat16"]),
                                          (["--dtype", "fp16", "--optimize"], ["--optimize"]),
                                          (["--dtype", "fp8"], ["--dtype"])])
def test_fp16_refusals(tmp_path, extra, words):
    r = fx.run_trex("export", "--model", fx.checkpoint("bert", "feature-extraction"), *extra, tmp_path / "m.onnx")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("trex: error: ") and len(r.stderr.strip().splitlines()) == 1
    for w in words:
        assert w in r.stderr
    assert not list(tmp_path.iterdir())
